"""Ring buffers: positions, wrap-around, stale slots, lapped input, and no allocation on the audio side."""

from __future__ import annotations

import numpy as np
import pytest

from stemserve.plugin_bridge.ring import InputRing, OutputRing
from tests.plugin_bridge.alloc import assert_no_steady_allocation, per_call_peaks


def ramp(start: int, n: int, channels: int = 2) -> np.ndarray:
    """Frame ``p`` holds ``p`` (channel 0) and ``-p`` (channel 1): positions are checkable."""
    frames = np.arange(start, start + n, dtype=np.float32)
    return np.stack([frames * (1 if c % 2 == 0 else -1) for c in range(channels)])


def test_capacity_must_be_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        InputRing(2, 1000)
    with pytest.raises(ValueError, match="max_block"):
        OutputRing(2, 64, 128)


def test_input_ring_reads_what_was_written_across_wrap_around() -> None:
    ring = InputRing(2, 64)
    sizes = [5, 17, 30, 1, 63, 40, 22]
    pos = 0
    for n in sizes:
        ring.write(ramp(pos, n))
        block, lost = ring.read(n)
        assert lost == 0
        np.testing.assert_array_equal(block, ramp(pos, n))
        pos += n
    assert ring.read_pos == ring.write_pos == pos


def test_input_ring_history_is_the_past_and_silence_before_zero() -> None:
    ring = InputRing(2, 64)
    ring.write(ramp(0, 50))
    ring.write(ramp(50, 50))  # wraps
    out = np.empty((2, 20), np.float32)
    ring.read_history(70, out)
    np.testing.assert_array_equal(out, ramp(70, 20))
    fresh = InputRing(2, 64)
    fresh.write(ramp(0, 10))
    ring_out = np.empty((2, 10), np.float32)
    fresh.read_history(-4, ring_out)
    np.testing.assert_array_equal(ring_out[:, :4], 0.0)
    np.testing.assert_array_equal(ring_out[:, 4:], ramp(0, 6))


def test_input_ring_reports_frames_lost_to_a_lapping_writer() -> None:
    ring = InputRing(1, 16)
    ring.write(ramp(0, 10, 1))
    ring.write(ramp(10, 16, 1))  # frames 0..9 overwritten before the reader came
    block, lost = ring.read(26)
    assert lost == 10
    np.testing.assert_array_equal(block[:, :10], 0.0)
    np.testing.assert_array_equal(block[:, 10:], ramp(10, 16, 1))


def test_output_ring_marks_only_frames_stamped_with_their_own_position() -> None:
    ring = OutputRing(2, 64, 32)
    ring.write(100, ramp(100, 10))
    out = np.empty((2, 20), np.float32)
    valid = np.empty(20, bool)
    got = ring.read(95, out, valid)
    assert got == 10
    np.testing.assert_array_equal(valid, [False] * 5 + [True] * 10 + [False] * 5)
    np.testing.assert_array_equal(out[:, 5:15], ramp(100, 10))
    # One lap later the same slots are stale, never mistaken for the frames due.
    assert ring.read(100 + 64, out[:, :10], valid[:10]) == 0


def test_output_ring_drops_and_counts_frames_already_played() -> None:
    ring = OutputRing(1, 64, 32)
    ring.read_pos = 50
    assert ring.write(40, ramp(40, 5, 1)) == 5  # wholly late
    assert ring.write(45, ramp(45, 10, 1)) == 5  # half late
    assert ring.count_ready(50, 5) == 5
    assert ring.count_ready(45, 5) == 0


def test_audio_side_of_both_rings_allocates_nothing_in_steady_state() -> None:
    in_ring = InputRing(2, 4096)
    out_ring = OutputRing(2, 4096, 512)
    block = np.ones((2, 512), np.float32)
    out = np.empty((2, 512), np.float32)
    hist = np.empty((2, 512), np.float32)
    valid = np.empty(512, bool)
    for pos in range(0, 512 * 8, 512):  # warm up
        in_ring.write(block)
        out_ring.read(pos, out, valid)

    def audio_side(k: int) -> None:
        pos = k * 512
        in_ring.write(block)
        in_ring.read_history(pos - 1000, hist)
        out_ring.read(pos, out, valid)
        out_ring.read_pos = pos + 512

    # One block is 4 KiB: any array allocated per call would show; a few small ints do not.
    assert_no_steady_allocation(per_call_peaks(audio_side, 8, 1000), block.nbytes)
