"""Server killed mid-stream: the bridge keeps producing (dry) audio, reconnects when the server
returns, and the stem output resumes aligned; no exception escapes the audio callback."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest

from stemserve.plugin_bridge.bridge import Bridge, BridgeSettings
from tests.plugin_bridge.servers import CHANNELS, RATE, free_port, start_process

BLOCK = 512
PERIOD = BLOCK / RATE


class ClockedHost:
    """Calls the bridge's audio callback once per block period from its own thread, like an audio driver."""

    def __init__(self, bridge: Bridge, audio: np.ndarray) -> None:
        self.bridge = bridge
        self.audio = audio
        self.out = np.zeros_like(audio)
        self.frames = 0
        self.escaped: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        next_time = time.monotonic()
        try:
            while not self._stop.is_set() and self.frames + BLOCK <= self.audio.shape[1]:
                s = self.frames
                self.bridge.callback(self.audio[:, s : s + BLOCK], self.out[:, s : s + BLOCK])
                self.frames += BLOCK
                next_time += PERIOD
                delay = next_time - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        except BaseException as err:  # recorded: the test asserts none
            self.escaped.append(err)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def wait_frames(self, frames: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.frames < frames:
            assert time.monotonic() < deadline
            time.sleep(0.01)


@pytest.mark.slow
def test_server_killed_mid_stream_dry_meanwhile_then_aligned_stems_again(tmp_path) -> None:
    port = free_port()
    log_path = tmp_path / "server.log"
    server = start_process(port, log_path)
    rng = np.random.default_rng(11)
    audio = (0.3 * rng.standard_normal((CHANNELS, RATE * 90))).astype(np.float32)
    settings = BridgeSettings(
        f"127.0.0.1:{port}",
        "ident",
        RATE,
        CHANNELS,
        target="speech",
        gains={"speech": 0.5},
        block_frames=BLOCK,
        margin_ms=60.0,
        backoff_max_s=0.5,
    )
    bridge = Bridge(settings)
    host = ClockedHost(bridge, audio)
    try:
        report = bridge.start(wait_s=30)
        assert report is not None
        total = report.total
        host.start()
        host.wait_frames(host.frames + RATE * 2)  # 2 s of stems
        killed_at = host.frames
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        host.wait_frames(killed_at + RATE)  # 1 s with no server at all
        # The link notices the dead connection in its own time (its receiver thread, at normal priority
        # on a shared CPU): within seconds, while the audio stays dry and aligned (asserted below).
        noticed_by = time.monotonic() + 10
        while bridge.connected and time.monotonic() < noticed_by:
            time.sleep(0.05)
        assert not bridge.connected
        server = start_process(port, log_path)
        assert bridge.wait_connected(30)
        back_at = host.frames
        host.wait_frames(back_at + RATE * 2)  # 2 s after the reconnect
        ended_at = host.frames
    finally:
        host.stop()
        bridge.stop()
        server.send_signal(signal.SIGTERM)
        server.wait(20)
    stats = bridge.stats()
    assert host.escaped == []
    assert stats["callback_errors"] == 0
    assert stats["reconnects"] >= 1
    out = host.out[:, :ended_at]
    dry = np.concatenate([np.zeros((CHANNELS, total), np.float32), audio[:, : ended_at - total]], axis=1)
    wet = 0.5 * dry
    is_wet = np.all(np.abs(out - wet) < 1e-5, axis=0)
    is_dry = np.all(np.abs(out - dry) < 1e-5, axis=0)
    # Every frame is the aligned stem or the aligned dry input: audio never stopped, never shifted.
    assert np.all(is_wet | is_dry)
    head = slice(total + RATE // 2, killed_at)
    assert np.mean(is_wet[head]) > 0.95  # stems while the server lived
    outage = slice(killed_at + total, killed_at + RATE)
    assert np.all(is_dry[outage] & ~is_wet[outage])  # dry while it was gone
    tail = slice(ended_at - RATE, ended_at)
    assert np.mean(is_wet[tail]) > 0.95  # stems again, aligned, after it came back
    print("reconnect test counters:", stats)
