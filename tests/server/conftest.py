"""A real stemserve gRPC server on an ephemeral loopback port, serving tiny checkpoints.

The models are registry architectures with tiny configs, written with
``models.checkpoint.save_checkpoint`` and loaded by path exactly as
``stemserve serve --model NAME=PATH`` does, so a subprocess server can load
them too. They cost milliseconds per window on 2 CPU cores.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from stemserve.models import registry
from stemserve.models.apply import file_plan, separate_signal
from stemserve.models.checkpoint import load_model, save_checkpoint
from stemserve.protos import stemserve_pb2 as pb
from stemserve.protos import stemserve_pb2_grpc as pb_grpc
from stemserve.server.app import ServerConfig
from stemserve.server.embedded import EmbeddedServer
from stemserve.server.engine import Engine, EngineConfig

# The same tiny U-Net config the engine's preset tests use: mono, 16 kHz.
TINY_UNET: dict[str, Any] = {
    "sample_rate": 16000,
    "audio_channels": 1,
    "n_fft": 64,
    "hop_length": 16,
    "bins": 32,
    "window_frames": 8,
    "channels": (4, 8),
}
RATE = 16000
TIMEOUT = 30.0
TOLERANCE = 1e-4


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """``{"multi": path, "conditioned": path}``: four-stem and target-conditioned tiny U-Nets."""
    folder = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for name, preset in (("multi", "multi_unet"), ("conditioned", "conditioned_unet")):
        torch.manual_seed(1)
        model = registry.build(preset, TINY_UNET)
        out[name] = str(save_checkpoint(model, folder / f"{name}.pt"))
    return out


def make_engine() -> Engine:
    # Admission and lateness measure this (shared, busy) machine's speed: off for tests not about them.
    config = EngineConfig(device="cpu", max_batch=4, max_wait_ms=2.0, realtime_capacity=float("inf"), deadline_ms=1e4)
    return Engine(config)


@contextmanager
def running_server(models: dict[str, str | None], **config: Any) -> Iterator[EmbeddedServer]:
    """An in-process server (its own event-loop thread), warm, on 127.0.0.1:<ephemeral>."""
    server = EmbeddedServer(make_engine(), models, ServerConfig(host="127.0.0.1", port=0, **config))
    server.start(timeout=120)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(checkpoints: dict[str, str]) -> Iterator[EmbeddedServer]:
    with running_server(dict(checkpoints)) as s:
        yield s


@pytest.fixture
def stub(server: EmbeddedServer) -> Iterator[pb_grpc.SeparationStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.SeparationStub(channel)


def offline(checkpoint: str, signal: np.ndarray, target: int | None = None, file: bool = False) -> np.ndarray:
    """``(S, C, T)`` offline separation of ``signal (C, T)`` by the checkpoint's model: the live
    plan's reference (what a Stream session reproduces), or with ``file`` the file plan's (Separate)."""
    model = load_model(checkpoint).eval()
    plan = file_plan(model.describe()) if file else None
    with torch.inference_mode():
        return separate_signal(model, torch.from_numpy(signal), target=target, plan=plan).numpy()


def noise(seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal((channels, int(seconds * RATE)))).astype(np.float32)


def pcm(audio: np.ndarray) -> bytes:
    return np.ascontiguousarray(audio.T, dtype="<f4").tobytes()


def unpcm(data: bytes, channels: int) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4").reshape(-1, channels).T.copy()


@dataclass
class StreamCall:
    """A client's ``Stream`` call driven one message at a time (sync gRPC, as the bridge does).

    ``send_*`` queue requests; ``receive*`` read answers in order. ``blocks`` and
    ``statuses`` collect what :meth:`receive_block` skipped past.
    """

    stub: pb_grpc.SeparationStub
    metadata: tuple[tuple[str, str], ...] = ()
    channels: int = 1
    _out: queue.Queue[pb.StreamRequest | None] = field(default_factory=queue.Queue)
    statuses: list[pb.SessionStatus] = field(default_factory=list)
    seq: int = 0
    position: int = 0

    def __post_init__(self) -> None:
        self.call = self.stub.Stream(iter(self._out.get, None), metadata=self.metadata)

    def open(self, model: str, rate: int = RATE, channels: int = 1, **kw: Any) -> pb.SessionOpened:
        self.channels = channels
        self._out.put(pb.StreamRequest(open=pb.OpenSession(model=model, sample_rate=rate, channels=channels, **kw)))
        reply = next(self.call)
        assert reply.WhichOneof("kind") == "opened", reply
        self.opened = reply.opened
        return reply.opened

    def send_block(self, audio: np.ndarray) -> None:
        frames = audio.shape[1]
        block = pb.AudioBlock(seq=self.seq, position=self.position, frames=frames, pcm=pcm(audio))
        self._out.put(pb.StreamRequest(block=block))
        self.seq += 1
        self.position += frames

    def send(self, **request: Any) -> None:
        self._out.put(pb.StreamRequest(**request))

    def receive(self) -> pb.StreamResponse:
        return next(self.call)

    def receive_block(self) -> pb.StemBlock:
        while True:
            reply = next(self.call)
            if reply.WhichOneof("kind") == "block":
                return reply.block
            self.statuses.append(reply.status)

    def stream(self, signal: np.ndarray, sizes: list[int]) -> np.ndarray:
        """Send ``signal`` in blocks of ``sizes`` (all in flight), return the mixed output."""
        start = 0
        for n in sizes:
            self.send_block(signal[:, start : start + n])
            start += n
        return np.concatenate([self.output(self.receive_block()) for _ in sizes], axis=1)

    def output(self, block: pb.StemBlock) -> np.ndarray:
        return unpcm(block.pcm, self.channels)

    def close(self) -> None:
        """Half-close; the server answers what was sent, then ends the call."""
        self._out.put(None)

    def cancel(self) -> None:
        self.call.cancel()


def block_sizes(total: int, seed: int = 0, largest: int = 1024) -> list[int]:
    rng = np.random.default_rng(seed)
    sizes, done = [], 0
    while done < total:
        n = min(int(rng.integers(1, largest + 1)), total - done)
        sizes.append(n)
        done += n
    return sizes
