"""A refused model switch costs the track nothing: the trial session opens beside the running one.

The server takes one real-time session per model. Model ``other`` is taken by
another track, so a switch to it is refused (RESOURCE_EXHAUSTED) — asked for on
the bridge's OSC port (``/stemserve/model``, real UDP). The running session on
``ident`` keeps its id and streams on without a single dry or late frame.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np
import pytest
from pythonosc.udp_client import SimpleUDPClient

from stemserve.plugin_bridge.bridge import Bridge, BridgeSettings
from stemserve.plugin_bridge.osc import OscListener
from stemserve.server.embedded import EmbeddedServer
from stemserve.server.engine import Engine, EngineConfig
from tests.plugin_bridge.servers import CHANNELS, RATE
from tests.server.engine.tiny_models import TinyCausalConfig, TinyCausalNet

BLOCK = 512


@pytest.fixture()
def one_session_per_model() -> Iterator[str]:
    engine = Engine(EngineConfig(device="cpu", max_wait_ms=2.0, max_sessions=1, realtime_capacity=float("inf")))
    for name in ("ident", "other"):
        engine.load_model(
            name, model=TinyCausalNet(TinyCausalConfig(sample_rate=RATE, channels=CHANNELS, identity=True))
        )
    server = EmbeddedServer(engine)
    address = server.start()
    yield address
    server.stop()


def test_a_refused_switch_leaves_the_running_session_untouched(
    one_session_per_model: str, caplog: pytest.LogCaptureFixture
) -> None:
    address = one_session_per_model
    audio = (0.3 * np.random.default_rng(4).standard_normal((CHANNELS, BLOCK * 200))).astype(np.float32)
    holder = Bridge(BridgeSettings(address, "other", RATE, CHANNELS, client_name="holder"))
    track = Bridge(
        BridgeSettings(address, "ident", RATE, CHANNELS, target="noise", margin_samples=0, client_name="track")
    )
    listener = OscListener(track.params)
    port = listener.start()
    out = []
    try:
        assert holder.start(wait_s=30) is not None
        assert track.start(wait_s=30) is not None
        session_id, total = track.link.session_id, track.latency_samples
        assert total is not None
        for k in range(20):
            out.append(track.process(audio[:, k * BLOCK : (k + 1) * BLOCK]))
        with caplog.at_level(logging.WARNING):
            SimpleUDPClient("127.0.0.1", port).send_message("/stemserve/model", "other")
            deadline = time.monotonic() + 15
            k = 20
            while track.stats()["model_refused"] == 0:
                assert time.monotonic() < deadline, "the switch was neither made nor refused"
                out.append(track.process(audio[:, k * BLOCK : (k + 1) * BLOCK]))
                k += 1
                time.sleep(0.005)
        for j in range(k, k + 20):
            out.append(track.process(audio[:, j * BLOCK : (j + 1) * BLOCK]))
        stats = track.stats()
        assert track.link.session_id == session_id and track.link.model == "ident"
    finally:
        listener.stop()
        track.stop()
        holder.stop()
    assert "model change to 'other' refused" in caplog.text and "RESOURCE_EXHAUSTED" in caplog.text
    assert stats["sessions_opened"] == 1 and stats["reconnects"] == 0
    # Not one frame lost: only the first `total` (before any estimate could exist) were gaps.
    assert stats["gap_frames"] == total and stats["underrun_frames"] == 0 and stats["late_frames"] == 0
    rendered = np.concatenate(out, axis=1)
    n = rendered.shape[1]
    np.testing.assert_allclose(rendered[:, total:], audio[:, : n - total], atol=1e-6)
