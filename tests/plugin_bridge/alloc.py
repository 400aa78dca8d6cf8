"""Measuring what one call allocates, robust to other threads' allocations.

tracemalloc sees every thread, and these tests share the process with gRPC and
OSC threads. So each call is measured on its own (peak traced memory during it)
and judged by the typical call: an allocation made by the code under test shows
on every call, another thread's only now and then.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable


def per_call_peaks(
    call: Callable[[int], None], first: int, last: int, between: Callable[[int], None] | None = None
) -> list[int]:
    """Peak bytes traced during each ``call(k)``, ``first <= k < last``; ``between(k)`` runs unmeasured before it."""
    peaks = []
    tracemalloc.start()
    try:
        for k in range(first, last):
            if between is not None:
                between(k)
            base, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            call(k)
            peaks.append(tracemalloc.get_traced_memory()[1] - base)
    finally:
        tracemalloc.stop()
    return peaks


def assert_no_steady_allocation(peaks: list[int], block_bytes: int) -> None:
    """Calls only make small transient objects (array views, ints: well under 1 KiB), never arrays.

    An array of a block (``block_bytes >= 2 KiB``) made per call would show on every call; another
    thread's allocations show on a few at most.
    """
    assert block_bytes >= 2048, "measure with blocks of at least 2 KiB"
    big = [p for p in peaks if p >= 1024]
    assert len(big) <= len(peaks) // 20, f"{len(big)} of {len(peaks)} calls allocated >= 1 KiB: {sorted(big)[:10]}"
