"""A stand-in server that speaks only the proto contract (no engine, no torch).

Its one "model" returns ``gain * input`` delayed by ``latency`` frames, so a
test can tell stems (scaled) from the bridge's dry fallback (unscaled), and it
can hold back chosen blocks to make them arrive late.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np

from stemserve.plugin_bridge.client import decode, encode
from stemserve.protos import stemserve_pb2 as pb
from stemserve.protos import stemserve_pb2_grpc as pb_grpc


class FakeSeparation(pb_grpc.SeparationServicer):
    def __init__(self, latency: int = 100, gain: float = 0.5, delays: dict[int, float] | None = None) -> None:
        self.latency = latency
        self.gain = gain
        self.delays = dict(delays or {})  # seq -> seconds to hold that block's answer
        self.parameters: list[pb.Parameters] = []
        self.sessions = 0
        self.lock = threading.Lock()

    def _info(self) -> pb.ModelInfo:
        lat = pb.Latency(model=self.latency, total=self.latency, sample_rate=48000)
        return pb.ModelInfo(name="fake", sources=["a", "b"], sample_rate=48000, channels=2, latency=lat)

    def ListModels(self, request, context):  # noqa: N802
        return pb.ListModelsResponse(models=[self._info()])

    def Stream(self, request_iterator: Iterator[pb.StreamRequest], context) -> Iterator[pb.StreamResponse]:  # noqa: N802
        first = next(request_iterator)
        channels = first.open.channels
        with self.lock:
            self.sessions += 1
        info = self._info()
        yield pb.StreamResponse(
            opened=pb.SessionOpened(session_id="fake-1", latency=info.latency, model=info, sources=["a", "b"])
        )
        history = np.zeros((channels, self.latency), np.float32)
        for request in request_iterator:
            kind = request.WhichOneof("kind")
            if kind == "parameters":
                self.parameters.append(request.parameters)
                continue
            if kind != "block":
                continue
            block = request.block
            audio = decode(block.pcm, channels)
            joined = np.concatenate([history, audio], axis=1)
            out, history = joined[:, : audio.shape[1]], joined[:, audio.shape[1] :]
            time.sleep(self.delays.get(block.seq, 0.0))
            yield pb.StreamResponse(
                block=pb.StemBlock(
                    seq=block.seq, position=block.position, frames=audio.shape[1], pcm=encode(self.gain * out)
                )
            )


def start_fake(servicer: FakeSeparation) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_SeparationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"
