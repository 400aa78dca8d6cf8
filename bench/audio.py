"""Test audio for the benchmarks: the bundled demo clip at a model's rate and channels, or noise chunks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo" / "demo.wav"


def demo(sample_rate: int, channels: int, seconds: float | None = None) -> np.ndarray:
    """``(channels, frames)`` float32: the demo clip (looped to ``seconds``), resampled and down/up-mixed."""
    import soundfile as sf
    import soxr

    audio, rate = sf.read(str(DEMO), dtype="float32", always_2d=True)  # (T, 2)
    if seconds is not None:
        frames = int(seconds * rate)
        audio = np.tile(audio, (-(-frames // audio.shape[0]), 1))[:frames]
    if rate != sample_rate:
        audio = soxr.resample(audio, rate, sample_rate, quality="HQ").astype(np.float32)
    if channels == 1:
        audio = audio.mean(axis=1, keepdims=True)
    elif channels != audio.shape[1]:
        audio = np.repeat(audio[:, :1], channels, axis=1)
    return np.ascontiguousarray(audio.T)


def noise_chunks(sample_rate: int, channels: int, seconds: float, chunk: int, seed: int = 0) -> Iterator[np.ndarray]:
    """``seconds`` of quiet noise as ``(channels, <= chunk)`` pieces, made as they are consumed."""
    rng = np.random.default_rng(seed)
    total = int(seconds * sample_rate)
    for start in range(0, total, chunk):
        n = min(chunk, total - start)
        yield (0.1 * rng.standard_normal((channels, n))).astype(np.float32)
