"""Engine-wide block statistics: how long blocks took from submit to result.

Cheap enough to record every block from the worker threads: a fixed-bucket
histogram (for Prometheus) and the most recent durations (for percentiles).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import numpy as np

# Upper bounds (ms) of the per-block processing-time histogram.
BLOCK_MS_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
RECENT = 2048


class BlockStats:
    """Thread-safe counters of block durations and lateness."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = [0] * (len(BLOCK_MS_BUCKETS) + 1)  # last: above every bound
        self._sum = 0.0
        self._max = 0.0
        self._recent: deque[float] = deque(maxlen=RECENT)
        self.blocks = 0
        self.late = 0

    def record(self, ms: float, late: bool) -> None:
        index = next((i for i, bound in enumerate(BLOCK_MS_BUCKETS) if ms <= bound), len(BLOCK_MS_BUCKETS))
        with self._lock:
            self._counts[index] += 1
            self._sum += ms
            self._max = max(self._max, ms)
            self._recent.append(ms)
            self.blocks += 1
            self.late += int(late)

    def snapshot(self) -> dict[str, Any]:
        """``block_ms`` (p50 / p99 / max of recent blocks) and ``block_ms_histogram``
        (cumulative ``(upper bound, count)`` buckets, Prometheus style, and the sum)."""
        with self._lock:
            recent = np.array(self._recent) if self._recent else np.zeros(1)
            cumulative = np.cumsum(self._counts).tolist()
            buckets = [(str(bound), int(c)) for bound, c in zip(BLOCK_MS_BUCKETS, cumulative, strict=False)]
            buckets.append(("+Inf", int(cumulative[-1])))
            return {
                "block_ms": {
                    "p50": float(np.percentile(recent, 50)),
                    "p99": float(np.percentile(recent, 99)),
                    "max": self._max,
                },
                "block_ms_histogram": {"buckets": buckets, "sum": self._sum},
            }
