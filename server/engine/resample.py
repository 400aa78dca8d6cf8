"""Streaming sample-rate conversion between a client and a model.

Both resamplers here are *time-aligned*: output sample ``i`` is the signal at
input time ``i * in_rate / out_rate`` (the filter's group delay is
compensated). Each output sample becomes *available* only once the input it
depends on has arrived; after feeding ``n`` input samples, fewer than
``n * out_rate / in_rate`` have come out. That shortfall (the "lag") is bounded
by :attr:`StreamResampler.max_lag`, and a session adds the bound (in and out)
to its latency, so its output FIFO never runs dry and an impulse still comes
out exactly ``L`` samples later (give or take the fractional position of the
rate conversion).

* ``"sinc"`` (the default): :class:`PolyphaseSinc`, a Kaiser-windowed sinc
  evaluated per output phase. Its lag is the filter's half-length, whatever the
  chunking: 4.6 ms between 44.1 kHz and 8 kHz, 0.9 ms between 48 and 44.1 kHz.
  It costs more CPU than soxr (measured with 256-sample blocks, stereo: 12 ms
  per second of audio for 44.1 -> 8 kHz, 20 ms for 48 -> 44.1 kHz; soxr HQ
  1.6-3.6 ms), so file jobs, whose latency nobody hears, keep soxr HQ.
* ``"QQ"`` ... ``"VHQ"``: ``soxr.ResampleStream``. Its FFT-based stages hold
  output back by far more than their filters' length (HQ: 80 ms for
  44.1 kHz -> 8 kHz and 135 ms back; 19 ms for 48 -> 44.1 kHz), depending on
  the chunking: feeding soxr at most ``max_chunk`` samples per call keeps the
  lag bounded by a value that depends only on the rates and the quality, which
  :func:`max_lag` measures once per configuration.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import soxr

DEFAULT_QUALITY = "sinc"  # real-time sessions
FILE_RESAMPLE_QUALITY = "HQ"  # file jobs: latency is not heard, and soxr costs less CPU
SOXR_QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")
QUALITIES = ("sinc", *SOXR_QUALITIES)
# PolyphaseSinc design: zero crossings of the sinc on each side, Kaiser beta (about
# 100 dB stopband), and the cutoff as a share of the lower rate's Nyquist frequency,
# low enough that the transition band ends below it (nothing aliases back).
SINC_ZEROS = 32
SINC_BETA = 10.0
SINC_ROLLOFF = 0.9
# Phase tables up to this many rows are computed once; rarer rate pairs (a huge
# reduced ratio) evaluate their taps per call.
MAX_TABLE_PHASES = 4096
# Largest chunk handed to soxr per call. Larger calls let soxr hold back far more
# output (measured: ~2700 samples at 48k -> 44.1k for 4096-sample calls, ~840 for
# calls of 256 or less), which would all be latency.
MAX_CHUNK = 256
# Output samples added to the measured worst lag (the probe cannot try every chunking).
LAG_MARGIN = 2
MIN_RATE = 8000
MAX_RATE = 192000


class PolyphaseSinc:
    """Streaming windowed-sinc resampler for ``(channels, n)`` float32 blocks.

    With ``up / down`` the reduced ratio ``out_rate / in_rate``, output ``n`` sits
    at input position ``t = n * down / up``, between input ``k = floor(t)`` and
    ``k + 1`` at phase ``(n * down) mod up``. It is the sum of the ``2 * half``
    inputs around ``t`` weighted by a low-pass at ``SINC_ROLLOFF`` times the lower
    Nyquist frequency, Kaiser-windowed over ``SINC_ZEROS`` zero crossings a side;
    each phase's taps are scaled to sum to one (unit gain at DC). Samples before
    the first input are silence. Output ``n`` is ready once input ``k + half``
    has arrived, so the lag is about ``half * out_rate / in_rate`` output samples.
    """

    def __init__(self, in_rate: int, out_rate: int, channels: int) -> None:
        g = math.gcd(in_rate, out_rate)
        self.up, self.down = out_rate // g, in_rate // g
        self.channels = channels
        cutoff = SINC_ROLLOFF * min(in_rate, out_rate) / 2 / in_rate  # cycles per input sample
        self._cutoff = cutoff
        self._width = SINC_ZEROS / (2 * cutoff)  # half-length of the filter, input samples
        self.half = math.ceil(self._width)
        self._offsets = np.arange(-self.half + 1, self.half + 1)  # inputs k + j for j in offsets
        self._table = self._taps(np.arange(self.up)) if self.up <= MAX_TABLE_PHASES else None
        self.max_lag = float(math.ceil((self.half + 1) * self.up / self.down) + 1)
        self.reset()

    def _taps(self, phases: np.ndarray) -> np.ndarray:
        """``(len(phases), 2 * half)`` float32 weights of inputs ``k + offsets`` for those phases."""
        distance = self._offsets[None, :] - phases[:, None] / self.up  # input samples from t
        inside = np.clip(1.0 - (distance / self._width) ** 2, 0.0, None)
        taps = 2 * self._cutoff * np.sinc(2 * self._cutoff * distance) * np.i0(SINC_BETA * np.sqrt(inside))
        taps[inside <= 0] = 0.0
        return (taps / taps.sum(axis=1, keepdims=True)).astype(np.float32)

    def reset(self) -> None:
        # Inputs from ``self._base`` on, preceded by ``half`` samples of silence.
        self._buffer = np.zeros((self.channels, self.half), np.float32)
        self._base = -self.half  # stream index of self._buffer[:, 0]
        self._next = 0  # next output index

    def process(self, x: np.ndarray) -> np.ndarray:
        """``(channels, n)`` -> ``(channels, m)`` resampled samples now available."""
        self._buffer = np.concatenate([self._buffer, np.asarray(x, dtype=np.float32)], axis=1)
        received = self._base + self._buffer.shape[1]  # inputs so far
        # output n needs inputs up to floor(n * down / up) + half <= received - 1
        last = ((received - 1 - self.half) * self.up) // self.down  # may be negative
        n = np.arange(self._next, max(self._next, last + 1))
        if n.size == 0:
            return np.zeros((self.channels, 0), np.float32)
        position = n * self.down
        k, phase = position // self.up, position % self.up
        taps = self._table[phase] if self._table is not None else self._taps(phase)
        windows = np.lib.stride_tricks.sliding_window_view(self._buffer, 2 * self.half, axis=1)
        window = windows[:, k - self._base - self.half + 1]  # (C, m, 2 * half): inputs k + offsets
        out = np.matmul(window[:, :, None, :], taps[None, :, :, None])[:, :, 0, 0]
        self._next = int(n[-1]) + 1
        # keep what the next output's window can still reach
        first_needed = (self._next * self.down) // self.up - self.half + 1
        drop = first_needed - self._base
        if drop > 0:
            self._buffer = self._buffer[:, drop:]
            self._base += drop
        return np.ascontiguousarray(out, dtype=np.float32)


class StreamResampler:
    """One direction of streaming resampling for ``channels`` channels.

    ``process`` takes ``(channels, n)`` float32 and returns ``(channels, m)``
    float32, ``m`` varying per call; the total out tracks ``total_in *
    out_rate / in_rate`` to within :attr:`max_lag` output samples.
    ``quality`` is ``"sinc"`` (:class:`PolyphaseSinc`) or a soxr quality.
    """

    def __init__(
        self,
        in_rate: int,
        out_rate: int,
        channels: int,
        quality: str = DEFAULT_QUALITY,
        max_chunk: int = MAX_CHUNK,
    ) -> None:
        if quality not in QUALITIES:
            raise ValueError(f"resample quality must be one of {QUALITIES}, got {quality!r}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.channels = channels
        self.quality = quality
        self.max_chunk = max_chunk
        self._sinc: PolyphaseSinc | None = None
        self._stream: soxr.ResampleStream | None = None
        if quality == "sinc":
            self._sinc = PolyphaseSinc(in_rate, out_rate, channels)
            self.max_lag = self._sinc.max_lag
        else:
            self._stream = soxr.ResampleStream(in_rate, out_rate, channels, dtype="float32", quality=quality)
            self.max_lag = max_lag(in_rate, out_rate, quality, max_chunk)

    def process(self, x: np.ndarray) -> np.ndarray:
        """``(channels, n)`` -> ``(channels, m)`` resampled samples now available."""
        if self._sinc is not None:
            return self._sinc.process(x)
        assert self._stream is not None
        frames = np.ascontiguousarray(x.T, dtype=np.float32)  # soxr wants (frames, channels)
        outs = [
            self._stream.resample_chunk(frames[i : i + self.max_chunk])
            for i in range(0, frames.shape[0], self.max_chunk)
        ]
        if not outs:
            return np.zeros((self.channels, 0), np.float32)
        return np.ascontiguousarray(np.concatenate(outs, axis=0).T)

    def reset(self) -> None:
        """Forget all history: ready for a new signal preceded by silence."""
        if self._sinc is not None:
            self._sinc.reset()
        else:
            assert self._stream is not None
            self._stream.clear()


@functools.lru_cache(maxsize=64)
def max_lag(in_rate: int, out_rate: int, quality: str = DEFAULT_QUALITY, max_chunk: int = MAX_CHUNK) -> float:
    """Worst shortfall, in output samples, of soxr's available output vs the ideal count (soxr qualities).

    Measured by feeding 1.5 s of silence one sample at a time, then 1.5 s in
    chunks of assorted sizes up to ``max_chunk`` (the shortfall is periodic in
    soxr's internal block size and, chunking aside, peaks within a few blocks),
    plus a margin of ``LAG_MARGIN`` samples for patterns the probe missed.
    """
    stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality)
    sizes = [1, 3, 17, 64, max_chunk, max(1, max_chunk - 1), 7, 2, 100 % max_chunk + 1, 1, 1, 1]
    ratio = out_rate / in_rate
    fed = produced = 0
    worst = 0.0
    zeros = np.zeros(max_chunk, np.float32)
    i = 0
    while fed < 3 * in_rate:
        if fed < 1.5 * in_rate:
            n = 1
        else:
            n = sizes[i % len(sizes)]
            i += 1
        produced += stream.resample_chunk(zeros[:n]).shape[0]
        fed += n
        worst = max(worst, fed * ratio - produced)
    return float(math.ceil(worst) + LAG_MARGIN)
