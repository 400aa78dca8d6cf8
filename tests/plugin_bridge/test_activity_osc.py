"""A bridge on a model with heads: the latest block's activity, voicing and f0 are in its stats (``report()``, the
CLI's STATS, OSC ``/stats``), and every block's are sent as OSC ``/stemserve/activity`` to a subscriber (a plain
UDP socket here, subscribed with ``/stemserve/subscribe``)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from stemserve.models import registry
from stemserve.plugin_bridge.bridge import Bridge, BridgeSettings
from stemserve.plugin_bridge.osc import OscListener
from stemserve.server.embedded import EmbeddedServer
from stemserve.server.engine import Engine, EngineConfig
from tests.server.conftest import TINY_UNET

RATE = 16000
SOURCES = ["vocals", "drums", "bass", "other"]


@pytest.fixture(scope="module")
def heads_server() -> Iterator[str]:
    config = EngineConfig(device="cpu", max_batch=4, max_wait_ms=2.0, realtime_capacity=float("inf"), deadline_ms=1e4)
    engine = Engine(config)
    torch.manual_seed(3)
    engine.load_model("heads", model=registry.build("multitask_unet", TINY_UNET))
    server = EmbeddedServer(engine)
    address = server.start(timeout=120)
    yield address
    server.stop()


def send(sock: socket.socket, port: int, address: str) -> None:
    sock.sendto(OscMessageBuilder(address=address).build().dgram, ("127.0.0.1", port))


def receive(sock: socket.socket, address: str) -> OscMessage:
    while True:
        message = OscMessage(sock.recv(65536))
        if message.address == address:
            return message


def test_activity_reaches_the_stats_and_an_osc_subscriber(heads_server: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    bridge = Bridge(BridgeSettings(heads_server, "heads", RATE, 1, margin_samples=0))
    listener = OscListener(bridge.params, stats=bridge.report, activity_hz=float("inf"))  # every block
    port = listener.start()
    bridge.activity.add_listener(listener.send_activity)  # as `stemserve bridge --osc-port` wires it
    try:
        send(sock, port, "/stemserve/subscribe")
        assert receive(sock, "/stemserve/latency").params == [-1, 0]  # no session yet
        assert bridge.report().get("activity") is None  # nothing before the first block
        assert bridge.start(wait_s=30) is not None
        rng = np.random.default_rng(2)
        audio = (0.3 * rng.standard_normal((1, RATE // 2))).astype(np.float32)
        for start in range(0, audio.shape[1], 500):
            bridge.process(audio[:, start : start + 500])
        updates = bridge.activity.updates
        assert updates > 0
        deadline = time.monotonic() + 10
        while listener.activity_sent < updates:  # the OSC loop sends what the network thread queued
            assert time.monotonic() < deadline, "activity messages were not sent"
            time.sleep(0.01)

        messages = [receive(sock, "/stemserve/activity") for _ in range(updates)]
        report = bridge.report()
        assert list(report["activity"]) == SOURCES
        args = messages[-1].params  # f voicing, f f0, f activity per source (the model's order)
        assert args == [report["lead_voicing"], report["lead_f0_hz"], *report["activity"].values()]
        for message in messages:
            voicing, f0, *activity = message.params
            assert len(activity) == len(SOURCES) and all(0.0 <= a <= 1.0 for a in activity)
            assert 0.0 <= voicing <= 1.0 and (f0 == 0.0) == (voicing <= 0.5) and f0 >= 0.0
        assert report["activity_frame"] < bridge.position  # the block it describes has played

        send(sock, port, "/stemserve/stats")
        stats = json.loads(receive(sock, "/stemserve/stats").params[0])
        assert {k: stats[k] for k in ("activity", "lead_voicing", "lead_f0_hz")} == {
            k: report[k] for k in ("activity", "lead_voicing", "lead_f0_hz")
        }
    finally:
        bridge.stop()
        listener.stop()
        sock.close()


def test_activity_sends_are_rate_limited_and_the_latest_values_always_arrive() -> None:
    """Blocks can arrive ~200 times a second; a subscriber gets at most ``activity_hz`` sends a
    second, each with the latest block's values, and the last block's values are sent."""
    from stemserve.plugin_bridge.activity import Activity
    from stemserve.plugin_bridge.parameters import Parameters

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    listener = OscListener(Parameters("heads"), activity_hz=20.0)
    listener.start()
    try:
        listener.subscribe(sock.getsockname())
        start = time.monotonic()
        offered = 0
        while time.monotonic() - start < 1.0:  # one activity every 5 ms for a second
            offered += 1
            listener.send_activity(Activity(tuple(SOURCES), (offered / 1000, 0.0, 0.0, 0.0), 0.9, 220.0, offered))
            time.sleep(0.005)
        elapsed = time.monotonic() - start
        deadline = time.monotonic() + 5
        while listener.activity_offered < offered or listener.activity_due:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        sent = listener.activity_sent
        messages = [receive(sock, "/stemserve/activity") for _ in range(sent)]
    finally:
        listener.stop()
        sock.close()
    print(f"{offered} activities offered in {elapsed:.2f} s, {sent} sent")
    assert offered > 100
    assert 5 <= sent <= 20 * elapsed + 2  # the first goes at once, then one per 50 ms at most
    firsts = [m.params[2] for m in messages]
    assert firsts == sorted(firsts)  # each send is a newer block's
    assert messages[-1].params[:3] == pytest.approx([0.9, 220.0, offered / 1000], rel=1e-6)  # the last block's values
