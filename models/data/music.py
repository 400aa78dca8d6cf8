"""Procedural multi-stem music, rendered per stem with FluidSynth.

Each track is a small song planned from one seed: tempo, key, a chord
progression, sections in which stems come and go, a drum pattern, a bass line,
one or two chordal parts and a monophonic lead. Every stem is written to its
own MIDI file and rendered by the FluidSynth command line with the General MIDI
soundfont, so the stems are exact ground truth and the mixture is their sum:

==========  ===================================================================
stem        what plays it
==========  ===================================================================
drums       a GM drum kit on MIDI channel 10 (standard, room, power, electronic,
            TR-808, jazz, brush)
bass        GM basses (programs 32-39), also contrabass and tuba now and then
other       chords: pianos, electric pianos, organs, guitars, strings, pads
vocals      the lead line: choir / voice patches (52-54), lead synths (80-87),
            saxophones, flute, clarinet, oboe, trumpet
==========  ===================================================================

The output follows the MUSDB18-HQ layout, so real MUSDB data works the same way::

    OUT/<split>/<track>/mixture.wav, drums.wav, bass.wav, other.wav, vocals.wav, meta.json

plus ``notes.json``: every stem's notes as performed (onset and offset in
seconds, MIDI pitch), from which :mod:`models.data.labels` makes per-frame
activity and lead-f0 labels.

By default every stem is played by one soundfont, exactly as planned. The
:class:`RenderSettings` variety fields (see :mod:`models.data.variety`) draw
each stem's soundfont from a pool, humanise onsets and velocities, add a SoX
effect chain per stem and vary stem loudness; ``meta.json`` then records each
stem's soundfont, effects and gain under ``production``.

Stems are written first (float32 by default); the mixture is the sum of the
stems *as written* (after any PCM quantisation), so ``mixture == sum(stems)``
holds on the files. Rendering is deterministic: FluidSynth has no random
modulation, its float output is undithered, and every choice comes from a numpy
generator seeded by :func:`track_seed` ``(base seed, split, index)``, so the
splits never share a seed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mido
import numpy as np
import soundfile as sf

from stemserve.models.data import variety
from stemserve.models.data.wavfile import write_wav

log = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = ("drums", "bass", "other", "vocals")
"""Stem names in MUSDB order; :class:`models.data.datasets.MusicStems` returns stems in this order."""
SAMPLE_RATE = 44100
SPLITS: tuple[str, ...] = ("train", "valid", "test")
SUBTYPES: tuple[str, ...] = ("FLOAT", "PCM_16", "PCM_24")
FORMAT_VERSION = 1  # bump when the same seed would render different audio

SOUNDFONT_CANDIDATES = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/default.sf2",
)

# Instrument families per stem (General MIDI program numbers, 0-based).
DRUM_KITS = (0, 8, 16, 24, 25, 32, 40)  # bank 128: standard, room, power, electronic, TR-808, jazz, brush
BASS_PROGRAMS = (32, 33, 34, 35, 36, 37, 38, 39, 43, 58)  # basses, contrabass, tuba
CHORD_PROGRAMS = (
    0, 1, 2, 4, 5, 6, 7,  # pianos, electric pianos, harpsichord, clavinet
    11, 16, 17, 18, 19,  # vibraphone, organs
    24, 25, 26, 27, 28, 29, 30,  # guitars (nylon ... distortion)
    46, 48, 49, 50, 51,  # harp, strings
    88, 89, 90, 91, 92, 94, 95,  # pads
)  # fmt: skip
LEAD_PROGRAMS = (
    52, 53, 54,  # choir aahs, voice oohs, synth voice
    80, 81, 82, 83, 84, 85, 86, 87,  # lead synths
    64, 65, 66, 67,  # saxophones
    73, 71, 68, 56,  # flute, clarinet, oboe, trumpet
)  # fmt: skip
VOICE_LIKE = (52, 53, 54, 85)  # patches that get vibrato, like a singer

DRUM_CHANNEL = 9  # MIDI channel 10
TICKS_PER_BEAT = 480

_SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}

# Drum notes (GM percussion key map).
KICK, SNARE, CLAP, RIM, HAT, PEDAL_HAT, OPEN_HAT, RIDE, CRASH = 36, 38, 39, 37, 42, 44, 46, 51, 49
TOMS = (41, 43, 45, 47, 48, 50)
SHAKER, TAMBOURINE = 70, 54

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
PROGRESSIONS = {
    "major": ((0, 4, 5, 3), (0, 5, 3, 4), (0, 3, 4, 0), (1, 4, 0, 0), (0, 3, 0, 4), (5, 3, 0, 4), (0, 2, 3, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (0, 5, 3, 4), (0, 0, 3, 4)),
}
DRUM_STYLES = ("rock", "four_on_floor", "halftime", "breakbeat", "shuffle", "sparse")
BASS_STYLES = ("held", "eighths", "root_fifth", "walking", "syncopated")
CHORD_STYLES = ("pad", "comp", "arpeggio", "strum")


class RenderError(RuntimeError):
    """FluidSynth failed or is missing."""


# --------------------------------------------------------------------------- seeds


def track_seed(base_seed: int, split: str, index: int) -> int:
    """The seed of track ``index`` of ``split``: a 63-bit hash of ``(base_seed, split, index)``.

    Derived with numpy's ``SeedSequence`` spawn keys, so tracks of different
    splits (or indices) never share a random stream: a test set made with the
    same base seed as the training set holds unseen songs.
    """
    if split not in _SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if index < 0 or base_seed < 0:
        raise ValueError("seed and index must be >= 0")
    sequence = np.random.SeedSequence(entropy=base_seed, spawn_key=(_SPLIT_CODES[split], index))
    high, low = (int(v) for v in sequence.generate_state(2, np.uint32))
    return ((high << 32) | low) >> 1


# --------------------------------------------------------------------------- song plan


@dataclass
class Note:
    """One note in beats (quarter notes) from the song start."""

    start: float
    duration: float
    pitch: int
    velocity: int


@dataclass
class Part:
    """One MIDI channel of a stem: an instrument and its notes."""

    program: int
    channel: int
    pan: int  # MIDI CC10, 0 = left, 64 = centre, 127 = right
    reverb: int  # MIDI CC91 send
    chorus: int  # MIDI CC93 send
    modulation: int  # MIDI CC1 (vibrato depth)
    style: str
    notes: list[Note] = field(default_factory=list)


@dataclass
class SongPlan:
    """Everything random about a track, decided up front from its seed."""

    seed: int
    seconds: float
    tempo: float  # beats per minute
    key: int  # pitch class of the tonic, 0 = C
    mode: str  # "major" or "minor"
    bars: int
    chords: list[list[int]]  # per half bar: pitch classes, root first
    sections: list[dict[str, Any]]  # {"start": bar, "bars": n, "active": [stem, ...]}
    gains_db: dict[str, float]
    parts: dict[str, list[Part]]

    def summary(self) -> dict[str, Any]:
        """A JSON-able description (no note lists) for ``meta.json``."""
        return {
            "seed": self.seed,
            "seconds": self.seconds,
            "tempo": round(self.tempo, 3),
            "key": self.key,
            "mode": self.mode,
            "bars": self.bars,
            "sections": self.sections,
            "gains_db": {k: round(v, 3) for k, v in self.gains_db.items()},
            "parts": {
                stem: [
                    {"program": p.program, "channel": p.channel, "pan": p.pan, "style": p.style, "notes": len(p.notes)}
                    for p in parts
                ]
                for stem, parts in self.parts.items()
            },
        }


def plan_song(seed: int, seconds: float) -> SongPlan:
    """Plan a song of ``seconds`` from ``seed`` (pure function of its arguments)."""
    if seconds <= 0:
        raise ValueError("seconds must be > 0")
    rng = np.random.default_rng(seed)
    tempo = float(rng.uniform(72, 160))
    beat = 60.0 / tempo
    bars = math.ceil(seconds / (4 * beat)) + 1  # one extra bar so nothing ends early
    key = int(rng.integers(12))
    mode = "major" if rng.random() < 0.6 else "minor"
    chords = _chords(rng, key, mode, bars)
    sections = _sections(rng, bars, audible=math.ceil(seconds / (4 * beat)))

    def active(stem: str) -> list[int]:
        return [bar for s in sections if stem in s["active"] for bar in range(s["start"], s["start"] + s["bars"])]

    parts: dict[str, list[Part]] = {
        "drums": [_drum_part(rng, active("drums"), sections)],
        "bass": [_bass_part(rng, active("bass"), chords, key, mode)],
        "other": _chord_parts(rng, active("other"), chords),
        "vocals": [_lead_part(rng, active("vocals"), chords, key, mode)],
    }
    gains_db = {stem: float(rng.uniform(-6.0, 3.0)) for stem in SOURCES}
    return SongPlan(seed, float(seconds), tempo, key, mode, bars, chords, sections, gains_db, parts)


def _chords(rng: np.random.Generator, key: int, mode: str, bars: int) -> list[list[int]]:
    """Pitch classes per half bar (root first): a cycled progression, 1 or 2 chords a bar."""
    scale = MAJOR if mode == "major" else MINOR
    progression = PROGRESSIONS[mode][int(rng.integers(len(PROGRESSIONS[mode])))]
    per_bar = 2 if rng.random() < 0.3 else 1
    sevenths = rng.random() < 0.35
    out: list[list[int]] = []
    for half in range(2 * bars):
        step = half // (2 // per_bar)
        degree = progression[step % len(progression)]
        tones = [degree, degree + 2, degree + 4] + ([degree + 6] if sevenths else [])
        out.append([(key + scale[t % 7]) % 12 for t in tones])
    return out


def _sections(rng: np.random.Generator, bars: int, audible: int) -> list[dict[str, Any]]:
    """Sections of 2-4 bars; each stem plays in a section with a stem-specific probability.

    A stem silent in every section heard (the first ``audible`` bars) is given one
    section back, except in about 1 track in 20 per stem: real songs lack a stem
    sometimes, and a separator must output silence then.
    """
    probability = {"drums": 0.85, "bass": 0.85, "other": 0.9, "vocals": 0.75}
    sections: list[dict[str, Any]] = []
    start = 0
    while start < bars:
        length = min(int(rng.choice((2, 4, 4))), bars - start)
        playing = [stem for stem in SOURCES if rng.random() < probability[stem]]
        if not playing:
            playing = [SOURCES[int(rng.integers(len(SOURCES)))]]
        sections.append({"start": start, "bars": length, "active": playing})
        start += length
    heard = [s for s in sections if s["start"] < audible]
    for stem in SOURCES:
        if not any(stem in s["active"] for s in heard) and rng.random() < 0.95:
            chosen = heard[int(rng.integers(len(heard)))]
            chosen["active"] = [s for s in SOURCES if s in chosen["active"] or s == stem]
    return sections


def _velocity(rng: np.random.Generator, base: float, spread: float = 10.0) -> int:
    return int(np.clip(round(base + rng.normal(0.0, spread)), 1, 127))


def _drum_part(rng: np.random.Generator, bars: list[int], sections: list[dict[str, Any]]) -> Part:
    style = str(rng.choice(DRUM_STYLES))
    part = Part(
        program=int(rng.choice(DRUM_KITS)),
        channel=DRUM_CHANNEL,
        pan=int(rng.integers(54, 75)),
        reverb=int(rng.integers(0, 60)),
        chorus=0,
        modulation=0,
        style=style,
    )
    level = float(rng.uniform(80, 110))
    swing = float(rng.uniform(0.08, 0.16)) if style == "shuffle" else 0.0
    hat = int(rng.choice((HAT, HAT, RIDE, PEDAL_HAT)))
    snare = int(rng.choice((SNARE, SNARE, CLAP, RIM)))
    extra = int(rng.choice((SHAKER, TAMBOURINE, 0, 0)))
    kicks = {
        "rock": (0, 8, 10),
        "four_on_floor": (0, 4, 8, 12),
        "halftime": (0, 10),
        "breakbeat": (0, 6, 10),
        "shuffle": (0, 8, 11),
        "sparse": (0,),
    }[style]
    snares = {"halftime": (8,), "sparse": (12,)}.get(style, (4, 12))
    hat_steps = range(0, 16, 1 if style in ("breakbeat", "halftime") and rng.random() < 0.5 else 2)
    section_starts = {s["start"] for s in sections}
    section_ends = {s["start"] + s["bars"] - 1 for s in sections}
    playing = set(bars)
    for bar in bars:
        base = bar * 4.0

        def hit(step: float, pitch: int, velocity: float, base: float = base) -> None:
            offbeat = (step % 2) == 1
            position = base + step / 4.0 + (swing if offbeat else 0.0)
            part.notes.append(Note(position, 0.2, pitch, _velocity(rng, velocity, 6)))

        if bar in section_starts or bar - 1 not in playing:
            hit(0, CRASH, level)
        for step in kicks:
            hit(step, KICK, level + 5)
        if rng.random() < 0.3:
            hit(int(rng.choice((3, 7, 14, 15))), KICK, level - 10)
        fill = bar in section_ends and rng.random() < 0.5
        for step in snares:
            if not (fill and step >= 8):
                hit(step, snare, level)
        if style == "breakbeat":
            for step in (7, 15):
                hit(step, SNARE, level - 35)  # ghost notes
        for step in hat_steps:
            if fill and step >= 8:
                continue
            accent = 0 if step % 4 == 0 else -15
            if style == "four_on_floor" and step % 4 == 2:
                hit(step, OPEN_HAT, level - 10)
            else:
                hit(step, hat, level - 10 + accent)
        if extra:
            for step in range(2, 16, 4):
                hit(step, extra, level - 25)
        if fill:
            toms = sorted(rng.choice(TOMS, size=3, replace=False).tolist(), reverse=True)
            for i, step in enumerate(range(8, 16)):
                hit(step, int(toms[min(i // 3, 2)]) if rng.random() < 0.6 else SNARE, level - 5 + i)
    return part


def _bass_part(rng: np.random.Generator, bars: list[int], chords: list[list[int]], key: int, mode: str) -> Part:
    style = str(rng.choice(BASS_STYLES))
    part = Part(
        program=int(rng.choice(BASS_PROGRAMS)),
        channel=0,
        pan=int(rng.integers(56, 73)),
        reverb=int(rng.integers(0, 30)),
        chorus=0,
        modulation=0,
        style=style,
    )
    level = float(rng.uniform(85, 115))
    low = int(rng.integers(28, 36))  # lowest root: E1 ... B1

    def bass_pitch(pitch_class: int) -> int:
        return low + (pitch_class - low) % 12

    scale = [(key + s) % 12 for s in (MAJOR if mode == "major" else MINOR)]
    pattern = [0.0, 0.75, 1.5, 2.5, 3.0] if rng.random() < 0.5 else [0.0, 1.5, 2.0, 3.5]
    for bar in bars:
        for half in (0, 1):
            chord = chords[2 * bar + half]
            root = bass_pitch(chord[0])
            fifth = bass_pitch(chord[2 % len(chord)])
            start = bar * 4.0 + half * 2.0
            if style == "held":
                part.notes.append(Note(start, 1.9, root, _velocity(rng, level, 5)))
            elif style == "eighths":
                for i in range(4):
                    part.notes.append(Note(start + i * 0.5, 0.45, root, _velocity(rng, level - (i % 2) * 10, 5)))
            elif style == "root_fifth":
                part.notes.append(Note(start, 0.9, root, _velocity(rng, level, 5)))
                other = fifth if rng.random() < 0.7 else root + 12
                part.notes.append(Note(start + 1.0, 0.9, other, _velocity(rng, level - 8, 5)))
            elif style == "walking":
                # Quarter notes: chord tone on the beat, then a scale step or an approach
                # (a semitone off) to the next chord's root.
                following = bass_pitch(chords[min(2 * bar + half + 1, len(chords) - 1)][0])
                if rng.random() < 0.5:
                    second = following + (1 if rng.random() < 0.5 else -1)
                else:
                    second = bass_pitch(scale[int(rng.integers(7))])
                first = root if half == 0 or rng.random() < 0.5 else fifth
                for i, pitch in enumerate((first, second)):
                    part.notes.append(Note(start + i, 0.9, pitch, _velocity(rng, level - 5 * i, 6)))
            else:  # syncopated, two bars of a fixed rhythm
                for offset in pattern:
                    if half * 2.0 <= offset < half * 2.0 + 2.0:
                        pitch = root if rng.random() < 0.75 else fifth
                        part.notes.append(Note(bar * 4.0 + offset, 0.4, pitch, _velocity(rng, level, 8)))
    return part


def _voicing(pitch_classes: Sequence[int], centre: int) -> list[int]:
    """Place a chord's pitch classes as close as possible around ``centre`` (one octave span)."""
    return sorted(centre - 6 + (pc - (centre - 6)) % 12 for pc in pitch_classes)


def _chord_parts(rng: np.random.Generator, bars: list[int], chords: list[list[int]]) -> list[Part]:
    count = 1 if rng.random() < 0.6 else 2
    programs = rng.choice(CHORD_PROGRAMS, size=count, replace=False)
    parts = []
    for i in range(count):
        style = str(rng.choice(CHORD_STYLES))
        program = int(programs[i])
        part = Part(
            program=program,
            channel=i,
            pan=int(rng.integers(20, 109)),
            reverb=int(rng.integers(10, 80)),
            chorus=int(rng.integers(0, 40)),
            modulation=0,
            style=style,
        )
        level = float(rng.uniform(60, 100))
        centre = int(rng.integers(54, 72))  # overlaps the lead's register now and then
        comp = [step for step in range(8) if rng.random() < 0.45] or [0, 3]
        for bar in bars:
            for half in (0, 1):
                notes = _voicing(chords[2 * bar + half], centre)
                start = bar * 4.0 + half * 2.0
                if style == "pad":
                    for pitch in notes:
                        part.notes.append(Note(start, 2.0, pitch, _velocity(rng, level, 4)))
                elif style == "comp":
                    for step in comp:
                        if half * 4 <= step < half * 4 + 4:
                            for pitch in notes:
                                part.notes.append(Note(bar * 4.0 + step * 0.5, 0.4, pitch, _velocity(rng, level, 6)))
                elif style == "arpeggio":
                    cycle = [*notes, notes[0] + 12]
                    for j in range(4):
                        pitch = cycle[j % len(cycle)] if rng.random() < 0.8 else cycle[-1 - j % len(cycle)]
                        part.notes.append(Note(start + j * 0.5, 0.5, pitch, _velocity(rng, level, 6)))
                else:  # strum: staggered onsets, down strokes on the beat
                    for beat in (0.0, 1.0):
                        for j, pitch in enumerate(notes if beat == 0.0 else notes[::-1]):
                            velocity = _velocity(rng, level - 10 * beat, 5)
                            part.notes.append(Note(start + beat + 0.02 * j, 0.95 - 0.02 * j, pitch, velocity))
        parts.append(part)
    return parts


def _lead_part(rng: np.random.Generator, bars: list[int], chords: list[list[int]], key: int, mode: str) -> Part:
    program = int(rng.choice(LEAD_PROGRAMS))
    part = Part(
        program=program,
        channel=0,
        pan=int(rng.integers(44, 85)),
        reverb=int(rng.integers(20, 90)),
        chorus=int(rng.integers(0, 30)),
        modulation=int(rng.integers(20, 70)) if program in VOICE_LIKE else int(rng.integers(0, 20)),
        style="melody",
    )
    level = float(rng.uniform(80, 115))
    scale = sorted((key + s) % 12 for s in (MAJOR if mode == "major" else MINOR))
    centre = int(rng.integers(60, 76))
    pitches = [p for p in range(centre - 9, centre + 10) if p % 12 in scale]
    position = len(pitches) // 2
    rhythms = ((1.0, 1.0, 2.0), (0.5, 0.5, 1.0, 2.0), (1.5, 0.5, 1.0, 1.0), (2.0, 1.0, 1.0), (0.5, 0.5, 0.5, 0.5, 2.0))
    playing = set(bars)
    for bar in bars:
        if rng.random() < 0.2:  # a bar of rest: singers breathe
            continue
        rhythm = rhythms[int(rng.integers(len(rhythms)))]
        start = bar * 4.0 + (0.5 if rng.random() < 0.2 else 0.0)
        for duration in rhythm:
            if start >= bar * 4.0 + 4.0:
                break
            chord = chords[min(int(start / 2.0), len(chords) - 1)]
            strong = (start % 1.0) == 0.0
            if strong and rng.random() < 0.7:  # land on a chord tone on the beat
                tones = [i for i, p in enumerate(pitches) if p % 12 in chord]
                position = min(tones, key=lambda i: abs(i - position) + rng.random())
            else:
                step = int(rng.choice((-2, -1, -1, 0, 1, 1, 2, 3, -3)))
                position = int(np.clip(position + step, 0, len(pitches) - 1))
            length = min(duration, bar * 4.0 + 4.0 - start)
            legato = 0.95 if bar + 1 in playing or start + length < bar * 4.0 + 4.0 else 0.8
            part.notes.append(Note(start, length * legato, pitches[position], _velocity(rng, level, 8)))
            start += duration
    return part


# --------------------------------------------------------------------------- MIDI + rendering


def write_midi(parts: Sequence[Part], tempo: float, seconds: float, path: Path) -> None:
    """Write one stem's parts to a type-1 MIDI file that lasts at least ``seconds``."""
    midi = mido.MidiFile(type=1, ticks_per_beat=TICKS_PER_BEAT)
    conductor = mido.MidiTrack()
    conductor.append(mido.MetaMessage("set_tempo", tempo=int(round(60_000_000 / tempo)), time=0))
    midi.tracks.append(conductor)
    for part in parts:
        events: list[tuple[int, int, mido.Message]] = []  # (tick, order, message): note-offs sort first
        ch = part.channel
        setup = [
            mido.Message("control_change", channel=ch, control=0, value=0),  # bank select (drums use channel 10)
            mido.Message("program_change", channel=ch, program=part.program),
            mido.Message("control_change", channel=ch, control=7, value=100),
            mido.Message("control_change", channel=ch, control=10, value=part.pan),
            mido.Message("control_change", channel=ch, control=91, value=part.reverb),
            mido.Message("control_change", channel=ch, control=93, value=part.chorus),
            mido.Message("control_change", channel=ch, control=1, value=part.modulation),
        ]
        for note in part.notes:
            on = int(round(note.start * TICKS_PER_BEAT))
            off = max(on + 1, int(round((note.start + note.duration) * TICKS_PER_BEAT)))
            events.append((on, 1, mido.Message("note_on", channel=ch, note=note.pitch, velocity=note.velocity)))
            events.append((off, 0, mido.Message("note_off", channel=ch, note=note.pitch, velocity=0)))
        events.sort(key=lambda e: (e[0], e[1], e[2].bytes()))
        track = mido.MidiTrack()
        track.extend(setup)
        now = 0
        for tick, _, message in events:
            track.append(message.copy(time=tick - now))
            now = tick
        midi.tracks.append(track)
    end = int(math.ceil(seconds * tempo / 60.0 * TICKS_PER_BEAT)) + TICKS_PER_BEAT
    conductor.append(mido.MetaMessage("end_of_track", time=end))
    midi.save(str(path))


def find_soundfont(path: str | os.PathLike[str] | None = None) -> Path:
    """The soundfont to render with: ``path``, ``$STEMSERVE_SOUNDFONT``, or the Debian GM font."""
    chosen = path or os.environ.get("STEMSERVE_SOUNDFONT")
    if chosen:
        if not Path(chosen).is_file():
            raise RenderError(f"soundfont {chosen} not found")
        return Path(chosen)
    for candidate in SOUNDFONT_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    raise RenderError(
        "no General MIDI soundfont found (install fluid-soundfont-gm, or set STEMSERVE_SOUNDFONT); looked in "
        + ", ".join(SOUNDFONT_CANDIDATES)
    )


def fluidsynth_binary() -> str:
    binary = shutil.which("fluidsynth")
    if binary is None:
        raise RenderError("the fluidsynth command is not installed (apt-get install fluidsynth)")
    return binary


def render_midi(midi_path: Path, wav_path: Path, soundfont: Path, sample_rate: int, num_samples: int) -> np.ndarray:
    """Render ``midi_path`` with FluidSynth; returns ``(2, num_samples)`` float32 (cropped / zero-padded)."""
    command = [
        fluidsynth_binary(),
        "-n",  # no MIDI input driver
        "-i",  # no shell
        "-q",
        "-F", str(wav_path),
        "-T", "wav",
        "-O", "float",  # float output: no dither, no clipping, deterministic
        "-r", str(sample_rate),
        "-g", "0.5",
        "-o", "synth.cpu-cores=1",
        "-o", "synth.dynamic-sample-loading=1",  # load only the samples this file plays: ~5x faster start
        "-o", "synth.polyphony=256",
        str(soundfont),
        str(midi_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not wav_path.is_file():
        raise RenderError(f"fluidsynth failed ({result.returncode}) on {midi_path.name}: {result.stderr.strip()}")
    audio, rate = sf.read(str(wav_path), dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise RenderError(f"fluidsynth wrote {rate} Hz, asked for {sample_rate}")
    out = np.zeros((2, num_samples), dtype=np.float32)
    length = min(num_samples, audio.shape[0])
    out[:, :length] = audio[:length, :2].T
    return out


def _quantise(audio: np.ndarray, subtype: str) -> np.ndarray:
    """What ``audio`` reads back as after writing with ``subtype`` (float32)."""
    if subtype == "FLOAT":
        return audio.astype(np.float32)
    scale = {"PCM_16": 2**15, "PCM_24": 2**23}[subtype]
    return (np.clip(np.round(audio * scale), -scale, scale - 1) / scale).astype(np.float32)


@dataclass(frozen=True)
class RenderSettings:
    """How tracks are rendered (the same for every track of a dataset)."""

    seconds: float = 10.0
    sample_rate: int = SAMPLE_RATE
    subtype: str = "FLOAT"
    soundfont: str | None = None
    peak: float = 0.9  # the mixture's peak never exceeds this (so PCM mixtures cannot clip)
    # Variety (models/data/variety.py); the defaults render what FORMAT_VERSION 1 always rendered.
    soundfonts: tuple[str, ...] = ()  # per-stem pool (names or paths); empty: ``soundfont`` for all
    timing_ms: float = 0.0  # onset humanisation, standard deviation in ms
    velocity_spread: float = 0.0  # velocity humanisation, standard deviation in MIDI steps
    effects: bool = False  # a random SoX chain per stem (EQ, treble shelf, compressor, reverb)
    loudness_db: float = 0.0  # per-stem gain uniform in +-loudness_db, on top of the plan's

    def __post_init__(self) -> None:
        object.__setattr__(self, "soundfonts", tuple(self.soundfonts))
        if self.soundfonts and self.soundfont:
            raise ValueError("give soundfont or soundfonts, not both")
        for name in self.soundfonts:
            variety.resolve_soundfont(name)
        if self.timing_ms < 0 or self.velocity_spread < 0 or self.loudness_db < 0:
            raise ValueError("timing_ms, velocity_spread and loudness_db must be >= 0")
        if self.seconds <= 0:
            raise ValueError("seconds must be > 0")
        if self.sample_rate <= 0:
            raise ValueError("sample_rate must be > 0")
        if self.subtype not in SUBTYPES:
            raise ValueError(f"subtype must be one of {SUBTYPES}, got {self.subtype!r}")
        if not 0 < self.peak <= 1:
            raise ValueError("peak must be in (0, 1]")


def stem_choices(plan: SongPlan, settings: RenderSettings) -> dict[str, variety.StemChoice]:
    """Per stem: the soundfont, SoX effects and extra gain this track is rendered with."""
    default = Path() if settings.soundfonts else find_soundfont(settings.soundfont)
    return variety.choose(plan.seed, SOURCES, settings.soundfonts, settings.effects, settings.loudness_db, default)


def performed_parts(plan: SongPlan, settings: RenderSettings) -> dict[str, list[Part]]:
    """The plan's parts as played: humanised when the settings ask for it (notes in beats)."""
    if settings.timing_ms == 0 and settings.velocity_spread == 0:
        return plan.parts
    return {
        stem: variety.humanise(plan.parts[stem], plan.seed, i, plan.tempo, settings.timing_ms, settings.velocity_spread)
        for i, stem in enumerate(SOURCES)
    }


def render_stems(plan: SongPlan, settings: RenderSettings, workdir: Path) -> dict[str, np.ndarray]:
    """Render every stem of ``plan`` to ``(2, samples)`` float32, gains and level applied, quantised."""
    num_samples = int(round(settings.seconds * settings.sample_rate))
    choices = stem_choices(plan, settings)
    performed = performed_parts(plan, settings)
    stems: dict[str, np.ndarray] = {}
    for stem in SOURCES:
        parts = [p for p in performed[stem] if p.notes]
        if not parts:
            stems[stem] = np.zeros((2, num_samples), dtype=np.float32)
            continue
        choice = choices[stem]
        midi_path = workdir / f"{stem}.mid"
        write_midi(parts, plan.tempo, settings.seconds, midi_path)
        audio = render_midi(
            midi_path, workdir / f"{stem}.wav", Path(choice.soundfont), settings.sample_rate, num_samples
        )
        audio = variety.apply_effects(audio, settings.sample_rate, choice.effects, workdir)
        stems[stem] = audio * np.float32(10.0 ** ((plan.gains_db[stem] + choice.gain_db) / 20.0))
    # One level for the whole track: a random loudness, then a ceiling on the mixture's peak.
    rng = np.random.default_rng([plan.seed, 1])
    mixture = np.sum([stems[s].astype(np.float64) for s in SOURCES], axis=0)
    rms = float(np.sqrt(np.mean(mixture**2)))
    scale = 10.0 ** (rng.uniform(-22.0, -14.0) / 20.0) / rms if rms > 0 else 1.0
    peak = float(np.max(np.abs(mixture))) * scale
    if peak > settings.peak * 0.98:  # margin for the quantisation of the stems
        scale *= settings.peak * 0.98 / peak
    return {s: _quantise(stems[s] * np.float32(scale), settings.subtype) for s in SOURCES}


def track_name(index: int) -> str:
    return f"track{index:05d}"


_VARIETY_DEFAULTS = {"soundfonts": (), "timing_ms": 0.0, "velocity_spread": 0.0, "effects": False, "loudness_db": 0.0}


def _saved_settings(settings: RenderSettings) -> dict[str, Any]:
    """The settings as recorded: every field, except variety fields at their defaults."""
    items = dataclasses.asdict(settings).items()
    return {k: v for k, v in items if k not in _VARIETY_DEFAULTS or _VARIETY_DEFAULTS[k] != v}


def _meta(plan: SongPlan, settings: RenderSettings, split: str, index: int) -> dict[str, Any]:
    # Variety settings at their defaults are left out, so tracks rendered before they existed
    # still count as complete (same meta) and are not rendered again.
    saved = _saved_settings(settings)
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "split": split,
        "index": index,
        "sources": list(SOURCES),
        "settings": saved,
        "song": plan.summary(),
    }
    if saved.keys() & _VARIETY_DEFAULTS.keys():
        meta["production"] = {
            stem: {
                "soundfont": variety.soundfont_name(c.soundfont),
                "effects": [list(e) for e in c.effects],
                "gain_db": round(c.gain_db, 3),
            }
            for stem, c in stem_choices(plan, settings).items()
        }
    return meta


def note_events(plan: SongPlan, settings: RenderSettings) -> dict[str, list[list[float]]]:
    """Per stem, ``[onset_s, offset_s, pitch]`` of every note as performed, by onset (the label source).

    Times are in seconds from the track start (notes past the track's end are
    left out); drum "pitches" are GM percussion keys.
    """
    beat = 60.0 / plan.tempo
    out: dict[str, list[list[float]]] = {}
    for stem, parts in performed_parts(plan, settings).items():
        events = [
            [round(n.start * beat, 6), round((n.start + n.duration) * beat, 6), float(n.pitch)]
            for p in parts
            for n in p.notes
            if n.start * beat < settings.seconds
        ]
        out[stem] = sorted(events)
    return out


def render_track(out_dir: Path, split: str, index: int, base_seed: int, settings: RenderSettings) -> Path:
    """Render track ``index`` of ``split`` into ``out_dir/split/trackNNNNN`` (skipped if already there).

    The folder is written under a temporary name and renamed when complete, so
    an interrupted run never leaves a half-written track behind.
    """
    seed = track_seed(base_seed, split, index)
    plan = plan_song(seed, settings.seconds)
    meta = _meta(plan, settings, split, index)
    final = Path(out_dir) / split / track_name(index)
    if _complete(final, meta):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{final.name}.", dir=final.parent) as tmp:
        work = Path(tmp)
        staging = work / "track"
        staging.mkdir()
        stems = render_stems(plan, settings, work)
        mixture = np.zeros_like(stems[SOURCES[0]])
        for stem in SOURCES:
            write_wav(staging / f"{stem}.wav", stems[stem], settings.sample_rate, settings.subtype)
            mixture += stems[stem]  # float32 sum of exactly what was written
        write_wav(staging / "mixture.wav", mixture, settings.sample_rate, settings.subtype)
        (staging / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        (staging / "notes.json").write_text(json.dumps(note_events(plan, settings)) + "\n")
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    return final


def _complete(folder: Path, meta: dict[str, Any]) -> bool:
    files = ["mixture.wav", *(f"{s}.wav" for s in SOURCES), "meta.json"]
    if not all((folder / f).is_file() for f in files):
        return False
    try:
        return bool(json.loads((folder / "meta.json").read_text()) == json.loads(json.dumps(meta)))
    except (OSError, ValueError):
        return False


def render_dataset(
    out_dir: str | os.PathLike[str],
    counts: dict[str, int],
    base_seed: int = 0,
    settings: RenderSettings | None = None,
    workers: int = 2,
    progress: Callable[[str, int], None] | None = None,
) -> list[Path]:
    """Render ``counts[split]`` tracks per split, ``workers`` FluidSynth processes at a time.

    ``progress(split, index)`` is called as each track completes (in completion order).
    Writes ``out_dir/dataset.json`` describing the set. Returns the track folders.
    """
    settings = settings or RenderSettings()
    unknown = set(counts) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; expected {SPLITS}")
    if any(n < 0 for n in counts.values()):
        raise ValueError("track counts must be >= 0")
    if workers < 1:
        raise ValueError("workers must be >= 1")
    if not settings.soundfonts:
        find_soundfont(settings.soundfont)  # fail before starting any thread
    fluidsynth_binary()
    if settings.effects:
        variety.sox_binary()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(split, i) for split in SPLITS for i in range(counts.get(split, 0))]
    done: dict[tuple[str, int], Path] = {}
    # Threads are enough: the work happens in FluidSynth subprocesses and numpy.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(render_track, out, split, i, base_seed, settings): (split, i) for split, i in jobs}
        for future in as_completed(futures):
            split, i = futures[future]
            done[(split, i)] = future.result()
            if progress is not None:
                progress(split, i)
    manifest = {
        "kind": "music",
        "format_version": FORMAT_VERSION,
        "sources": list(SOURCES),
        "sample_rate": settings.sample_rate,
        "seconds": settings.seconds,
        "subtype": settings.subtype,
        "seed": base_seed,
        **{k: v for k, v in _saved_settings(settings).items() if k in _VARIETY_DEFAULTS},
        "splits": {split: counts.get(split, 0) for split in SPLITS},
    }
    (out / "dataset.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return [done[job] for job in jobs]


def iter_tracks(root: str | os.PathLike[str], split: str) -> Iterator[Path]:
    """Track folders of a MUSDB-layout ``split`` (those holding a ``mixture.wav``), sorted by name."""
    folder = Path(root) / split
    if not folder.is_dir():
        return
    for track in sorted(folder.iterdir()):
        if track.is_dir() and (track / "mixture.wav").is_file():
            yield track
