"""The audio side of the bridge: underrun policy, late blocks, resets, no allocation, no exceptions."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from stemserve.plugin_bridge.bridge import Bridge, BridgeSettings, UnderrunPolicy
from tests.plugin_bridge.alloc import assert_no_steady_allocation, per_call_peaks
from tests.plugin_bridge.fake_server import FakeSeparation, start_fake

CHANNELS = 2
BLOCK = 256


def unconnected(underrun: UnderrunPolicy = "dry", server_latency: int = 300, margin: int = 0) -> Bridge:
    """A bridge whose latency is fixed as if a session had opened, fed by writing its output ring directly."""
    settings = BridgeSettings(
        "127.0.0.1:1", "m", 48000, CHANNELS, underrun=underrun, margin_samples=margin, max_block=1024, max_latency=4096
    )
    bridge = Bridge(settings)
    assert bridge.timeline.admit(server_latency, 0, 0, server_latency, bridge.counters) == margin
    bridge.timeline.session_first_out = 0
    return bridge


def signal(frames: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((CHANNELS, frames)).astype(np.float32)


def run_blocks(bridge: Bridge, audio: np.ndarray, block: int = BLOCK) -> np.ndarray:
    out = np.empty_like(audio)
    for start in range(0, audio.shape[1], block):
        bridge.callback(audio[:, start : start + block], out[:, start : start + block])
    return out


def delayed(audio: np.ndarray, by: int) -> np.ndarray:
    return np.concatenate([np.zeros((audio.shape[0], by), np.float32), audio[:, : audio.shape[1] - by]], axis=1)


@pytest.mark.parametrize("policy", ["dry", "silence"])
def test_missing_stems_become_latency_aligned_dry_or_silence_and_are_counted(policy: UnderrunPolicy) -> None:
    bridge = unconnected(policy)
    total = bridge.latency_samples
    assert total == 300
    audio = signal(BLOCK * 8)
    stems = -0.5 * delayed(audio, total)  # what a server would have sent, by host output position
    # Stems arrive for every block but the 3rd and 6th.
    for k in range(8):
        if k not in (2, 5):
            bridge.out_ring.write(k * BLOCK, stems[:, k * BLOCK : (k + 1) * BLOCK])
    out = run_blocks(bridge, audio)
    missing = np.zeros(audio.shape[1], bool)
    missing[2 * BLOCK : 3 * BLOCK] = missing[5 * BLOCK : 6 * BLOCK] = True
    fallback = delayed(audio, total) if policy == "dry" else np.zeros_like(audio)
    np.testing.assert_array_equal(out[:, missing], fallback[:, missing])
    np.testing.assert_array_equal(out[:, ~missing], stems[:, ~missing])
    stats = bridge.stats()
    assert stats["underrun_blocks"] == 2
    assert stats["underrun_frames"] == 2 * BLOCK
    assert stats["gap_frames"] == 0


def test_frames_before_a_session_delivers_are_gaps_not_underruns() -> None:
    bridge = unconnected()
    bridge.timeline.session_first_out = 1000
    run_blocks(bridge, signal(BLOCK * 8))
    stats = bridge.stats()
    assert stats["gap_frames"] == 1000
    assert stats["underrun_frames"] == BLOCK * 8 - 1000


def test_without_a_latency_the_output_is_silence() -> None:
    bridge = Bridge(BridgeSettings("127.0.0.1:1", "m", 48000, CHANNELS))
    out = run_blocks(bridge, signal(BLOCK * 2))
    assert np.all(out == 0.0)
    assert bridge.stats()["gap_frames"] == BLOCK * 2


def test_reset_mutes_the_estimates_of_pre_reset_audio_and_keeps_the_latency() -> None:
    bridge = unconnected()
    audio = signal(BLOCK * 6)
    run_blocks(bridge, audio[:, : BLOCK * 2])
    bridge.reset()
    out = run_blocks(bridge, audio[:, BLOCK * 2 :])
    total = bridge.latency_samples
    assert total == 300
    assert np.all(out[:, :total] == 0.0)
    np.testing.assert_array_equal(out[:, total:], delayed(audio, total)[:, BLOCK * 2 + total :])
    assert bridge.timeline.reset_taken == 1 and bridge.timeline.reset_pos == BLOCK * 2
    assert bridge.stats()["muted_frames"] == total


def test_no_exception_escapes_the_callback() -> None:
    bridge = unconnected()
    out = np.ones((CHANNELS, BLOCK), np.float32)
    bridge.callback(np.zeros((CHANNELS + 1, BLOCK), np.float32), out)  # wrong channel count
    assert bridge.stats()["callback_errors"] == 1
    assert np.all(out == 0.0)


def test_blocks_larger_than_max_block_are_split() -> None:
    bridge = unconnected()
    audio = signal(3000)
    out = run_blocks(bridge, audio, block=3000)
    np.testing.assert_array_equal(out, delayed(audio, 300))


def test_callback_allocates_nothing_in_steady_state() -> None:
    bridge = unconnected()
    block = signal(BLOCK)
    out = np.empty_like(block)
    stems = np.ones((CHANNELS, BLOCK), np.float32)
    for k in range(20):  # warm up, both paths
        bridge.out_ring.write(k * BLOCK, stems) if k % 2 else None
        bridge.callback(block, out)

    def network_side(k: int) -> None:  # not measured: the network thread runs elsewhere
        if k % 2:
            bridge.out_ring.write(k * BLOCK, stems)

    peaks = per_call_peaks(lambda k: bridge.callback(block, out), 20, 600, between=network_side)
    assert_no_steady_allocation(peaks, block.nbytes)  # even k: underrun (dry path); odd k: stems
    assert bridge.stats()["underrun_blocks"] == 300


@pytest.fixture
def late_server() -> Iterator[tuple[FakeSeparation, str]]:
    servicer = FakeSeparation(latency=100, gain=0.5, delays={10: 0.4})
    server, address = start_fake(servicer)
    yield servicer, address
    server.stop(0)


@pytest.mark.parametrize("policy", ["dry", "silence"])
def test_late_blocks_are_dropped_and_counted_and_alignment_is_kept(late_server, policy: UnderrunPolicy) -> None:
    _, address = late_server
    settings = BridgeSettings(
        address, "fake", 48000, CHANNELS, underrun=policy, margin_samples=0, offline_timeout_s=0.05
    )
    audio = signal(BLOCK * 40, seed=1)
    with Bridge(settings) as bridge:
        assert bridge.start(wait_s=10) is not None
        out = np.concatenate([bridge.process(audio[:, s : s + BLOCK]) for s in range(0, audio.shape[1], BLOCK)], axis=1)
        # let the held-back answers land (they are late by now)
        for _ in range(50):
            if bridge.stats()["blocks_received"] == 40:
                break
            time.sleep(0.05)
        stats = bridge.stats()
    total = 100
    dry = delayed(audio, total)
    wet = 0.5 * dry
    fallback = dry if policy == "dry" else np.zeros_like(dry)
    # Every frame is either the aligned stem or (where it came too late) the fallback, never shifted.
    is_wet = np.all(np.isclose(out, wet, atol=1e-6), axis=0)
    is_fallback = np.all(np.isclose(out, fallback, atol=1e-6), axis=0) & ~np.all(dry == 0.0, axis=0)
    assert np.all(is_wet | is_fallback | (np.arange(out.shape[1]) < 2 * total))
    assert stats["late_blocks"] >= 1
    assert stats["underrun_frames"] >= BLOCK
    assert stats["late_frames"] == stats["underrun_frames"]  # each missed frame did come, late, and was dropped
    assert np.count_nonzero(is_fallback[2 * total :]) == stats["underrun_frames"]
    assert np.all(is_wet[-BLOCK * 10 :])  # aligned stems after the hiccup
