"""Stream through the real gRPC server: output == offline, concurrency, disconnects, parameters."""

from __future__ import annotations

import time

import grpc
import numpy as np

from stemserve.protos import stemserve_pb2 as pb
from stemserve.protos import stemserve_pb2_grpc as pb_grpc
from tests.server.conftest import TIMEOUT, TOLERANCE, StreamCall, block_sizes, noise, offline, unpcm


def wait_for(condition, timeout: float = TIMEOUT) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_stream_equals_offline_shifted_by_latency(stub: pb_grpc.SeparationStub, checkpoints: dict[str, str]) -> None:
    signal = noise(0.6)
    call = StreamCall(stub)
    opened = call.open("multi", return_stems=True)
    latency = opened.latency.total
    assert latency == opened.latency.model + opened.latency.buffering + opened.latency.resampler > 0
    assert list(opened.sources) == ["vocals", "drums", "bass", "other"]
    sizes = block_sizes(signal.shape[1])
    for n, start in zip(sizes, np.cumsum([0, *sizes[:-1]]), strict=True):
        call.send_block(signal[:, start : start + n])
    blocks = [call.receive_block() for _ in sizes]
    call.close()

    assert [b.seq for b in blocks] == list(range(len(sizes)))
    assert [b.frames for b in blocks] == sizes
    stems = np.concatenate([np.stack([unpcm(s.pcm, 1) for s in b.stems]) for b in blocks], axis=-1)
    ref = offline(checkpoints["multi"], signal)
    assert np.all(stems[..., :latency] == 0)
    assert np.abs(stems[..., latency:] - ref[..., : signal.shape[1] - latency]).max() <= TOLERANCE
    mixed = np.concatenate([call.output(b) for b in blocks], axis=1)
    assert np.abs(mixed - stems.sum(axis=0)).max() <= TOLERANCE


def test_two_clients_stream_concurrently(server, checkpoints: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    signals = [noise(0.5, seed=1), noise(0.5, seed=2)]
    with grpc.insecure_channel(server.address) as one, grpc.insecure_channel(server.address) as two:
        calls = [StreamCall(pb_grpc.SeparationStub(one)), StreamCall(pb_grpc.SeparationStub(two))]
        latencies = [c.open("multi", parameters=pb.Parameters(target="drums")).latency.total for c in calls]
        latency = latencies[0]
        assert latencies == [latency, latency]
        sizes = [block_sizes(s.shape[1], seed=k, largest=700) for k, s in enumerate(signals)]
        starts = [np.cumsum([0, *sz[:-1]]) for sz in sizes]
        for i in range(max(map(len, sizes))):  # interleaved: both sessions in flight at once
            for call, signal, sz, st in zip(calls, signals, sizes, starts, strict=True):
                if i < len(sz):
                    call.send_block(signal[:, st[i] : st[i] + sz[i]])
        outputs = [
            np.concatenate([c.output(c.receive_block()) for _ in sz], axis=1)
            for c, sz in zip(calls, sizes, strict=True)
        ]
        for call in calls:
            call.close()
    for signal, out in zip(signals, outputs, strict=True):
        ref = offline(checkpoints["multi"], signal)[1]  # drums
        assert out.shape == signal.shape
        assert np.abs(out[:, latency:] - ref[:, : signal.shape[1] - latency]).max() <= TOLERANCE


def test_client_that_disconnects_mid_stream_frees_its_session(stub: pb_grpc.SeparationStub) -> None:
    call = StreamCall(stub)
    call.open("multi")
    call.send_block(noise(0.1))
    call.receive_block()
    assert stub.GetStats(pb.GetStatsRequest()).sessions == 1
    call.cancel()  # the client vanishes mid-stream, without a half-close
    wait_for(lambda: stub.GetStats(pb.GetStatsRequest()).sessions == 0)


def test_flush_returns_the_tail_and_reset_clears_state(
    stub: pb_grpc.SeparationStub, checkpoints: dict[str, str]
) -> None:
    signal = noise(0.3)
    call = StreamCall(stub)
    latency = call.open("multi", parameters=pb.Parameters(target="vocals")).latency.total
    head = call.stream(signal, [signal.shape[1]])
    call.send(control=pb.Control(kind=pb.Control.FLUSH))
    tail = call.output(call.receive_block())
    assert tail.shape[1] == latency
    assert call.receive().status.code == pb.SessionStatus.FLUSHED
    ref = offline(checkpoints["multi"], signal)[0]
    assert np.abs(np.concatenate([head, tail], axis=1)[:, latency:] - ref).max() <= TOLERANCE
    # After the flush (which resets) the same input gives the same output again.
    call.send(control=pb.Control(kind=pb.Control.RESET))
    assert call.receive().status.code == pb.SessionStatus.RESET_DONE
    again = call.stream(signal, [signal.shape[1]])
    assert np.abs(again - head).max() <= TOLERANCE
    call.close()


def dry_after(call: StreamCall, signal: np.ndarray, latency: int) -> None:
    """With mix 0 the output is the input delayed by L (after the one ramp block)."""
    call.stream(signal[:, :256], [256])
    out = call.stream(signal[:, 256:], [signal.shape[1] - 256])
    delayed = np.concatenate([np.zeros((1, latency), np.float32), signal], axis=1)[:, 256 : signal.shape[1]]
    assert np.abs(out - delayed).max() <= TOLERANCE


def test_set_parameters_rpc_changes_the_mix_mid_stream(stub: pb_grpc.SeparationStub) -> None:
    signal = noise(0.5)
    call = StreamCall(stub)
    opened = call.open("multi")
    call.stream(signal, [4000])  # wet audio already flowing
    stub.SetParameters(pb.SetParametersRequest(session_id=opened.session_id, parameters=pb.Parameters(mix=0.0)))
    dry_after(call, signal[:, 4000:], opened.latency.total)
    assert opened.latency.total == call.opened.latency.total  # L never moves
    call.close()


def test_in_band_parameters_land_at_the_next_block(stub: pb_grpc.SeparationStub) -> None:
    signal = noise(0.5)
    call = StreamCall(stub)
    latency = call.open("multi").latency.total
    call.stream(signal, [4000])
    call.send(parameters=pb.Parameters(mix=0.0))
    dry_after(call, signal[:, 4000:], latency)
    assert pb.SessionStatus.PARAMETERS_APPLIED in [s.code for s in call.statuses]
    call.close()


def test_target_change_selects_another_stem(stub: pb_grpc.SeparationStub, checkpoints: dict[str, str]) -> None:
    signal = noise(0.6)
    call = StreamCall(stub)
    latency = call.open("conditioned", parameters=pb.Parameters(target="vocals")).latency.total
    assert list(call.opened.sources) == ["vocals", "drums", "bass", "other"]
    vocals = offline(checkpoints["conditioned"], signal, target=0)[0]
    bass = offline(checkpoints["conditioned"], signal, target=2)[0]
    first = call.stream(signal[:, :4000], [4000])
    assert np.abs(first[:, latency:] - vocals[:, : 4000 - latency]).max() <= TOLERANCE
    call.send(parameters=pb.Parameters(target="bass"))
    call.stream(signal[:, 4000:4512], [512])  # ramped from vocals to bass over this block
    rest = call.stream(signal[:, 4512:], [signal.shape[1] - 4512])
    assert np.abs(rest - bass[:, 4512 - latency : signal.shape[1] - latency]).max() <= TOLERANCE
    call.close()
