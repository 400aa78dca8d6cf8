"""File jobs do not pollute live latency figures; the batch-size histogram's buckets never move.

A real server (gRPC on a real port, Prometheus on another) serves one live
session (the bridge) and one file job (Separate). GetStats' ``block_ms_*`` and
``stemserve_block_ms{kind="live"}`` count the live session's blocks only; the
file job's are in ``file_block_ms_*`` and ``kind="file"``. ``stemserve_batch_size``
has a bucket for every batch size 1..max_batch from the first scrape on.
"""

from __future__ import annotations

import json
import re
import socket
import urllib.request

import grpc
import numpy as np

from stemserve.plugin_bridge.bridge import Bridge, BridgeSettings
from stemserve.plugin_bridge.client import StemClient
from stemserve.protos import stemserve_pb2 as pb
from stemserve.protos import stemserve_pb2_grpc as pb_grpc
from stemserve.server.app import ServerConfig
from stemserve.server.embedded import EmbeddedServer
from stemserve.server.engine import Engine, EngineConfig
from tests.server.engine.tiny_models import TinyCausalConfig, TinyCausalNet

RATE, CHANNELS, MAX_BATCH = 48000, 2, 6


def scrape(port: int) -> str:
    return str(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode())


def bucket_bounds(text: str, metric: str, label: str) -> list[str]:
    """The ``le`` bounds of ``metric``'s buckets carrying ``label``, in order."""
    lines = [line for line in text.splitlines() if line.startswith(f"{metric}_bucket{{") and label in line]
    return [m.group(1) for line in lines if (m := re.search(r'le="([^"]+)"', line))]


def count(text: str, metric: str, label: str) -> float:
    match = re.search(rf"{metric}_count\{{{label}\}} ([0-9.e+]+)", text)
    assert match, f"no {metric}_count{{{label}}} in the scrape"
    return float(match.group(1))


def test_live_and_file_blocks_are_counted_apart_and_batch_buckets_are_fixed() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]
    engine = Engine(EngineConfig(device="cpu", max_wait_ms=2.0, max_batch=MAX_BATCH, realtime_capacity=float("inf")))
    model = TinyCausalNet(TinyCausalConfig(sample_rate=RATE, channels=CHANNELS))
    engine.load_model("causal", model=model)
    config = ServerConfig(host="127.0.0.1", port=0, metrics_port=metrics_port)
    with EmbeddedServer(engine, config=config) as server:
        before = scrape(metrics_port)
        expected = [str(float(b)) for b in range(1, MAX_BATCH + 1)] + ["+Inf"]
        assert bucket_bounds(before, "stemserve_batch_size", 'model="causal"') == expected

        audio = (0.3 * np.random.default_rng(0).standard_normal((CHANNELS, RATE))).astype(np.float32)
        with Bridge(BridgeSettings(server.address, "causal", RATE, CHANNELS, margin_samples=0)) as bridge:
            assert bridge.start(wait_s=30) is not None
            for s in range(0, audio.shape[1], 512):
                bridge.process(audio[:, s : s + 512])
            live_blocks = bridge.stats()["blocks_received"]
        with StemClient(server.address) as client:
            client.separate_array(np.tile(audio, 4), RATE, "causal")

        with grpc.insecure_channel(server.address) as channel:
            stats = pb_grpc.SeparationStub(channel).GetStats(pb.GetStatsRequest())
        after = scrape(metrics_port)

    extra = json.loads(stats.extra_json)
    live_count, file_count = extra["block_ms"]["count"], extra["block_ms_file"]["count"]
    assert live_count == live_blocks  # every live block, and nothing else
    assert file_count > 0 and stats.blocks_out == live_count + file_count
    assert stats.block_ms_p99 > 0 and stats.file_block_ms_p99 > 0 and stats.file_block_ms_max > 0
    assert count(after, "stemserve_block_ms", 'kind="live"') == live_count
    assert count(after, "stemserve_block_ms", 'kind="file"') == file_count
    # The buckets are the same after batches ran as before any did.
    assert bucket_bounds(after, "stemserve_batch_size", 'model="causal"') == expected
    print(
        f"live p50/p99 {stats.block_ms_p50:.2f}/{stats.block_ms_p99:.2f} ms ({live_count:.0f} blocks); "
        f"file p50/p99 {stats.file_block_ms_p50:.2f}/{stats.file_block_ms_p99:.2f} ms ({file_count:.0f} blocks)"
    )
