"""Streaming resamplers: accurate, time-aligned, chunking-independent, and late by at most ``max_lag``.

The default ``sinc`` resampler's lag is its filter's half-length (a few ms); soxr's HQ
stream holds output back by tens to hundreds of ms, which a real-time session would hear.
"""

from __future__ import annotations

import numpy as np
import pytest

from stemserve.server.engine.resample import PolyphaseSinc, StreamResampler

PAIRS = [(44100, 8000), (8000, 44100), (48000, 44100), (44100, 48000), (22050, 16000), (44100, 44101)]


def tones(rate: int, seconds: float, start: float = 0.0) -> np.ndarray:
    """Two channels of sines inside every rate's passband (below 0.8 x 4 kHz)."""
    t = start + np.arange(int(rate * seconds)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 2900 * t + 1)]).astype(np.float32)


def run(resampler: StreamResampler | PolyphaseSinc, x: np.ndarray, sizes: list[int]) -> tuple[np.ndarray, float]:
    """Feed ``x`` in blocks of ``sizes``; return the output and the worst shortfall seen after a block."""
    outs, fed, produced, worst = [], 0, 0, 0.0
    ratio = (resampler.up / resampler.down) if isinstance(resampler, PolyphaseSinc) else None
    for n in sizes:
        out = resampler.process(x[:, fed : fed + n])
        fed += n
        produced += out.shape[1]
        outs.append(out)
        if ratio is not None:
            worst = max(worst, fed * ratio - produced)
    return np.concatenate(outs, axis=1), worst


def random_sizes(total: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(int(rng.integers(1, 4097)) if rng.random() < 0.5 else int(rng.integers(1, 64)))
    sizes[-1] -= sum(sizes) - total
    return sizes


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_sinc_output_is_the_signal_at_the_output_rate_time_aligned(in_rate: int, out_rate: int) -> None:
    x = tones(in_rate, 1.0)
    resampler = StreamResampler(in_rate, out_rate, 2, "sinc")
    y, _ = run(resampler, x, random_sizes(x.shape[1], 0))
    expected = tones(out_rate, 1.0)[:, : y.shape[1]]
    settled = out_rate // 50  # after the 20 ms the filter needs to leave the silence before the signal
    assert np.abs(y[:, settled:] - expected[:, settled:]).max() < 1e-4


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_sinc_lag_is_bounded_short_and_independent_of_chunking(in_rate: int, out_rate: int) -> None:
    x = np.random.default_rng(1).standard_normal((2, in_rate // 2)).astype(np.float32)
    whole, _ = run(PolyphaseSinc(in_rate, out_rate, 2), x, [x.shape[1]])
    for seed in range(3):
        resampler = PolyphaseSinc(in_rate, out_rate, 2)
        pieces, worst = run(resampler, x, random_sizes(x.shape[1], seed))
        assert worst <= resampler.max_lag
        np.testing.assert_allclose(pieces, whole, atol=1e-6)
    assert resampler.max_lag / out_rate < 0.005  # seconds; soxr HQ: 0.08 s to 8 kHz, 0.135 s back


def test_sinc_rejects_what_would_alias() -> None:
    """A 6 kHz tone is above 8 kHz's Nyquist frequency: it must vanish, not fold to 2 kHz."""
    t = np.arange(44100) / 44100
    x = np.sin(2 * np.pi * 6000 * t)[None].astype(np.float32)
    y, _ = run(PolyphaseSinc(44100, 8000, 1), x, [4410] * 10)
    assert np.abs(y[:, 400:]).max() < 1e-4  # -80 dB


def test_reset_forgets_history() -> None:
    resampler = StreamResampler(44100, 8000, 2)
    x = tones(44100, 0.2)
    first = resampler.process(x)
    resampler.process(np.ones((2, 1000), np.float32))
    resampler.reset()
    np.testing.assert_array_equal(resampler.process(x), first)


def test_unknown_quality_is_refused() -> None:
    with pytest.raises(ValueError, match="quality"):
        StreamResampler(44100, 8000, 2, "best")


@pytest.mark.parametrize("quality", ["sinc", "HQ"])
def test_both_resamplers_agree_on_the_signal(quality: str) -> None:
    x = tones(48000, 0.5)
    y, _ = run(StreamResampler(48000, 44100, 2, quality), x, [480] * 50)
    expected = tones(44100, 0.5)[:, : y.shape[1]]
    assert np.abs(y[:, 2205:] - expected[:, 2205:]).max() < 1e-4
