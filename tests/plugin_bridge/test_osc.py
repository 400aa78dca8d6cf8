"""Parameters by OSC (sent with liblo's ``oscsend``) reach the server and change the output within one
block after the next block boundary; bad values are logged and ignored."""

from __future__ import annotations

import logging
import subprocess
import time

import numpy as np
import pytest

from stemserve.plugin_bridge.bridge import Bridge, BridgeSettings
from stemserve.plugin_bridge.client import StemClient
from stemserve.plugin_bridge.osc import OscListener
from tests.plugin_bridge.servers import CHANNELS, RATE

BLOCK = 512


def oscsend(port: int, address: str, types: str = "", *values: object) -> None:
    subprocess.run(["oscsend", "127.0.0.1", str(port), address, types, *map(str, values)], check=True, timeout=10)


def wait_handled(listener: OscListener, count: int) -> None:
    deadline = time.monotonic() + 5
    while listener.handled < count:
        assert time.monotonic() < deadline, "the bridge did not receive the OSC message"
        time.sleep(0.002)


def test_osc_parameters_change_the_output_one_block_after_the_next_boundary(
    server_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(5)
    audio = (0.3 * rng.standard_normal((CHANNELS, BLOCK * 20))).astype(np.float32)
    with StemClient(server_address) as client:
        stems = client.separate_array(audio, RATE, "causal")
    bridge = Bridge(BridgeSettings(server_address, "causal", RATE, CHANNELS, target="speech", margin_samples=0))
    listener = OscListener(bridge.params, reset=bridge.reset)
    port = listener.start()
    sent = 0

    def send(address: str, types: str = "", *values: object) -> None:
        nonlocal sent
        oscsend(port, address, types, *values)
        sent += 1
        wait_handled(listener, sent)

    out = []
    try:
        assert bridge.start(wait_s=30) is not None
        total = bridge.latency_samples
        assert total is not None
        with caplog.at_level(logging.WARNING):
            for k in range(20):
                if k == 6:
                    send("/stemserve/target", "s", "noise")  # our address space, by name
                elif k == 12:
                    send("/strip/plugin/parameter", "iiif", 1, 1, 2, 0.0)  # Ardour's shape: param 2 = mix
                elif k == 14:  # bad values: logged, ignored
                    send("/stemserve/mix", "f", 1.5)
                    send("/stemserve/target", "s", "piano")
                    send("/strip/plugin/parameter", "iiif", 1, 1, 9, 0.5)
                out.append(bridge.process(audio[:, k * BLOCK : (k + 1) * BLOCK]))
    finally:
        bridge.stop()
        listener.stop()
    rendered = np.concatenate(out, axis=1)
    dry = audio

    report = bridge.latency
    assert report is not None
    margin = report.margin  # the server applies a change at its *output* block boundary, margin ahead of ours

    def segment(first_block: int, last_block: int) -> tuple[slice, slice]:
        """Host output frames answered by the server for input blocks [first, last), and their input frames."""
        a, b = first_block * BLOCK + margin, min(last_block * BLOCK + margin, rendered.shape[1])
        return slice(a, b), slice(a - total, b - total)

    tol = 1e-4
    o, i = segment(2, 6)  # before (once the output is past the latency): the target stem
    np.testing.assert_allclose(rendered[:, o], stems["speech"][:, i], atol=tol)
    o, i = segment(7, 12)  # the block sent after the change ramps; from the one after it: the new target
    np.testing.assert_allclose(rendered[:, o], stems["noise"][:, i], atol=tol)
    o, i = segment(6, 7)
    assert not np.allclose(rendered[:, o], stems["noise"][:, i], atol=tol)
    assert not np.allclose(rendered[:, o], stems["speech"][:, i], atol=tol)
    o, i = segment(13, 20)  # Ardour's mix 0 ramps over block 12; from 13 on: dry; the bad values changed nothing
    np.testing.assert_allclose(rendered[:, o], dry[:, i], atol=tol)
    assert "mix must be in [0, 1], got 1.5" in caplog.text
    assert "target 'piano' ignored" in caplog.text
    assert "parameter 9 ignored" in caplog.text
    assert listener.refused == 3
    assert bridge.stats()["params_sent"] == 2


def test_osc_latency_query_replies_to_the_sender() -> None:
    from pythonosc.dispatcher import Dispatcher
    from pythonosc.osc_server import ThreadingOSCUDPServer
    from pythonosc.udp_client import SimpleUDPClient

    from stemserve.plugin_bridge.parameters import Parameters

    listener = OscListener(Parameters("m"), latency=lambda: (1234, 48000))
    port = listener.start()
    got: list[tuple] = []
    dispatcher = Dispatcher()
    dispatcher.map("/stemserve/latency", lambda address, *args: got.append(args))
    reply_server = ThreadingOSCUDPServer(("127.0.0.1", 0), dispatcher)
    try:
        # Send from the reply server's own socket so the answer comes back to it.
        client = SimpleUDPClient("127.0.0.1", port)
        client._sock = reply_server.socket
        client.send_message("/stemserve/latency", [])
        reply_server.timeout = 5
        reply_server.handle_request()
    finally:
        reply_server.server_close()
        listener.stop()
    assert got == [(1234, 48000)]
