"""Two-speaker speech mixtures synthesised with espeak-ng (wsj0-2mix style).

Each speaker is an espeak-ng voice, a voice variant (``en+m3``, ``de+f2``...), a
pitch and a speaking rate; each utterance is a random sentence (or several)
from a built-in word list. Two different speakers are mixed at a random
signal-to-noise ratio between -5 and 5 dB (the level of ``s1`` relative to
``s2`` over the whole utterance), at 8 kHz (or 16 kHz) after resampling
espeak-ng's 22.05 kHz output with soxr. The layout is wsj0-2mix's::

    OUT/{tr,cv,tt}/{mix,s1,s2}/<id>.wav      (mono)
    OUT/{tr,cv,tt}/mixtures.json             (speakers, texts, SNR per id)

The sources are written scaled, and ``mix`` is the sum of the sources as
written, so ``mix == s1 + s2`` holds on the files. Everything is a function of
:func:`mixture_seed` ``(base seed, split, index)``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
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
    """espeak-ng failed or is missing."""


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
    """An espeak-ng speaker: voice, variant, pitch (0-99) and rate (words per minute)."""

    voice: str
    variant: str
    pitch: int
    rate: int

    @property
    def name(self) -> str:
        return f"{self.voice}+{self.variant}"


def random_speaker(rng: np.random.Generator) -> Speaker:
    female = rng.random() < 0.5
    variants = FEMALE_VARIANTS if female else MALE_VARIANTS
    english = rng.random() < 0.7
    voice = VOICES[int(rng.integers(7))] if english else VOICES[int(rng.integers(7, len(VOICES)))]
    return Speaker(
        voice=voice,
        variant=variants[int(rng.integers(len(variants)))],
        pitch=int(rng.integers(20, 80)),
        rate=int(rng.integers(120, 200)),
    )


def different(a: Speaker, b: Speaker) -> bool:
    """Two speakers are different when voice+variant differ or their pitch differs clearly."""
    return a.name != b.name or abs(a.pitch - b.pitch) >= 15


def random_sentence(rng: np.random.Generator) -> str:
    count = int(rng.integers(4, 13))
    return " ".join(WORDS[int(i)] for i in rng.integers(len(WORDS), size=count))


def espeak_binary() -> str:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise SynthesisError("the espeak-ng command is not installed (apt-get install espeak-ng)")
    return binary


def synthesise(text: str, speaker: Speaker) -> np.ndarray:
    """``text`` spoken by ``speaker``: float32 mono at espeak-ng's 22.05 kHz."""
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
        audio = resample(synthesise(text, speaker), ESPEAK_RATE, rate)
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
    seconds: float = 4.0
    sample_rate: int = 8000
    subtype: str = "FLOAT"

    def __post_init__(self) -> None:
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
    first = random_speaker(rng)
    second = random_speaker(rng)
    while not different(first, second):
        second = random_speaker(rng)
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
        "speakers": [asdict(first), asdict(second)],
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
    espeak_binary()
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
