"""OSC control of live sessions: the real `oscsend` (liblo-tools) and python-osc, replies,
notifications, and garbage that is counted without disturbing anything."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from stemserve.protos import stemserve_pb2 as pb
from stemserve.protos import stemserve_pb2_grpc as pb_grpc
from stemserve.server.embedded import EmbeddedServer
from stemserve.server.osc_control import OscRouter
from tests.server.conftest import TIMEOUT, TOLERANCE, StreamCall, noise, running_server


@pytest.fixture(scope="module")
def osc_server(checkpoints: dict[str, str]) -> Iterator[EmbeddedServer]:
    with running_server(dict(checkpoints), osc_port=0) as server:
        yield server


@pytest.fixture
def stub(osc_server: EmbeddedServer) -> Iterator[pb_grpc.SeparationStub]:
    with grpc.insecure_channel(osc_server.address) as channel:
        yield pb_grpc.SeparationStub(channel)


class OscPeer:
    """A UDP socket that sends OSC to the server and reads its replies (python-osc encoding)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(TIMEOUT)

    def send(self, address: str, *args: Any) -> None:
        builder = OscMessageBuilder(address)
        for arg in args:
            builder.add_arg(arg)
        self.sock.sendto(builder.build().dgram, ("127.0.0.1", self.port))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, ("127.0.0.1", self.port))

    def receive(self) -> tuple[str, list[Any]]:
        message = OscMessage(self.sock.recv(65536))
        return message.address, list(message.params)

    def ask(self, address: str, *args: Any) -> tuple[str, list[Any]]:
        self.send(address, *args)
        return self.receive()


def osc_stats(stub: pb_grpc.SeparationStub) -> dict[str, int]:
    return dict(json.loads(stub.GetStats(pb.GetStatsRequest()).extra_json)["osc"])


def wait_applied(stub: pb_grpc.SeparationStub, count: int) -> None:
    """Wait until the OSC endpoint has applied ``count`` messages in all."""
    deadline = time.monotonic() + TIMEOUT
    while osc_stats(stub)["applied"] < count:
        assert time.monotonic() < deadline, osc_stats(stub)
        time.sleep(0.02)


def expect_dry(call: StreamCall, signal: np.ndarray, latency: int) -> None:
    """Mix 0: after the ramp block, the output is the input delayed by L."""
    call.stream(signal[:, :256], [256])
    out = call.stream(signal[:, 256:], [signal.shape[1] - 256])
    delayed = np.concatenate([np.zeros((1, latency), np.float32), signal], axis=1)[:, 256 : signal.shape[1]]
    assert np.abs(out - delayed).max() <= TOLERANCE


def test_oscsend_changes_the_mix_mid_stream(osc_server: EmbeddedServer, stub: pb_grpc.SeparationStub) -> None:
    signal = noise(0.5)
    call = StreamCall(stub)
    opened = call.open("multi")
    call.stream(signal[:, :4000], [4000])
    applied = osc_stats(stub)["applied"]
    address = f"/stemserve/{opened.session_id}/mix"
    subprocess.run(["oscsend", "127.0.0.1", str(osc_server.app.osc_port), address, "f", "0.0"], check=True, timeout=30)
    wait_applied(stub, applied + 1)
    expect_dry(call, signal[:, 4000:], opened.latency.total)
    call.close()


def test_python_osc_parameters_replies_and_notifications(
    osc_server: EmbeddedServer, stub: pb_grpc.SeparationStub
) -> None:
    peer = OscPeer(osc_server.app.osc_port or 0)
    call = StreamCall(stub)
    opened = call.open("multi", return_stems=True)
    session = opened.session_id
    assert peer.ask(f"/stemserve/{session}/subscribe") == (f"/stemserve/{session}/latency", [opened.latency.total])
    assert peer.ask(f"/stemserve/{session}/latency") == (f"/stemserve/{session}/latency", [opened.latency.total])
    # A normalised choice picks a source: floor(0.5 * 4) = 2 -> bass.
    assert peer.ask(f"/stemserve/{session}/target", 0.5) == (f"/stemserve/{session}/ok", ["target"])
    assert peer.ask(f"/stemserve/{session}/gain/bass", 0.25) == (f"/stemserve/{session}/ok", ["gain"])
    assert peer.ask(f"/stemserve/{session}/model", "multi") == (f"/stemserve/{session}/ok", ["model"])
    address, args = peer.ask(f"/stemserve/{session}/status")
    assert (address, args[:3]) == (f"/stemserve/{session}/status", ["multi", opened.latency.total, "bass"])
    call.stream(noise(0.1), [800])  # the ramp block
    signal = noise(0.2, seed=3)
    call.send_block(signal)
    out = call.receive_block()
    stems = {s.name: np.frombuffer(s.pcm, "<f4") for s in out.stems}
    assert np.abs(np.frombuffer(out.pcm, "<f4") - 0.25 * stems["bass"]).max() <= TOLERANCE
    # SetParameters from elsewhere is announced to subscribers.
    stub.SetParameters(pb.SetParametersRequest(session_id=session, parameters=pb.Parameters(mix=0.5)))
    assert peer.receive() == (f"/stemserve/{session}/status", ["PARAMETERS_APPLIED", "SetParameters"])
    call.close()
    assert peer.receive() == (f"/stemserve/{session}/closed", [])


def test_a_model_change_is_relayed_to_the_sessions_stream_client(
    osc_server: EmbeddedServer, stub: pb_grpc.SeparationStub
) -> None:
    """A session's latency is fixed, so the server does not switch it: it asks the Stream's client
    (the bridge re-opens on that model when its latency fits)."""
    peer = OscPeer(osc_server.app.osc_port or 0)
    call = StreamCall(stub)
    session = call.open("multi").session_id
    assert peer.ask(f"/stemserve/{session}/model", "conditioned") == (f"/stemserve/{session}/ok", ["model"])
    call.send_block(noise(0.05))
    call.receive_block()
    requested = [s for s in call.statuses if s.code == pb.SessionStatus.MODEL_REQUESTED]
    assert [s.message for s in requested] == ["conditioned"]
    assert osc_server.app.engine.session_info(session).model == "multi"  # the session itself is unchanged
    call.close()


@pytest.mark.parametrize(
    ("address", "args", "reason"),
    [
        ("/stemserve/no-such-session/mix", [0.5], "no open session"),
        ("/stemserve/{session}/mix", [1.5], "must be in [0, 1]"),
        ("/stemserve/{session}/mix", ["loud"], "must be a number"),
        ("/stemserve/{session}/target", ["kazoo"], "unknown target"),
        ("/stemserve/{session}/gain/kazoo", [0.5], "unknown stem"),
        ("/stemserve/{session}/model", ["kazoo-net"], "unknown model"),
        ("/stemserve/{session}/tempo", [120.0], "unknown address"),
        ("/some/other/app", [1], "unknown address"),
    ],
)
def test_refused_messages_are_answered_with_a_reason(
    address: str, args: list[Any], reason: str, osc_server: EmbeddedServer, stub: pb_grpc.SeparationStub
) -> None:
    peer = OscPeer(osc_server.app.osc_port or 0)
    call = StreamCall(stub)
    session = call.open("multi").session_id
    reply, reply_args = peer.ask(address.format(session=session), *args)
    assert reply == "/stemserve/error"
    assert reason in reply_args[0]
    call.close()


def test_garbage_udp_is_counted_and_the_server_still_answers(
    osc_server: EmbeddedServer, stub: pb_grpc.SeparationStub
) -> None:
    peer = OscPeer(osc_server.app.osc_port or 0)
    call = StreamCall(stub)
    opened = call.open("multi")
    before = osc_stats(stub)
    garbage = [b"\x00\x01garbage", b"", bytes(range(256)), b"#bundle\x00\xff"]
    for data in garbage:
        peer.send_raw(data)
    assert peer.ask(f"/stemserve/{opened.session_id}/latency")[1] == [opened.latency.total]
    after = osc_stats(stub)
    assert after["malformed"] - before["malformed"] == len(garbage)
    assert len(call.stream(noise(0.05), [800])[0]) == 800  # streaming unaffected
    assert stub.ListModels(pb.ListModelsRequest()).models
    call.close()


def test_senders_outside_the_allow_list_are_dropped(osc_server: EmbeddedServer) -> None:
    router = OscRouter(osc_server.app.engine, allow=("127.0.0.1",))
    message = OscMessageBuilder("/stemserve/x/mix")
    message.add_arg(0.5)
    assert router.handle_datagram(message.build().dgram, ("192.168.1.9", 9000)) == []
    assert router.counters.not_allowed == 1
    assert router.counters.messages == 0
