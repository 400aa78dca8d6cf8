"""What makes two renders of the same notes differ: soundfont, humanisation, effects, loudness.

:mod:`models.data.music` plans a song's notes; this module decides, per stem
and from the song's seed, how those notes are *performed and produced*:

* **soundfont**: each stem draws its General MIDI soundfont from a pool
  (:data:`TRAIN_SOUNDFONTS`). :data:`HELD_OUT_SOUNDFONT` is in no training pool:
  a set rendered with it alone measures how a model does on instruments it
  never heard (the "unseen soundfont" scores);
* **humanisation**: every note's onset moves by a normal draw of ``timing_ms``
  milliseconds and its velocity by one of ``velocity_spread`` steps;
* **effects**: a short SoX chain per stem (parametric EQ, a treble shelf, a
  compressor, reverb), each effect present with a fixed probability;
* **loudness**: a per-stem gain, uniform in ``±loudness_db``, on top of the
  plan's own stem gains.

Every draw comes from generators seeded by ``(song seed, purpose)``, so a
track renders identically on every run, and the choices are written to its
``meta.json``. Effects are applied to the stems before they are summed, so the
mixture is still exactly the sum of the stems (production stems, like MUSDB's).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

if TYPE_CHECKING:
    from stemserve.models.data.music import Part

# Installable General MIDI soundfonts (Debian package in the comment). PyPI ships none that
# is a full GM bank (pyfluidsynth and midirenderer ship code only).
GM_SOUNDFONTS: dict[str, str] = {
    "FluidR3_GM": "/usr/share/sounds/sf2/FluidR3_GM.sf2",  # fluid-soundfont-gm (141 MB)
    "FluidR3Mono_GM": "/usr/share/sounds/sf3/FluidR3Mono_GM.sf3",  # fluidr3mono-gm-soundfont (23 MB)
    "MuseScore_General_Lite": "/usr/share/sounds/sf3/MuseScore_General_Lite.sf3",  # musescore-general-soundfont-small
    "TimGM6mb": "/usr/share/sounds/sf2/TimGM6mb.sf2",  # timgm6mb-soundfont (6 MB)
}
TRAIN_SOUNDFONTS: tuple[str, ...] = ("FluidR3_GM", "FluidR3Mono_GM", "MuseScore_General_Lite")
HELD_OUT_SOUNDFONT = "TimGM6mb"  # a different sample set from the three above; validation only

# Seeds of the generators, next to the song seed: one stream per purpose, so adding a
# purpose never changes the draws of another.
_CHOICES, _HUMANISE = 2, 3

# Probability of each effect in a stem's chain.
EFFECT_PROBABILITY = {"equalizer": 0.6, "treble": 0.4, "compand": 0.5, "reverb": 0.5}
SOX_HEADROOM = 0.25  # stems go through SoX at this peak: its 32-bit integer pipeline clips at 1.0


class EffectError(RuntimeError):
    """SoX failed or is missing."""


def resolve_soundfont(name: str) -> Path:
    """A soundfont by name (a key of :data:`GM_SOUNDFONTS`) or by path; raises ``ValueError`` if absent."""
    path = Path(GM_SOUNDFONTS.get(name, name))
    if not path.is_file():
        known = ", ".join(GM_SOUNDFONTS)
        raise ValueError(f"soundfont {name!r} not found (known names: {known}; or give a path)")
    return path


def soundfont_name(path: str | Path) -> str:
    """The short name recorded in ``meta.json``: the :data:`GM_SOUNDFONTS` key, else the file's stem."""
    for name, known in GM_SOUNDFONTS.items():
        if Path(known) == Path(path):
            return name
    return Path(path).stem


@dataclass(frozen=True)
class StemChoice:
    """How one stem of one track is produced."""

    soundfont: str  # a path
    effects: tuple[tuple[str, ...], ...]  # SoX effects, each (name, *arguments)
    gain_db: float


def choose(
    seed: int, stems: Sequence[str], soundfonts: Sequence[str], effects: bool, loudness_db: float, default: Path
) -> dict[str, StemChoice]:
    """Per-stem soundfont (from ``soundfonts``, else ``default``), effect chain and gain, drawn from ``seed``.

    The draws happen in a fixed order for every stem whatever the settings, so
    turning effects on does not change which soundfont a stem gets.
    """
    rng = np.random.default_rng([seed, _CHOICES])
    pool = [resolve_soundfont(s) for s in soundfonts]
    out: dict[str, StemChoice] = {}
    for stem in stems:
        index = int(rng.integers(len(pool))) if pool else 0
        chain = effect_chain(rng)
        gain = float(rng.uniform(-1.0, 1.0))
        out[stem] = StemChoice(
            soundfont=str(pool[index] if pool else default),
            effects=chain if effects else (),
            gain_db=gain * loudness_db,
        )
    return out


def effect_chain(rng: np.random.Generator) -> tuple[tuple[str, ...], ...]:
    """A random SoX chain: always the same number of draws, whichever effects end up in it."""
    keep = {name: rng.random() < p for name, p in EFFECT_PROBABILITY.items()}
    frequency = float(np.exp(rng.uniform(np.log(80.0), np.log(8000.0))))
    q, eq_gain = float(rng.uniform(0.5, 2.0)), float(rng.uniform(-8.0, 6.0))
    treble = float(rng.uniform(-6.0, 4.0))
    threshold, ratio = float(rng.uniform(-30.0, -12.0)), float(rng.uniform(2.0, 6.0))
    reverberance, room, predelay = float(rng.uniform(20, 90)), float(rng.uniform(30, 100)), float(rng.uniform(0, 40))
    wet = float(rng.uniform(-10.0, -2.0))
    chain: list[tuple[str, ...]] = []
    if keep["equalizer"]:
        chain.append(("equalizer", f"{frequency:.0f}", f"{q:.2f}q", f"{eq_gain:+.1f}"))
    if keep["treble"]:
        chain.append(("treble", f"{treble:+.1f}"))
    if keep["compand"]:
        # A hard-knee compressor: below the threshold unchanged, above it 1/ratio dB per dB; half the
        # reduction at 0 dBFS is given back as make-up gain. Delay 0: SoX would shift the audio.
        top = threshold - threshold / ratio
        points = f"6:-90,-90,{threshold:.1f},{threshold:.1f},0,{top:.1f}"
        chain.append(("compand", "0.005,0.15", points, f"{-top / 2:.1f}", "-90", "0"))
    if keep["reverb"]:
        chain.append(("reverb", f"{reverberance:.0f}", "50", f"{room:.0f}", "100", f"{predelay:.0f}", f"{wet:+.1f}"))
    return tuple(chain)


def sox_binary() -> str:
    binary = shutil.which("sox")
    if binary is None:
        raise EffectError("the sox command is not installed (apt-get install sox)")
    return binary


def apply_effects(audio: np.ndarray, sample_rate: int, chain: Sequence[Sequence[str]], workdir: Path) -> np.ndarray:
    """Run ``(channels, samples)`` float32 audio through the SoX ``chain``; same shape out (tails cut).

    The audio passes through SoX at a peak of :data:`SOX_HEADROOM` and is scaled
    back afterwards, so neither a boost nor a reverb tail can clip. Undithered.
    """
    if not chain:
        return audio
    peak = float(np.max(np.abs(audio)))
    if peak == 0.0:
        return audio
    source, result = workdir / "fx_in.wav", workdir / "fx_out.wav"
    sf.write(str(source), (audio * (SOX_HEADROOM / peak)).T, sample_rate, subtype="FLOAT")
    command = [sox_binary(), "-D", "-V1", str(source), "-e", "floating-point", "-b", "32", str(result)]
    for effect in chain:
        command.extend(effect)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not result.is_file():
        raise EffectError(f"sox failed ({done.returncode}) on {' '.join(command[7:])}: {done.stderr.strip()}")
    processed, rate = sf.read(str(result), dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise EffectError(f"sox wrote {rate} Hz, asked for {sample_rate}")
    out = np.zeros_like(audio)
    length = min(audio.shape[1], processed.shape[0])
    out[:, :length] = processed[:length, : audio.shape[0]].T * np.float32(peak / SOX_HEADROOM)
    return out


def humanise(
    parts: Sequence[Part], seed: int, stem_index: int, tempo: float, timing_ms: float, velocity_spread: float
) -> list[Part]:
    """Copies of ``parts`` with every note's onset and velocity moved by normal draws.

    Onsets move by ``timing_ms`` (standard deviation, ms; a note keeps its end
    relative to its start and never moves before the song start); velocities by
    ``velocity_spread`` steps, kept in 1..127. A zero spread leaves that aspect
    untouched and draws nothing for it.
    """
    rng = np.random.default_rng([seed, _HUMANISE, stem_index])
    beats_per_ms = tempo / 60_000.0
    out = []
    for part in parts:
        notes = []
        for note in part.notes:
            start = note.start
            if timing_ms > 0:
                start = max(0.0, start + float(rng.normal(0.0, timing_ms)) * beats_per_ms)
            velocity = note.velocity
            if velocity_spread > 0:
                velocity = int(np.clip(round(velocity + rng.normal(0.0, velocity_spread)), 1, 127))
            notes.append(dataclasses.replace(note, start=start, velocity=velocity))
        out.append(dataclasses.replace(part, notes=notes))
    return out
