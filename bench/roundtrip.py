"""Item 3: loopback round trip of one ``Stream`` block through a passthrough model.

A client sends one block, waits for its answer, sends the next (ping-pong, no
pipelining), over gRPC on loopback to a server in another process. The time is
what a plugin bridge waits for one block beyond the reported latency: framing,
gRPC, the engine's queueing and one (trivial) model step; at 48 kHz also the
resampling to the model's 44.1 kHz and back. Goal on CPU: p99 <= 2 ms for
512-sample blocks.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from stemserve.bench.report import Options, figure, goal_text, save_figure, summary_ms, table

ITEM = "roundtrip"
COLUMNS = ["rate", "block", "block_ms", "p50_ms", "p99_ms", "max_ms", "goal_p99_ms", "verdict"]
TITLE = "Stream block round trip (passthrough model, loopback gRPC)"
GOAL_P99_MS = 2.0
GOAL_BLOCK = 512
BLOCKS = (64, 128, 256, 512, 1024, 2048, 4096)
RATES = (44100, 48000)


def stream_round_trips(address: str, model: str, rate: int, frames: int, count: int, warmup: int = 20) -> list[float]:
    """Seconds per block for ``count`` ping-pong blocks of ``frames`` stereo frames."""
    import grpc

    from stemserve.protos import stemserve_pb2 as pb
    from stemserve.protos import stemserve_pb2_grpc as pb_grpc

    outbox: queue.Queue[Any] = queue.Queue()

    def requests() -> Iterator[Any]:
        yield pb.StreamRequest(open=pb.OpenSession(model=model, sample_rate=rate, channels=2, client_name="bench"))
        while (request := outbox.get()) is not None:
            yield request

    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((frames, 2))).astype("<f4").tobytes()
    seconds: list[float] = []
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.SeparationStub(channel)
        responses = stub.Stream(requests())
        try:
            first = next(responses)
            if first.WhichOneof("kind") != "opened":
                raise RuntimeError(f"expected `opened`, got {first}")
            for seq in range(warmup + count):
                block = pb.AudioBlock(seq=seq, position=seq * frames, frames=frames, pcm=audio)
                start = time.perf_counter()
                outbox.put(pb.StreamRequest(block=block))
                while next(responses).WhichOneof("kind") != "block":
                    pass  # status messages (e.g. OVERLOADED) do not end the wait
                if seq >= warmup:
                    seconds.append(time.perf_counter() - start)
        finally:
            outbox.put(None)
            responses.cancel()
    return seconds


def run(options: Options) -> dict[str, Any]:
    from stemserve.bench.servers import ServerProcess

    count = 20 if options.tiny else int(options.extra.get("blocks", 1000))
    blocks = (64, 512, 4096) if options.tiny else BLOCKS
    rows: list[dict[str, Any]] = []
    with ServerProcess(passthrough=True, threads=options.threads, device=options.device) as server:
        for rate in RATES:
            for frames in blocks:
                stats = summary_ms(stream_round_trips(server.address, "passthrough", rate, frames, count))
                goal = GOAL_P99_MS if frames == GOAL_BLOCK else None
                rows.append(
                    {
                        "rate": rate,
                        "block": frames,
                        "block_ms": frames / rate * 1e3,
                        "p50_ms": stats["p50"],
                        "p99_ms": stats["p99"],
                        "max_ms": stats["max"],
                        "goal_p99_ms": goal,
                        "verdict": goal_text(stats["p99"], goal),
                        "count": stats["count"],
                    }
                )
    print(TITLE)
    print(table(rows, COLUMNS))
    fig, axes = figure()
    ax = axes[0][0]
    for rate in RATES:
        mine = [r for r in rows if r["rate"] == rate]
        x = [r["block"] for r in mine]
        ax.plot(x, [r["p50_ms"] for r in mine], "o-", label=f"p50 {rate} Hz")
        ax.plot(x, [r["p99_ms"] for r in mine], "s--", label=f"p99 {rate} Hz")
    ax.axhline(GOAL_P99_MS, color="red", lw=0.8, label=f"goal p99 @ {GOAL_BLOCK}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("block (frames, stereo)")
    ax.set_ylabel("round trip (ms)")
    ax.legend(fontsize=7)
    save_figure(fig, options.out, ITEM, TITLE)
    return {"title": TITLE, "goal": {"block": GOAL_BLOCK, "p99_ms": GOAL_P99_MS}, "rows": rows}
