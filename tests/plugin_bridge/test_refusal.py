"""A server that says no is not a server that cannot be reached: the bridge shows the server's reason.

A full server (here: one real-time session per model) answers an open with
RESOURCE_EXHAUSTED and its own message. That message reaches the log at WARNING,
the bridge's status (STATS, OSC ``/stats``), and the open is retried: quickly at
first (behind a load balancer another server may take it), then with backoff;
once the server has room, the same bridge gets its session. Also: the bridge
CLIs default to the server's first listed model when ``--model`` is not given.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

import numpy as np
import pytest
import soundfile as sf

from stemserve.plugin_bridge.bridge import Bridge, BridgeSettings
from stemserve.plugin_bridge.client import StemClient
from stemserve.plugin_bridge.osc import OscListener
from stemserve.server.embedded import EmbeddedServer
from stemserve.server.engine import Engine, EngineConfig
from tests.plugin_bridge.servers import CHANNELS, RATE
from tests.server.engine.tiny_models import TinyCausalConfig, TinyCausalNet

LIMIT_MESSAGE = "the limit is 1"


@pytest.fixture()
def full_server() -> Iterator[str]:
    engine = Engine(EngineConfig(device="cpu", max_wait_ms=2.0, max_sessions=1, realtime_capacity=float("inf")))
    engine.load_model(
        "ident", model=TinyCausalNet(TinyCausalConfig(sample_rate=RATE, channels=CHANNELS, identity=True))
    )
    server = EmbeddedServer(engine)
    address = server.start()
    yield address
    server.stop()


def osc_stats(listener: OscListener, port: int) -> dict[str, object]:
    from pythonosc.dispatcher import Dispatcher
    from pythonosc.osc_server import ThreadingOSCUDPServer
    from pythonosc.udp_client import SimpleUDPClient

    got: list[str] = []
    dispatcher = Dispatcher()
    dispatcher.map("/stemserve/stats", lambda address, *args: got.append(args[0]))
    reply_server = ThreadingOSCUDPServer(("127.0.0.1", 0), dispatcher)
    try:
        client = SimpleUDPClient("127.0.0.1", port)
        client._sock = reply_server.socket  # the answer comes back to the reply server
        client.send_message("/stemserve/stats", [])
        reply_server.timeout = 5
        reply_server.handle_request()
    finally:
        reply_server.server_close()
    assert got, "no /stats reply"
    return dict(json.loads(got[0]))


def test_a_refused_open_shows_the_servers_reason_and_is_retried_until_there_is_room(
    full_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="stemserve.plugin_bridge.stream")
    first = Bridge(BridgeSettings(full_server, "ident", RATE, CHANNELS, client_name="first"))
    second = Bridge(BridgeSettings(full_server, "ident", RATE, CHANNELS, client_name="second", backoff_max_s=0.5))
    listener = OscListener(second.params, stats=second.report)
    port = listener.start()
    try:
        assert first.start(wait_s=30) is not None
        started = time.monotonic()
        assert second.start(wait_s=2.0) is None  # refused: no session
        stats = second.stats()
        # The first refusals are retried at the initial backoff (0.1 s), not doubled.
        assert stats["refusals"] >= 4, stats
        assert stats["connect_failures"] == stats["refusals"]
        status = second.status()
        assert status["status"] == "refused"
        assert "RESOURCE_EXHAUSTED" in status["status_message"] and LIMIT_MESSAGE in status["status_message"]
        reported = osc_stats(listener, port)
        assert reported["status"] == "refused" and LIMIT_MESSAGE in str(reported["status_message"])
        assert reported["refusals"] >= 4
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "refused" in r.getMessage()]
        assert len(warnings) == stats["refusals"] or len(warnings) >= 4  # every refusal logged, none at DEBUG
        assert all(LIMIT_MESSAGE in r.getMessage() for r in warnings)
        assert "cannot reach" not in caplog.text
        # Room again: the same bridge's retry opens its session.
        first.stop()
        assert second.wait_connected(10.0), second.status()
        assert second.status()["status"] == "streaming"
        assert second.process(np.ones((CHANNELS, 1024), np.float32)).shape == (CHANNELS, 1024)
        print(f"refused {stats['refusals']} times in {time.monotonic() - started:.1f} s, then opened")
    finally:
        listener.stop()
        second.stop()
        first.stop()


def test_bridge_render_without_model_uses_the_servers_first_model(server_address: str, tmp_path) -> None:
    from stemserve.server.cli import main

    with StemClient(server_address) as client:
        default = client.list_models()[0].name
    assert default == "ident"  # tests/plugin_bridge/servers.py loads it first: the passthrough
    audio = (0.3 * np.random.default_rng(1).standard_normal((CHANNELS, RATE // 2))).astype(np.float32)
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(src, audio.T, RATE, subtype="FLOAT")
    code = main(
        [
            "bridge-render",
            str(src),
            str(dst),
            "--server",
            server_address,
            "--target",
            "noise",
            "--connect-timeout",
            "30",
        ]
    )
    assert code == 0
    rendered, rate = sf.read(dst, dtype="float32", always_2d=True)
    assert rate == RATE
    # The passthrough's every stem is its input: latency-compensated, the rendered stem is the input.
    np.testing.assert_allclose(rendered.T[:, 1024:], audio[:, 1024:], atol=1e-6)


def test_bridge_render_without_model_and_no_server_says_why(tmp_path) -> None:
    from stemserve.server.cli import main
    from tests.plugin_bridge.servers import free_port

    src = tmp_path / "in.wav"
    sf.write(src, np.zeros((100, CHANNELS), np.float32), RATE)
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    code = main(["bridge-render", str(src), str(tmp_path / "out.wav"), "--server", address, "--connect-timeout", "2"])
    assert code == 2
    assert time.monotonic() - started < 10
    assert not (tmp_path / "out.wav").exists()
