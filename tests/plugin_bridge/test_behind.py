"""A server that cannot keep up is said so, loudly: a WARNING with the dry fraction and what would help.

The host side is real time (``Bridge.callback`` paced at the block period, as an
audio thread calls it); the server runs a model that sleeps 0.3 s per pass, so
nearly every frame comes back too late and plays dry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from stemserve.plugin_bridge.bridge import Bridge, BridgeSettings
from stemserve.server.embedded import EmbeddedServer
from stemserve.server.engine import Engine, EngineConfig
from tests.server.engine.tiny_models import Slow, TinyCausalConfig, TinyCausalNet, TinySpecConfig

RATE, CHANNELS, BLOCK = 16000, 2, 256
SECONDS = 3.0


class VerySlow(Slow):
    delay = 0.3


@pytest.fixture(scope="module")
def slow_server() -> Iterator[str]:
    engine = Engine(EngineConfig(device="cpu", max_wait_ms=2.0, realtime_capacity=float("inf")))
    engine.load_model("slow", model=VerySlow(TinySpecConfig(sample_rate=RATE, channels=CHANNELS)))
    engine.load_model(
        "ident", model=TinyCausalNet(TinyCausalConfig(sample_rate=RATE, channels=CHANNELS, identity=True))
    )
    server = EmbeddedServer(engine)
    address = server.start()
    yield address
    server.stop()


def play(bridge: Bridge, seconds: float) -> None:
    """Call the bridge as an audio thread would: one block per block period."""
    inp = (0.1 * np.random.default_rng(0).standard_normal((CHANNELS, BLOCK))).astype(np.float32)
    out = np.zeros_like(inp)
    period = BLOCK / RATE
    start = time.monotonic()
    for k in range(int(seconds / period)):
        bridge.callback(inp, out)
        time.sleep(max(0.0, start + (k + 1) * period - time.monotonic()))


def run(address: str, model: str) -> Bridge:
    bridge = Bridge(BridgeSettings(address, model, RATE, CHANNELS, block_frames=BLOCK, margin_samples=0))
    bridge.link.settings.behind_window_s = 1.0
    assert bridge.start(wait_s=30) is not None, bridge.status()
    thread = threading.Thread(target=play, args=(bridge, SECONDS))
    thread.start()
    thread.join(SECONDS + 30)
    return bridge


def test_a_server_that_cannot_keep_up_is_reported_with_the_dry_fraction_and_advice(
    slow_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stemserve.plugin_bridge.stream")
    bridge = run(slow_server, "slow")
    try:
        stats, status = bridge.stats(), bridge.status()
    finally:
        bridge.stop()
    assert stats["underrun_frames"] > 0.5 * stats["frames"], stats  # the premise: most frames played dry
    assert stats["behind_windows"] >= 1
    assert status["status"] == "behind" and "% of frames dry" in status["status_message"]
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "server behind:" in r.getMessage()
    ]
    assert warnings and "--stems vocals" in warnings[0] and "Conv-TasNet" in warnings[0]
    print(warnings[0])


def test_a_server_that_keeps_up_is_not_called_behind(slow_server: str) -> None:
    bridge = run(slow_server, "ident")
    try:
        stats, status = bridge.stats(), bridge.status()
    finally:
        bridge.stop()
    # Honest margin: on a loaded machine a few blocks may be late, but not half of the frames in a window.
    assert stats["behind_windows"] == 0, stats
    assert status["status"] == "streaming"
