"""Separate answers fit any client's default receive limit, whatever chunking the client sends.

gRPC clients refuse messages over 4 MiB unless told otherwise (grpc-js, grpc-java, Go, Python);
the server splits its StemChunks to at most ``REPLY_LIMIT_BYTES`` (1 MiB). The client here is
the plain generated stub on a channel with gRPC's default limits, as a client written from the
``.proto`` alone would be.
"""

from __future__ import annotations

import grpc
import numpy as np

from stemserve.protos import stemserve_pb2 as pb
from stemserve.protos import stemserve_pb2_grpc as pb_grpc
from stemserve.server.embedded import EmbeddedServer
from stemserve.server.grpc_service import REPLY_LIMIT_BYTES
from tests.server.conftest import RATE, TIMEOUT, TOLERANCE, noise, offline, pcm, unpcm

DEFAULT_CLIENT_LIMIT = 4 * 1024 * 1024  # gRPC's default max receive message length


def test_one_large_pcm_message_comes_back_in_chunks_under_1_mib(
    server: EmbeddedServer, checkpoints: dict[str, str]
) -> None:
    audio = noise(20.0, seed=11)  # 320 000 frames: its 4 stems are 5.1 MB, over the client's 4 MiB
    start = pb.SeparateStart(model="multi", sample_rate=RATE, channels=1, total_frames=audio.shape[1])
    requests = [pb.SeparateRequest(start=start), pb.SeparateRequest(pcm=pcm(audio))]  # all audio in one message
    with grpc.insecure_channel(server.address) as channel:  # default options: 4 MiB receive limit
        replies = list(pb_grpc.SeparationStub(channel).Separate(iter(requests), timeout=4 * TIMEOUT))
    sizes = [reply.ByteSize() for reply in replies]
    assert max(sizes) <= REPLY_LIMIT_BYTES < DEFAULT_CLIENT_LIMIT
    chunks = [reply.chunk for reply in replies if reply.WhichOneof("kind") == "chunk"]
    assert len(chunks) >= 5  # 5.1 MB of stems cannot fit in fewer 1 MiB messages
    assert [c.position for c in chunks] == list(np.cumsum([0] + [c.frames for c in chunks[:-1]]))
    stems = {
        name: np.concatenate([unpcm(next(s.pcm for s in c.stems if s.name == name), 1) for c in chunks], axis=-1)
        for name in replies[0].started.stems
    }
    ref = offline(checkpoints["multi"], audio, file=True)
    for index, name in enumerate(replies[0].started.stems):
        assert stems[name].shape == audio.shape
        assert np.abs(stems[name] - ref[index]).max() <= TOLERANCE
    assert replies[-1].progress.frames_done == audio.shape[1]
