"""Item 4: live capacity: the most concurrent real-time stereo sessions a model sustains with zero late blocks.

A server runs in its own process (one model, CPU, admission control off so that
the search finds what the hardware sustains, not what the admission estimate
allows). This process opens ``N`` ``Stream`` sessions over loopback gRPC, each
sending 44.1 kHz stereo blocks of 256 or 1024 frames on a real-time clock
(sessions' phases spread over one block period) for ``duration`` seconds. A
trial passes when every block is answered and none is flagged late (the
server's deadline: answered within ``EngineConfig.deadline_ms`` of arrival).
``N`` doubles until a trial fails, then bisects. The admission limit (sessions
the server itself would accept at its default 80 % capacity) is reported beside.
The clients share the machine's cores with the server, as a DAW on the same
machine would.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stemserve.bench.report import Options, figure, on_worker_thread, save_figure, table
from stemserve.bench.subjects import DEFAULT_MODELS, Subject, subject

ITEM = "capacity"
COLUMNS = ["model", "weights", "block", "sessions", "admitted", "worst_reply_ms_at_best", "goal"]
TITLE = "Live capacity: concurrent real-time stereo sessions with zero late blocks"
RATE = 44100
BLOCKS = (256, 1024)
GPU_GOAL = {"conditioned_unet": 128}  # sessions on one H100
MAX_SESSIONS = 256
# The engine and transport alone: what the plumbing sustains before any model costs.
PASSTHROUGH = "passthrough"
# Admission off for the search: capacity this high is never reached.
NO_ADMISSION = {"realtime_capacity": 1e6}


@dataclass
class Trial:
    sessions: int
    blocks_sent: int = 0
    blocks_answered: int = 0
    late: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)
    worst_reply_ms: float = 0.0
    seconds: float = 0.0
    calls: list[Any] = field(default_factory=list, repr=False)

    def fail(self) -> None:
        """The trial has failed: stop every session now (a backlog could take minutes to drain)."""
        for call in self.calls:
            call.cancel()

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "calls"}

    @property
    def ok(self) -> bool:
        return not self.errors and not self.refused and self.late == 0 and self.blocks_answered == self.blocks_sent


async def _session(stub: Any, model: str, frames: int, start: float, count: int, trial: Trial) -> None:
    import grpc

    from stemserve.protos import stemserve_pb2 as pb

    period = frames / RATE
    pcm = (0.1 * np.random.default_rng(0).standard_normal((frames, 2))).astype("<f4").tobytes()
    sent: dict[int, float] = {}

    async def requests() -> AsyncIterator[Any]:
        yield pb.StreamRequest(open=pb.OpenSession(model=model, sample_rate=RATE, channels=2, client_name="bench"))
        for seq in range(count):
            delay = start + seq * period - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[seq] = time.perf_counter()
            trial.blocks_sent += 1
            yield pb.StreamRequest(block=pb.AudioBlock(seq=seq, position=seq * frames, frames=frames, pcm=pcm))

    call = stub.Stream(requests())
    trial.calls.append(call)
    try:
        async for reply in call:
            if reply.WhichOneof("kind") == "block":
                trial.blocks_answered += 1
                trial.late += int(reply.block.late)
                waited = (time.perf_counter() - sent.pop(reply.block.seq, time.perf_counter())) * 1e3
                trial.worst_reply_ms = max(trial.worst_reply_ms, waited)
                if reply.block.late:
                    trial.fail()
                    return
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            trial.refused += 1
            trial.fail()
        elif err.code() != grpc.StatusCode.CANCELLED:
            trial.errors.append(f"{err.code().name}: {err.details()}")
            trial.fail()
    except asyncio.CancelledError:
        pass  # another session failed the trial
    finally:
        call.cancel()


async def _trial(address: str, model: str, sessions: int, frames: int, duration: float) -> Trial:
    import grpc

    from stemserve.protos import stemserve_pb2_grpc as pb_grpc

    trial = Trial(sessions)
    began = time.perf_counter()
    count = max(1, int(duration * RATE / frames))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.SeparationStub(channel)
        start = time.perf_counter() + 0.5
        period = frames / RATE
        await asyncio.gather(
            *(_session(stub, model, frames, start + i * period / sessions, count, trial) for i in range(sessions))
        )
    trial.seconds = time.perf_counter() - began
    return trial


def sustained(address: str, model: str, frames: int, duration: float, limit: int) -> tuple[int, list[Trial]]:
    """Largest N that passes (doubling, then bisection), and every trial run."""
    trials: list[Trial] = []
    # One event loop for every trial: grpc.aio's poller outlives a loop closed under it.
    loop = asyncio.new_event_loop()

    def passes(n: int) -> bool:
        trial = loop.run_until_complete(_trial(address, model, n, frames, duration))
        trials.append(trial)
        return trial.ok

    try:
        return _search(passes, limit), trials
    finally:
        loop.run_until_complete(asyncio.sleep(0.1))  # let cancelled calls settle
        loop.close()


def _search(passes: Callable[[int], bool], limit: int) -> int:
    """Largest ``n <= limit`` with ``passes(n)``, assuming it fails from some ``n`` on (0 if 1 fails)."""

    good, bad = 0, None
    n = 1
    while n <= limit:
        if passes(n):
            good, n = n, n * 2
        else:
            bad = n
            break
    if bad is None:
        return good
    while bad - good > 1:
        mid = (good + bad) // 2
        if passes(mid):
            good = mid
        else:
            bad = mid
    return good


def admission_limit(s: Subject, options: Options) -> int:
    """Real-time sessions the engine admits at its default capacity (opened only, no audio)."""
    from stemserve.bench.passthrough import Passthrough
    from stemserve.server.engine.engine import Engine, EngineConfig
    from stemserve.server.engine.errors import AdmissionError

    # The admission estimate is the batch-1 time per item; max_batch 1 keeps the warm-up to that shape.
    engine = Engine(EngineConfig(device=options.device, max_batch=1))
    try:
        if s.name == PASSTHROUGH:
            engine.load_model(s.name, model=Passthrough())
        else:
            engine.load_model(s.name, s.path, config=s.config)
        count = 0
        while count < MAX_SESSIONS:
            try:
                engine.open_session(s.name, RATE, 2, realtime=True)
            except AdmissionError:
                break
            count += 1
        return count
    finally:
        engine.shutdown()


def run(options: Options) -> dict[str, Any]:
    import torch

    from stemserve.bench.servers import ServerProcess

    torch.set_num_threads(options.threads)
    duration = options.duration or (0.5 if options.tiny else 60.0)
    limit = 2 if options.tiny else MAX_SESSIONS
    names = options.models or (("conv_tasnet_causal",) if options.tiny else (PASSTHROUGH, *DEFAULT_MODELS))
    rows: list[dict[str, Any]] = []
    for name in names:
        passthrough = name == PASSTHROUGH
        s = Subject(name) if passthrough else subject(name, options.tiny)
        # warm-up (whose timing sets the admission estimate) off the main thread, as App.warm_up does
        admitted = on_worker_thread(functools.partial(admission_limit, s, options))
        served = [] if passthrough else [s]
        with ServerProcess(
            served, passthrough=passthrough, threads=options.threads, device=options.device, engine=NO_ADMISSION
        ) as server:
            for frames in BLOCKS:
                best, trials = sustained(server.address, name, frames, duration, limit)
                rows.append(
                    {
                        "model": name,
                        "weights": "-" if passthrough else s.weights,
                        "block": frames,
                        "sessions": best,
                        "admitted": admitted,
                        "duration_s": duration,
                        "goal": f">= {GPU_GOAL[name]} on one H100 (GPU)" if name in GPU_GOAL else "-",
                        "trials": [t.summary() for t in trials],
                        "worst_reply_ms_at_best": max(
                            (t.worst_reply_ms for t in trials if t.sessions == best and t.ok), default=float("nan")
                        ),
                    }
                )
    print(f"{TITLE} ({options.device}, {duration:g} s per trial)")
    print(table(rows, COLUMNS))
    fig, axes = figure()
    ax = axes[0][0]
    models = list(dict.fromkeys(r["model"] for r in rows))
    for k, frames in enumerate(BLOCKS):
        mine = {r["model"]: r["sessions"] for r in rows if r["block"] == frames}
        ax.bar([i + (k - 0.5) * 0.4 for i in range(len(models))], [mine.get(m, 0) for m in models], 0.4,
               label=f"{frames}-frame blocks")  # fmt: skip
    ax.set_xticks(range(len(models)), models, fontsize=7)
    ax.set_ylabel(f"sessions sustained ({duration:g} s, 0 late)")
    ax.legend(fontsize=7)
    save_figure(fig, options.out, ITEM, TITLE)
    return {"title": TITLE, "device": options.device, "duration_s": duration, "rows": rows}
