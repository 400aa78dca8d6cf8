"""Bad input through the real gRPC server: each gets its status code, and a healthy
session streaming at the same time is not affected (its output still equals offline)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stemserve.protos import stemserve_pb2 as pb
from stemserve.protos import stemserve_pb2_grpc as pb_grpc
from stemserve.server.app import ServerConfig, check_exposure
from tests.server.conftest import RATE, TOLERANCE, StreamCall, noise, offline, pcm, running_server


class Healthy:
    """A session that streams a block before and after each bad call, then checks its output."""

    def __init__(self, stub: pb_grpc.SeparationStub, checkpoint: str, metadata: tuple = ()) -> None:
        self.signal = noise(0.5, seed=7)
        self.checkpoint = checkpoint
        self.call = StreamCall(stub, metadata)
        self.latency = self.call.open("multi").latency.total
        self.outputs: list[np.ndarray] = []
        self.sent = 0

    def step(self, frames: int = 1000) -> None:
        block = self.signal[:, self.sent : self.sent + frames]
        self.sent += block.shape[1]
        self.outputs.append(self.call.stream(block, [block.shape[1]]))

    def check(self) -> None:
        self.step(self.signal.shape[1] - self.sent)
        out = np.concatenate(self.outputs, axis=1)
        ref = offline(self.checkpoint, self.signal).sum(axis=0)
        assert np.abs(out[:, self.latency :] - ref[:, : -self.latency]).max() <= TOLERANCE
        assert not self.call.statuses, "the healthy session saw no status"
        self.call.close()


@pytest.fixture
def healthy(stub: pb_grpc.SeparationStub, checkpoints: dict[str, str]) -> Iterator[Healthy]:
    session = Healthy(stub, checkpoints["multi"])
    session.step()
    yield session
    session.check()


def stream_error(stub: pb_grpc.SeparationStub, *requests: pb.StreamRequest, metadata: tuple = ()) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        for _ in stub.Stream(iter(requests), metadata=metadata):
            pass
    return caught.value


def opening(model: str = "multi", rate: int = RATE, channels: int = 1, **kw: object) -> pb.StreamRequest:
    return pb.StreamRequest(open=pb.OpenSession(model=model, sample_rate=rate, channels=channels, **kw))  # type: ignore[arg-type]


def block(audio_bytes: bytes, frames: int = 0) -> pb.StreamRequest:
    return pb.StreamRequest(block=pb.AudioBlock(seq=0, position=0, frames=frames, pcm=audio_bytes))


BAD_STREAMS: dict[str, tuple[Callable[[], list[pb.StreamRequest]], grpc.StatusCode]] = {
    "unknown model": (lambda: [opening("kazoo-net")], grpc.StatusCode.NOT_FOUND),
    "unknown target": (
        lambda: [opening(parameters=pb.Parameters(target="kazoo"))],
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "unsupported sample rate": (lambda: [opening(rate=1000)], grpc.StatusCode.INVALID_ARGUMENT),
    "wrong channel count at open": (lambda: [opening(channels=3)], grpc.StatusCode.INVALID_ARGUMENT),
    "block not a whole number of frames": (
        lambda: [opening(), block(b"\0" * 6)],
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "block frames disagree with its pcm (other channel count)": (
        lambda: [opening(), block(pcm(noise(0.01, channels=2)), frames=160)],
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "empty block": (lambda: [opening(), block(b"")], grpc.StatusCode.INVALID_ARGUMENT),
    "mix out of range": (
        lambda: [opening(), pb.StreamRequest(parameters=pb.Parameters(mix=1.5))],
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "audio before open": (lambda: [block(pcm(noise(0.01)))], grpc.StatusCode.INVALID_ARGUMENT),
}


@pytest.mark.parametrize("case", list(BAD_STREAMS))
def test_bad_stream_gets_its_status(case: str, stub: pb_grpc.SeparationStub, healthy: Healthy) -> None:
    make, code = BAD_STREAMS[case]
    assert stream_error(stub, *make()).code() == code
    healthy.step()


def test_nan_and_inf_samples_are_zeroed_and_counted(stub: pb_grpc.SeparationStub, healthy: Healthy) -> None:
    audio = noise(0.05)
    audio[0, [3, 50, 51]] = [np.nan, np.inf, -np.inf]
    clean = audio.copy()
    clean[0, [3, 50, 51]] = 0.0
    bad, good = StreamCall(stub), StreamCall(stub)
    bad.open("multi")
    good.open("multi")
    out = bad.stream(audio, [audio.shape[1]])
    assert [(s.code, s.count) for s in bad.statuses] == [(pb.SessionStatus.INVALID_SAMPLES, 3)]
    assert np.all(np.isfinite(out))
    assert np.array_equal(out, good.stream(clean, [clean.shape[1]])), "NaN/Inf are treated as zeros"
    assert stub.GetStats(pb.GetStatsRequest()).invalid_samples == 3
    healthy.step()
    bad.close()
    good.close()


def test_unknown_session_is_not_found(stub: pb_grpc.SeparationStub, healthy: Healthy) -> None:
    request = pb.SetParametersRequest(session_id="no-such-session", parameters=pb.Parameters(mix=0.5))
    with pytest.raises(grpc.RpcError) as caught:
        stub.SetParameters(request)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    healthy.step()


def test_unknown_stem_in_separate_is_invalid(stub: pb_grpc.SeparationStub, healthy: Healthy) -> None:
    start = pb.SeparateStart(model="multi", sample_rate=RATE, channels=1, stems=["kazoo"])
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Separate(iter([pb.SeparateRequest(start=start)])))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    healthy.step()


def test_oversized_message_is_resource_exhausted(checkpoints: dict[str, str]) -> None:
    limit = 256 * 1024
    with (
        running_server({"multi": checkpoints["multi"]}, max_message_bytes=limit) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.SeparationStub(channel)
        session = Healthy(stub, checkpoints["multi"])
        session.step()
        huge = np.zeros((1, limit // 4 + 1024), np.float32)  # just over the limit
        error = stream_error(stub, opening(), block(pcm(huge)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        session.check()


def test_token_required_when_set(checkpoints: dict[str, str]) -> None:
    with (
        running_server({"multi": checkpoints["multi"]}, token="s3cret") as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.SeparationStub(channel)
        good = (("authorization", "Bearer s3cret"),)
        session = Healthy(stub, checkpoints["multi"], good)
        session.step()
        for metadata in [(), (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)]:
            with pytest.raises(grpc.RpcError) as caught:
                stub.ListModels(pb.ListModelsRequest(), metadata=metadata)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert stream_error(stub, opening(), metadata=metadata).code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.ListModels(pb.ListModelsRequest(), metadata=good).models
        # Health is exempt: load balancers probe without credentials.
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        session.check()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "stemserve.example.org"])
def test_non_loopback_bind_needs_a_token(host: str) -> None:
    with pytest.raises(ValueError, match="without --token"):
        check_exposure(ServerConfig(host=host))
    check_exposure(ServerConfig(host=host, token="s3cret"))
    check_exposure(ServerConfig(host="127.0.0.1"))
    check_exposure(ServerConfig(host="::1"))
