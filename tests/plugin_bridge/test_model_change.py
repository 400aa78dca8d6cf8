"""Model changes: accepted when the new model's latency fits the bridge's fixed latency, refused otherwise."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from stemserve.plugin_bridge.bridge import Bridge, BridgeSettings
from tests.plugin_bridge.servers import CHANNELS, RATE

BLOCK = 512


def test_model_change_within_the_latency_keeps_it_and_aligns_the_new_model(server_address: str) -> None:
    rng = np.random.default_rng(2)
    audio = (0.3 * rng.standard_normal((CHANNELS, BLOCK * 400))).astype(np.float32)
    with Bridge(BridgeSettings(server_address, "causal", RATE, CHANNELS, target="speech", margin_samples=0)) as bridge:
        assert bridge.start(wait_s=30) is not None
        total = bridge.latency_samples
        assert total == 514
        out, k = [], 0
        for k in range(4):
            out.append(bridge.process(audio[:, k * BLOCK : (k + 1) * BLOCK]))
        assert bridge.params.set_model("ident")  # L = 511 <= 514
        deadline = time.monotonic() + 20
        while not (bridge.link.model == "ident" and bridge.connected):
            assert time.monotonic() < deadline, "the bridge did not switch models"
            k += 1
            out.append(bridge.process(audio[:, k * BLOCK : (k + 1) * BLOCK]))
            time.sleep(0.01)
        switched_at = (k + 1) * BLOCK
        for j in range(k + 1, k + 11):
            out.append(bridge.process(audio[:, j * BLOCK : (j + 1) * BLOCK]))
        stats = bridge.stats()
    assert bridge.latency_samples == total  # unchanged
    assert bridge.params.model == "ident"
    rendered = np.concatenate(out, axis=1)
    settled = switched_at + total + BLOCK
    # The passthrough model's output is the input, total frames later: the latency never moved.
    np.testing.assert_allclose(rendered[:, settled:], audio[:, settled - total : rendered.shape[1] - total], atol=1e-6)
    assert stats["sessions_opened"] == 2 and stats["underrun_frames"] == 0


@pytest.mark.parametrize("model", ["causal", "missing"])
def test_model_change_that_cannot_fit_is_refused_and_logged(
    server_address: str, model: str, caplog: pytest.LogCaptureFixture
) -> None:
    with Bridge(BridgeSettings(server_address, "ident", RATE, CHANNELS, margin_samples=0)) as bridge:
        assert bridge.start(wait_s=30) is not None
        with caplog.at_level(logging.WARNING):
            assert not bridge.params.set_model(model)  # causal's 514 > ident's 511; missing: not served
        assert bridge.params.model == "ident"
    assert f"model change to {model!r} ignored" in caplog.text


def test_model_requested_on_the_servers_osc_port_switches_the_bridge() -> None:
    """A controller talking to the *server* (OSC /model) reaches the track: the server relays it on the
    Stream and the bridge takes its usual path (latency check, new session, same latency)."""
    from pythonosc.udp_client import SimpleUDPClient

    from stemserve.server.app import ServerConfig
    from stemserve.server.embedded import EmbeddedServer
    from tests.plugin_bridge.servers import tiny_engine

    config = ServerConfig(host="127.0.0.1", port=0, osc_port=0)
    with EmbeddedServer(tiny_engine(), config=config) as server:
        address = server.address
        osc = SimpleUDPClient("127.0.0.1", server.app.osc_port or 0)
        silence = np.zeros((CHANNELS, BLOCK), np.float32)
        with Bridge(BridgeSettings(address, "causal", RATE, CHANNELS, margin_samples=0)) as bridge:
            assert bridge.start(wait_s=30) is not None
            total = bridge.latency_samples
            osc.send_message(f"/stemserve/{bridge.link.session_id}/model", "ident")
            deadline = time.monotonic() + 20
            while not (bridge.link.model == "ident" and bridge.connected):
                assert time.monotonic() < deadline, "the bridge did not follow the server's model request"
                bridge.process(silence)
                time.sleep(0.01)
            assert bridge.params.model == "ident" and bridge.latency_samples == total
