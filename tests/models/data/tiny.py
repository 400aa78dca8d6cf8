"""Tiny rendered data sets shared by the data, training and evaluation tests.

Rendering runs FluidSynth / espeak-ng for real (both are installed by
``scripts/install-deps``); a set of 2 s tracks takes about a second.
"""

from __future__ import annotations

from pathlib import Path

from stemserve.models.data import music, speech

MUSIC_COUNTS = {"train": 2, "valid": 1, "test": 1}
SPEECH_COUNTS = {"tr": 2, "cv": 1, "tt": 1}


def render_music(root: Path, seed: int = 0, seconds: float = 2.0, subtype: str = "FLOAT") -> Path:
    settings = music.RenderSettings(seconds=seconds, subtype=subtype)
    music.render_dataset(root, MUSIC_COUNTS, base_seed=seed, settings=settings, workers=2)
    return root


def render_speech(root: Path, seed: int = 0, seconds: float = 2.0, rate: int = 8000) -> Path:
    settings = speech.SpeechSettings(seconds=seconds, sample_rate=rate)
    speech.render_dataset(root, SPEECH_COUNTS, base_seed=seed, settings=settings, workers=2)
    return root


def files_of(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
