"""Engine-wide block statistics: how long blocks took from submit to result, live and file apart.

Cheap enough to record every block from the worker threads: per kind a
fixed-bucket histogram (for Prometheus) and the most recent durations (for
percentiles). Live (real-time session) and file (offline job) blocks are kept
apart: a file job's large, unhurried blocks say nothing about a DAW track's
latency and must not move its p99.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import numpy as np

# Upper bounds (ms) of the per-block processing-time histogram.
BLOCK_MS_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
RECENT = 2048
KINDS = ("live", "file")


class _Durations:
    """One kind's histogram, sum, max and recent durations (the caller holds the lock)."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BLOCK_MS_BUCKETS) + 1)  # last: above every bound
        self.sum = 0.0
        self.max = 0.0
        self.recent: deque[float] = deque(maxlen=RECENT)

    def add(self, ms: float) -> None:
        index = next((i for i, bound in enumerate(BLOCK_MS_BUCKETS) if ms <= bound), len(BLOCK_MS_BUCKETS))
        self.counts[index] += 1
        self.sum += ms
        self.max = max(self.max, ms)
        self.recent.append(ms)

    def percentiles(self) -> dict[str, float]:
        recent = np.array(self.recent) if self.recent else np.zeros(1)
        return {
            "p50": float(np.percentile(recent, 50)),
            "p99": float(np.percentile(recent, 99)),
            "max": self.max,
            "count": float(sum(self.counts)),
        }

    def histogram(self) -> dict[str, Any]:
        cumulative = np.cumsum(self.counts).tolist()
        buckets = [(str(bound), int(c)) for bound, c in zip(BLOCK_MS_BUCKETS, cumulative, strict=False)]
        buckets.append(("+Inf", int(cumulative[-1])))
        return {"buckets": buckets, "sum": self.sum}


class BlockStats:
    """Thread-safe counters of block durations (per kind) and lateness."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kinds = {kind: _Durations() for kind in KINDS}
        self.blocks = 0
        self.late = 0

    def record(self, ms: float, late: bool, live: bool = True) -> None:
        """One block: ``ms`` from submit to result; ``live`` for a real-time session's, False for a file job's."""
        with self._lock:
            self._kinds["live" if live else "file"].add(ms)
            self.blocks += 1
            self.late += int(late)

    def snapshot(self) -> dict[str, Any]:
        """``block_ms``: p50 / p99 / max of recent **live** blocks (what a track hears);
        ``block_ms_file``: the same for file jobs; ``block_ms_histogram``: per kind, cumulative
        ``(upper bound, count)`` buckets, Prometheus style, and the sum."""
        with self._lock:
            return {
                "block_ms": self._kinds["live"].percentiles(),
                "block_ms_file": self._kinds["file"].percentiles(),
                "block_ms_histogram": {kind: d.histogram() for kind, d in self._kinds.items()},
            }
