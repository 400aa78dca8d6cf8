"""Preallocated single-producer / single-consumer ring buffers for the audio path.

Both rings index frames by an absolute position (an ever-growing Python int:
frame 0 is the first frame the host ever gave the bridge), and store frame
``pos`` at slot ``pos % capacity``. Every array is allocated once, in the
constructor; the audio-thread methods only copy into existing arrays.

Thread safety comes from ownership, not locks. Each position counter has
exactly one writer, and data is always written before the counter (or stamp)
that publishes it, so a reader that sees the new counter sees the data. In
CPython an int attribute store is atomic, and a reader that races a wrap-around
detects it afterwards (a seqlock-style check) instead of blocking the writer.

* :class:`InputRing`: the audio callback writes host input; the network thread
  reads the frames it has not sent yet; the audio callback also reads its own
  past input (the latency-aligned dry signal) from it.
* :class:`OutputRing`: the network thread writes stem frames at the host output
  position they belong to (in any order, any size); the audio callback reads
  the frames due now together with a mask of which ones have arrived. A slot's
  *stamp* holds the absolute position of the frame it stores, so stale data
  from a previous lap (or a missing block) is never mistaken for the frame due.
"""

from __future__ import annotations

import numpy as np


def _check_capacity(capacity: int) -> None:
    if capacity <= 0 or capacity & (capacity - 1):
        raise ValueError(f"ring capacity must be a positive power of two, got {capacity}")


class InputRing:
    """Host input history, shape ``(channels, capacity)`` float32.

    Writer: the audio callback (:meth:`write`, :meth:`read_history`).
    Reader: the network thread (:meth:`read`, :meth:`discard`).
    """

    def __init__(self, channels: int, capacity: int) -> None:
        _check_capacity(capacity)
        self.channels = channels
        self.capacity = capacity
        self._mask = capacity - 1
        self._data = np.zeros((channels, capacity), dtype=np.float32)
        # Frames ever written (writer-owned) and frames ever consumed (reader-owned).
        self.write_pos = 0
        self.read_pos = 0

    # -- writer side (audio thread) ------------------------------------------------
    def write(self, block: np.ndarray) -> None:
        """Append ``block (channels, n)``, ``n <= capacity``; never blocks.

        Unread frames older than ``capacity`` are overwritten: the reader finds
        out (see :meth:`read`) rather than the audio thread waiting for it.
        """
        n = block.shape[1]
        start = self.write_pos & self._mask
        first = min(n, self.capacity - start)
        np.copyto(self._data[:, start : start + first], block[:, :first])
        if first < n:
            np.copyto(self._data[:, : n - first], block[:, first:])
        self.write_pos += n  # publish after the data

    def read_history(self, pos: int, out: np.ndarray) -> None:
        """Copy frames ``[pos, pos + n)`` of past input into ``out (channels, n)``.

        Writer-only (the data cannot change under it). Positions before 0 read as
        silence; the caller guarantees ``pos >= write_pos - capacity`` and
        ``pos + n <= write_pos``.
        """
        n = out.shape[1]
        if pos < 0:
            lead = min(n, -pos)
            out[:, :lead] = 0.0
            if lead == n:
                return
            out = out[:, lead:]
            pos, n = 0, n - lead
        start = pos & self._mask
        first = min(n, self.capacity - start)
        np.copyto(out[:, :first], self._data[:, start : start + first])
        if first < n:
            np.copyto(out[:, first:], self._data[:, : n - first])

    # -- reader side (network thread) ----------------------------------------------
    def available(self) -> int:
        """Frames written but not yet consumed by the reader."""
        return self.write_pos - self.read_pos

    def read(self, frames: int) -> tuple[np.ndarray, int]:
        """Consume up to ``frames`` frames; returns ``(block (channels, n), lost)``.

        ``lost`` counts frames at the start of the block that the writer had
        overwritten before (or while) they were copied; they are returned as
        zeros so positions stay contiguous. Allocates (network thread only).
        """
        write_pos = self.write_pos
        pos = self.read_pos
        n = min(frames, write_pos - pos)
        out = np.empty((self.channels, n), dtype=np.float32)
        # Frames the writer lapped before we got here are gone: zeros in their place.
        lapped = min(n, max(0, write_pos - self.capacity - pos))
        out[:, :lapped] = 0.0
        self._copy_out(pos + lapped, out[:, lapped:])
        # Seqlock check: frames the writer lapped during the copy are garbage too.
        lost = min(n, max(lapped, self.write_pos - self.capacity - pos))
        out[:, lapped:lost] = 0.0
        self.read_pos = pos + n
        return out, lost

    def discard(self) -> int:
        """Consume everything written so far (nothing to send it to); returns the new read position."""
        self.read_pos = self.write_pos
        return self.read_pos

    def _copy_out(self, pos: int, out: np.ndarray) -> None:
        n = out.shape[1]
        start = pos & self._mask
        first = min(n, self.capacity - start)
        np.copyto(out[:, :first], self._data[:, start : start + first])
        if first < n:
            np.copyto(out[:, first:], self._data[:, : n - first])


class OutputRing:
    """Stem output by host output position, shape ``(channels, capacity)`` float32.

    Writer: the network thread (:meth:`write`). Reader: the audio callback
    (:meth:`read`), which publishes ``read_pos`` so the writer can tell late
    frames from early ones. ``max_block`` bounds one :meth:`read`.
    """

    def __init__(self, channels: int, capacity: int, max_block: int) -> None:
        _check_capacity(capacity)
        if max_block > capacity:
            raise ValueError(f"max_block {max_block} exceeds the ring capacity {capacity}")
        self.channels = channels
        self.capacity = capacity
        self.max_block = max_block
        self._mask = capacity - 1
        self._data = np.zeros((channels, capacity), dtype=np.float32)
        self._stamps = np.full(capacity, -1, dtype=np.int64)
        # Reader scratch: positions relative to the block start, to compare stamps without allocating.
        self._offsets = np.arange(max_block, dtype=np.int64)
        self._scratch = np.empty(max_block, dtype=np.int64)
        # Everything before read_pos has been played (reader-owned).
        self.read_pos = 0

    # -- writer side (network thread) ----------------------------------------------
    def write(self, pos: int, block: np.ndarray) -> int:
        """Store ``block (channels, n)`` as frames ``[pos, pos + n)``; returns frames dropped as late.

        Frames before the reader's position were due already: writing them
        would only overwrite a slot of a future lap, so they are dropped.
        """
        n = block.shape[1]
        late = min(n, max(0, self.read_pos - pos))
        if late == n:
            return late
        pos += late
        block = block[:, late:]
        n -= late
        if n > self.capacity:
            raise ValueError(f"block of {n} frames does not fit a ring of {self.capacity}")
        start = pos & self._mask
        first = min(n, self.capacity - start)
        np.copyto(self._data[:, start : start + first], block[:, :first])
        if first < n:
            np.copyto(self._data[:, : n - first], block[:, first:])
        # Stamps last: they publish the data.
        self._stamps[start : start + first] = np.arange(pos, pos + first, dtype=np.int64)
        if first < n:
            self._stamps[: n - first] = np.arange(pos + first, pos + n, dtype=np.int64)
        return late

    def count_ready(self, pos: int, frames: int) -> int:
        """How many of frames ``[pos, pos + frames)`` have arrived (any thread; allocates)."""
        idx = (np.arange(pos, pos + frames, dtype=np.int64)) & self._mask
        return int(np.count_nonzero(self._stamps[idx] == np.arange(pos, pos + frames, dtype=np.int64)))

    # -- reader side (audio thread) ------------------------------------------------
    def read(self, pos: int, out: np.ndarray, valid: np.ndarray) -> int:
        """Copy frames ``[pos, pos + n)`` into ``out (channels, n)``; mark arrived ones in ``valid (n,)``.

        ``n <= max_block``. Slots whose stamp is not their position hold stale
        data: ``valid`` is False there and the caller replaces them. Returns the
        number of valid frames. Allocation-free.
        """
        n = out.shape[1]
        start = pos & self._mask
        first = min(n, self.capacity - start)
        # Stamps first, data second: a frame stamped after this check stays
        # "missing" for this callback, which is safe (never a torn frame).
        scratch = self._scratch[:n]
        np.subtract(self._stamps[start : start + first], pos, out=scratch[:first])
        if first < n:
            np.subtract(self._stamps[: n - first], pos, out=scratch[first:])
        np.equal(scratch, self._offsets[:n], out=valid)
        np.copyto(out[:, :first], self._data[:, start : start + first])
        if first < n:
            np.copyto(out[:, first:], self._data[:, : n - first])
        return int(np.count_nonzero(valid))
