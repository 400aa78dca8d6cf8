"""Streaming sample-rate conversion between a client and a model (soxr).

``soxr.ResampleStream`` output is time-aligned with its input (output sample
``i`` is the signal at input time ``i * in_rate / out_rate``: the filter's
group delay is compensated) but it becomes *available* late: after feeding
``n`` input samples fewer than ``n * out_rate / in_rate`` have come out. That
shortfall (the "lag") varies with how the input is chunked; feeding soxr at
most ``max_chunk`` samples per call keeps it bounded by a value that depends
only on the rates and the quality, which :func:`max_lag` measures once per
configuration. A session adds that bound (in and out) to its latency, so its
output FIFO never runs dry and an impulse still comes out exactly ``L``
samples later (give or take the fractional position of the rate conversion).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import soxr

DEFAULT_QUALITY = "HQ"
# Largest chunk handed to soxr per call. Larger calls let soxr hold back far more
# output (measured: ~2700 samples at 48k -> 44.1k for 4096-sample calls, ~840 for
# calls of 256 or less), which would all be latency.
MAX_CHUNK = 256
# Output samples added to the measured worst lag (the probe cannot try every chunking).
LAG_MARGIN = 2
MIN_RATE = 8000
MAX_RATE = 192000


class StreamResampler:
    """One direction of streaming resampling for ``channels`` channels.

    ``process`` takes ``(channels, n)`` float32 and returns ``(channels, m)``
    float32, ``m`` varying per call; the total out tracks ``total_in *
    out_rate / in_rate`` to within :attr:`max_lag` output samples.
    """

    def __init__(
        self,
        in_rate: int,
        out_rate: int,
        channels: int,
        quality: str = DEFAULT_QUALITY,
        max_chunk: int = MAX_CHUNK,
    ) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.channels = channels
        self.quality = quality
        self.max_chunk = max_chunk
        self._stream = soxr.ResampleStream(in_rate, out_rate, channels, dtype="float32", quality=quality)
        self.max_lag = max_lag(in_rate, out_rate, quality, max_chunk)

    def process(self, x: np.ndarray) -> np.ndarray:
        """``(channels, n)`` -> ``(channels, m)`` resampled samples now available."""
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
        self._stream.clear()


@functools.lru_cache(maxsize=64)
def max_lag(in_rate: int, out_rate: int, quality: str = DEFAULT_QUALITY, max_chunk: int = MAX_CHUNK) -> float:
    """Worst shortfall, in output samples, of soxr's available output vs the ideal count.

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
