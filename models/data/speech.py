"""Two-speaker speech mixtures synthesised with espeak-ng or flite (wsj0-2mix style).

Each speaker is a synthesiser (``engine``), one of its voices, a voice variant
(espeak-ng: ``en+m3``, ``de+f2``...; flite has none), a pitch and a speaking
rate; each utterance is a random sentence (or several) from a built-in word
list. Two different speakers are mixed at a random signal-to-noise ratio
between -5 and 5 dB (the level of ``s1`` relative to ``s2`` over the whole
utterance), at 8 kHz (or 16 kHz) after resampling the synthesiser's output
(espeak-ng 22.05 kHz, flite 8 or 16 kHz) with soxr. The layout is wsj0-2mix's::

    OUT/{tr,cv,tt}/{mix,s1,s2}/<id>.wav      (mono)
    OUT/{tr,cv,tt}/mixtures.json             (speakers, texts, SNR per id)

The sources are written scaled, and ``mix`` is the sum of the sources as
written, so ``mix == s1 + s2`` holds on the files. Everything is a function of
:func:`mixture_seed` ``(base seed, split, index)`` and the settings.

``SpeechSettings.engines`` is the pool each speaker draws its engine from. The
default is espeak-ng alone, which renders exactly what the renderer rendered
before engines existed (same random draws, same files); the bundled speech
models were trained on it, so **flite is the held-out engine** (``HELD_OUT_ENGINE``),
as TimGM6mb is the held-out soundfont of the music renderer.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from stemserve.models.data.wavfile import write_wav

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("tr", "cv", "tt")
SPLIT_ALIASES = {"train": "tr", "valid": "cv", "test": "tt", "tr": "tr", "cv": "cv", "tt": "tt"}
SOURCES: tuple[str, ...] = ("s1", "s2")
RATES: tuple[int, ...] = (8000, 16000)
ESPEAK_RATE = 22050
SNR_RANGE = (-5.0, 5.0)
FORMAT_VERSION = 1
_SPLIT_CODES = {"tr": 0, "cv": 1, "tt": 2}

# espeak-ng voices that ship with the Debian package (no mbrola), English first.
VOICES: tuple[str, ...] = (
    "en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
    "de", "fr", "es", "it", "nl", "pt", "sv", "pl", "da", "fi",
)  # fmt: skip
MALE_VARIANTS: tuple[str, ...] = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "klatt", "klatt2", "klatt3", "david", "john", "max", "paul", "robert",
)  # fmt: skip
FEMALE_VARIANTS: tuple[str, ...] = ("f1", "f2", "f3", "f4", "f5", "Annie", "linda", "steph", "belinda", "Alicia")

ENGINES: tuple[str, ...] = ("espeak-ng", "flite")
TRAIN_ENGINES: tuple[str, ...] = ("espeak-ng",)
HELD_OUT_ENGINE = "flite"
# flite's built-in English voices (Debian's flite package), four speakers: kal (diphone, 8 kHz),
# awb, rms and slt (clustergen, 16 kHz). Left out: kal16 (kal's speaker again) and awb_time
# (clock times only). rms ignores the f0 scale, so two rms speakers are one voice.
FLITE_VOICES: tuple[str, ...] = ("kal", "awb", "rms", "slt")
FLITE_FIXED_PITCH: frozenset[str] = frozenset({"rms"})
ENGINE_VOICES: dict[str, tuple[str, ...]] = {"espeak-ng": VOICES, "flite": FLITE_VOICES}

WORDS: tuple[str, ...] = tuple(
    [
        "the",
        "a",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "red",
        "green",
        "blue",
        "yellow",
        "black",
        "white",
        "small",
        "large",
        "old",
        "new",
        "good",
        "bad",
        "early",
        "late",
        "quick",
        "slow",
        "happy",
        "quiet",
        "loud",
        "bright",
        "dark",
        "warm",
        "cold",
        "soft",
        "hard",
        "clean",
        "open",
        "heavy",
        "light",
        "dog",
        "cat",
        "bird",
        "horse",
        "river",
        "mountain",
        "city",
        "village",
        "garden",
        "window",
        "table",
        "chair",
        "door",
        "house",
        "car",
        "train",
        "boat",
        "road",
        "bridge",
        "tree",
        "flower",
        "stone",
        "water",
        "fire",
        "wind",
        "rain",
        "snow",
        "sun",
        "moon",
        "star",
        "morning",
        "evening",
        "night",
        "winter",
        "summer",
        "teacher",
        "doctor",
        "farmer",
        "singer",
        "driver",
        "painter",
        "child",
        "friend",
        "family",
        "brother",
        "sister",
        "mother",
        "father",
        "neighbour",
        "book",
        "letter",
        "paper",
        "picture",
        "story",
        "song",
        "music",
        "market",
        "office",
        "station",
        "kitchen",
        "school",
        "street",
        "island",
        "forest",
        "runs",
        "walks",
        "sings",
        "reads",
        "writes",
        "builds",
        "finds",
        "holds",
        "brings",
        "takes",
        "gives",
        "makes",
        "opens",
        "closes",
        "carries",
        "watches",
        "listens",
        "waits",
        "calls",
        "plays",
        "jumps",
        "climbs",
        "swims",
        "drives",
        "paints",
        "cooks",
        "cleans",
        "follows",
        "counts",
        "answers",
        "moves",
        "near",
        "under",
        "over",
        "behind",
        "beside",
        "across",
        "through",
        "along",
        "around",
        "between",
        "before",
        "after",
        "during",
        "without",
        "with",
        "and",
        "but",
        "while",
        "because",
        "then",
        "again",
        "always",
        "never",
        "often",
        "sometimes",
        "today",
        "tomorrow",
        "yesterday",
        "here",
        "there",
        "very",
        "quite",
        "rather",
        "almost",
        "nearly",
        "only",
        "just",
        "still",
        "already",
        "soon",
        "later",
        "outside",
        "inside",
        "together",
        "apart",
    ]
)


class SynthesisError(RuntimeError):
    """A synthesiser (espeak-ng, flite) failed or is missing."""


def mixture_seed(base_seed: int, split: str, index: int) -> int:
    """Seed of mixture ``index`` of ``split``: disjoint streams per split (numpy ``SeedSequence``)."""
    split = SPLIT_ALIASES.get(split, split)
    if split not in _SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if index < 0 or base_seed < 0:
        raise ValueError("seed and index must be >= 0")
    sequence = np.random.SeedSequence(entropy=base_seed, spawn_key=(100 + _SPLIT_CODES[split], index))
    high, low = (int(v) for v in sequence.generate_state(2, np.uint32))
    return ((high << 32) | low) >> 1


@dataclass(frozen=True)
class Speaker:
    """A speaker: engine, voice, variant (espeak-ng only, else ""), pitch (0-99) and rate (words per minute).

    flite has no pitch or rate scale of its own: pitch scales the voice's f0 by
    0.75 + 0.6 * pitch / 99 (about 0.9-1.2 for the drawn 20-79) and rate
    stretches durations by 160 / rate. The rms voice ignores the f0 scale.
    """

    voice: str
    variant: str
    pitch: int
    rate: int
    engine: str = "espeak-ng"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; expected one of {ENGINES}")

    @property
    def name(self) -> str:
        if self.engine == "flite":
            return f"flite:{self.voice}"
        return f"{self.voice}+{self.variant}"

    def describe(self) -> dict[str, Any]:
        """The speaker as recorded in ``mixtures.json`` (no ``engine`` key for espeak-ng, as before engines)."""
        info = asdict(self)
        if self.engine == "espeak-ng":
            del info["engine"]
        return info


def random_speaker(
    rng: np.random.Generator, engines: tuple[str, ...] = TRAIN_ENGINES, voices: tuple[str, ...] = ()
) -> Speaker:
    """A random speaker of one of ``engines``, restricted to ``voices`` when given.

    With one engine no draw picks it, so the espeak-ng default draws what it drew before engines existed.
    """
    engine = engines[0] if len(engines) == 1 else engines[int(rng.integers(len(engines)))]
    if engine == "flite":
        pool = tuple(v for v in FLITE_VOICES if not voices or v in voices)
        return Speaker(
            voice=pool[int(rng.integers(len(pool)))],
            variant="",
            pitch=int(rng.integers(20, 80)),
            rate=int(rng.integers(120, 200)),
            engine="flite",
        )
    female = rng.random() < 0.5
    variants = FEMALE_VARIANTS if female else MALE_VARIANTS
    english = rng.random() < 0.7
    if voices:
        pool = tuple(v for v in VOICES if v in voices)
        voice = pool[int(rng.integers(len(pool)))]
    else:
        voice = VOICES[int(rng.integers(7))] if english else VOICES[int(rng.integers(7, len(VOICES)))]
    return Speaker(
        voice=voice,
        variant=variants[int(rng.integers(len(variants)))],
        pitch=int(rng.integers(20, 80)),
        rate=int(rng.integers(120, 200)),
    )


def different(a: Speaker, b: Speaker) -> bool:
    """Two speakers are different when engine, voice or variant differ, or their pitch differs clearly.

    A pitch apart counts only where the voice follows it (not flite's rms).
    """
    if a.name != b.name:
        return True
    return abs(a.pitch - b.pitch) >= 15 and not (a.engine == "flite" and a.voice in FLITE_FIXED_PITCH)


def random_sentence(rng: np.random.Generator) -> str:
    count = int(rng.integers(4, 13))
    return " ".join(WORDS[int(i)] for i in rng.integers(len(WORDS), size=count))


def espeak_binary() -> str:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise SynthesisError("the espeak-ng command is not installed (apt-get install espeak-ng)")
    return binary


def flite_binary() -> str:
    binary = shutil.which("flite")
    if binary is None:
        raise SynthesisError("the flite command is not installed (apt-get install flite)")
    return binary


def engine_binary(engine: str) -> str:
    """The path of ``engine``'s command; SynthesisError when it is not installed."""
    if engine == "flite":
        return flite_binary()
    if engine == "espeak-ng":
        return espeak_binary()
    raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")


def synthesise(text: str, speaker: Speaker) -> tuple[np.ndarray, int]:
    """``text`` spoken by ``speaker``: float32 mono and its sample rate (the engine's own)."""
    if speaker.engine == "flite":
        return _flite(text, speaker)
    return _espeak(text, speaker), ESPEAK_RATE


def _flite(text: str, speaker: Speaker) -> tuple[np.ndarray, int]:
    # flite writes only to a named file (no stdout); the audio is read back before the folder goes.
    with tempfile.TemporaryDirectory(prefix="stemserve-flite-") as folder:
        path = Path(folder) / "speech.wav"
        command = [
            flite_binary(),
            "-voice", speaker.voice,
            "--setf", f"f0_shift={0.75 + 0.6 * speaker.pitch / 99:.4f}",
            "--setf", f"duration_stretch={160.0 / speaker.rate:.4f}",
            "-t", text,
            "-o", str(path),
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, check=False)
        if result.returncode != 0 or not path.is_file() or path.stat().st_size <= 44:
            message = result.stderr.decode(errors="replace").strip()[-500:]
            raise SynthesisError(f"flite failed ({result.returncode}) for {speaker.name}: {message}")
        audio, rate = sf.read(str(path), dtype="float32")
    return np.asarray(audio, dtype=np.float32).reshape(-1), int(rate)


def _espeak(text: str, speaker: Speaker) -> np.ndarray:
    command = [
        espeak_binary(),
        "-v", speaker.name,
        "-p", str(speaker.pitch),
        "-s", str(speaker.rate),
        "--stdout",
        text,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0 or len(result.stdout) <= 44:
        message = result.stderr.decode(errors="replace").strip()
        raise SynthesisError(f"espeak-ng failed ({result.returncode}) for {speaker.name}: {message}")
    audio, rate = sf.read(io.BytesIO(result.stdout), dtype="float32")
    if rate != ESPEAK_RATE:
        raise SynthesisError(f"espeak-ng wrote {rate} Hz, expected {ESPEAK_RATE}")
    return np.asarray(audio, dtype=np.float32).reshape(-1)


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    import soxr

    if rate_in == rate_out:
        return audio.astype(np.float32)
    return np.asarray(soxr.resample(audio, rate_in, rate_out, quality="HQ"), dtype=np.float32)


def speak(rng: np.random.Generator, speaker: Speaker, num_samples: int, rate: int) -> tuple[np.ndarray, list[str]]:
    """Sentences by ``speaker`` with short pauses, from a random onset, cropped to ``num_samples``."""
    out = np.zeros(num_samples, dtype=np.float32)
    position = int(rng.uniform(0.0, 0.3) * rate)
    texts: list[str] = []
    while position < num_samples * 0.8:
        text = random_sentence(rng)
        audio = resample(*synthesise(text, speaker), rate)
        take = min(len(audio), num_samples - position)
        out[position : position + take] = audio[:take]
        texts.append(text)
        position += len(audio) + int(rng.uniform(0.1, 0.5) * rate)
    return out, texts


def power(x: np.ndarray) -> float:
    return float(np.mean(np.asarray(x, dtype=np.float64) ** 2))


def snr_db(s1: np.ndarray, s2: np.ndarray) -> float:
    """Level of ``s1`` relative to ``s2`` in dB over the whole signals."""
    return 10.0 * float(np.log10(power(s1) / power(s2)))


@dataclass(frozen=True)
class SpeechSettings:
    """How mixtures are rendered.

    ``engines``: the pool each speaker draws its synthesiser from (``TRAIN_ENGINES``
    by default; ``("flite",)`` renders the held-out engine). ``voices``: when not
    empty, only these voices (names of ``VOICES`` / ``FLITE_VOICES``) are drawn.
    """

    seconds: float = 4.0
    sample_rate: int = 8000
    subtype: str = "FLOAT"
    engines: tuple[str, ...] = TRAIN_ENGINES
    voices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.engines or len(set(self.engines)) != len(self.engines):
            raise ValueError(f"engines must be distinct names, got {self.engines}")
        unknown = [e for e in self.engines if e not in ENGINES]
        if unknown:
            raise ValueError(f"unknown engines {unknown}; expected some of {ENGINES}")
        for engine in self.engines:
            if self.voices and not set(self.voices) & set(ENGINE_VOICES[engine]):
                raise ValueError(f"none of the voices {self.voices} belongs to {engine}")
        known = {v for e in self.engines for v in ENGINE_VOICES[e]}
        if set(self.voices) - known:
            raise ValueError(f"voices {sorted(set(self.voices) - known)} belong to none of {self.engines}")
        if self.seconds <= 0:
            raise ValueError("seconds must be > 0")
        if self.sample_rate not in RATES:
            raise ValueError(f"sample_rate must be one of {RATES}, got {self.sample_rate}")
        if self.subtype not in ("FLOAT", "PCM_16"):
            raise ValueError("subtype must be FLOAT or PCM_16")


def make_mixture(seed: int, settings: SpeechSettings) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Sources ``(2, T)`` float32 as they will read back, their sum ``(T,)`` and a description."""
    rng = np.random.default_rng(seed)
    num_samples = int(round(settings.seconds * settings.sample_rate))
    first = random_speaker(rng, settings.engines, settings.voices)
    second = random_speaker(rng, settings.engines, settings.voices)
    while not different(first, second):
        second = random_speaker(rng, settings.engines, settings.voices)
    s1, texts1 = speak(rng, first, num_samples, settings.sample_rate)
    s2, texts2 = speak(rng, second, num_samples, settings.sample_rate)
    target_snr = float(rng.uniform(*SNR_RANGE))
    # Scale s2 so that 10 log10(P1 / P2) is exactly target_snr, then set one level for both.
    s2 = s2 * np.float32(np.sqrt(power(s1) / power(s2) / 10.0 ** (target_snr / 10.0)))
    mix = s1.astype(np.float64) + s2
    level = 10.0 ** (rng.uniform(-28.0, -18.0) / 20.0) / np.sqrt(np.mean(mix**2))
    level = min(level, 0.9 / float(np.max(np.abs(mix))))
    sources = np.stack([s1, s2]).astype(np.float64) * level
    if settings.subtype == "PCM_16":
        sources = np.round(sources * 2**15) / 2**15
    sources32 = sources.astype(np.float32)
    mixture = sources32[0] + sources32[1]
    info = {
        "seed": seed,
        "snr_db": snr_db(sources32[0], sources32[1]),
        "speakers": [first.describe(), second.describe()],
        "texts": [texts1, texts2],
    }
    return sources32, mixture, info


def mixture_id(index: int) -> str:
    return f"{index:06d}"


def write_mixture(out_dir: Path, split: str, index: int, base_seed: int, settings: SpeechSettings) -> dict[str, Any]:
    """Write mixture ``index`` of ``split``; returns its description (with ``id``)."""
    split = SPLIT_ALIASES.get(split, split)
    seed = mixture_seed(base_seed, split, index)
    sources, mixture, info = make_mixture(seed, settings)
    name = mixture_id(index)
    for folder, audio in (("s1", sources[0]), ("s2", sources[1]), ("mix", mixture)):
        write_wav(out_dir / split / folder / f"{name}.wav", audio, settings.sample_rate, settings.subtype)
    return {"id": name, **info}


def render_dataset(
    out_dir: str | os.PathLike[str],
    counts: dict[str, int],
    base_seed: int = 0,
    settings: SpeechSettings | None = None,
    workers: int = 2,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Render ``counts[split]`` mixtures per split (``tr``/``cv``/``tt`` or ``train``/``valid``/``test``)."""
    settings = settings or SpeechSettings()
    normalised = {SPLIT_ALIASES.get(k, k): v for k, v in counts.items()}
    unknown = set(normalised) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; expected {SPLITS}")
    if any(n < 0 for n in normalised.values()):
        raise ValueError("mixture counts must be >= 0")
    if workers < 1:
        raise ValueError("workers must be >= 1")
    for engine in settings.engines:
        engine_binary(engine)  # fail before starting any thread
    out = Path(out_dir)
    for split, count in normalised.items():
        if count:
            for folder in ("mix", *SOURCES):
                (out / split / folder).mkdir(parents=True, exist_ok=True)
    jobs = [(split, i) for split in SPLITS for i in range(normalised.get(split, 0))]
    infos: dict[tuple[str, int], dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(write_mixture, out, split, i, base_seed, settings): (split, i) for split, i in jobs}
        for future in as_completed(futures):
            split, i = futures[future]
            infos[(split, i)] = future.result()
            if progress is not None:
                progress(split, i)
    result: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        if normalised.get(split):
            result[split] = [infos[(split, i)] for i in range(normalised[split])]
            (out / split / "mixtures.json").write_text(json.dumps(result[split], indent=1) + "\n")
    manifest = {
        "kind": "speech",
        "format_version": FORMAT_VERSION,
        "sources": list(SOURCES),
        "sample_rate": settings.sample_rate,
        "seconds": settings.seconds,
        "subtype": settings.subtype,
        "seed": base_seed,
        # Left out at their defaults, so a default set's manifest reads as it did before engines existed.
        **({"engines": list(settings.engines)} if settings.engines != TRAIN_ENGINES else {}),
        **({"voices": list(settings.voices)} if settings.voices else {}),
        "splits": {split: normalised.get(split, 0) for split in SPLITS},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return result


def list_mixtures(root: str | os.PathLike[str], split: str) -> list[str]:
    """Ids of the mixtures of ``split`` that have ``mix``, ``s1`` and ``s2`` files, sorted."""
    folder = Path(root) / SPLIT_ALIASES.get(split, split)
    if not (folder / "mix").is_dir():
        return []
    return sorted(
        p.stem
        for p in (folder / "mix").glob("*.wav")
        if not p.name.startswith(".") and all((folder / s / p.name).is_file() for s in SOURCES)
    )
