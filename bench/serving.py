"""Item 2: serving overhead: ``Separate`` over loopback gRPC vs calling the model directly.

Direct: :func:`models.apply.separate_signal` on the demo clip (at the model's
rate and channels) in this process, with the plan the server's file jobs follow
(:func:`models.apply.file_plan`). Served: the same clip through
:meth:`plugin_bridge.client.StemClient.separate_chunks` to a server in another
process (same weights, same torch threads), every stem returned. Runs are
interleaved (direct, served, direct, ...); the ratio is of medians.
Goal: served <= 1.05x direct.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from stemserve.bench.audio import demo
from stemserve.bench.report import Options, figure, goal_text, on_worker_thread, save_figure, table
from stemserve.bench.subjects import subject

ITEM = "serving"
COLUMNS = ["model", "weights", "audio_s", "direct_s", "served_s", "ratio", "goal_ratio", "verdict"]
TITLE = "Serving overhead: Separate over loopback gRPC vs the model called directly"
GOAL_RATIO = 1.05
DEFAULT_MODELS = ("conditioned_unet", "conv_tasnet_causal")


def run(options: Options) -> dict[str, Any]:
    import torch

    from stemserve.bench.servers import ServerProcess
    from stemserve.models.apply import file_plan, separate_signal
    from stemserve.plugin_bridge.client import CHUNK_FRAMES, StemClient, iter_chunks

    torch.set_num_threads(options.threads)
    seconds = 1.0 if options.tiny else float(options.extra.get("serving_seconds", 12.0))
    repeats = 1 if options.tiny else int(options.extra.get("repeats", 3))
    names = options.models or (("conv_tasnet_causal",) if options.tiny else DEFAULT_MODELS)
    subjects = [subject(n, options.tiny) for n in names]
    rows: list[dict[str, Any]] = []
    with (
        ServerProcess(subjects, threads=options.threads, device=options.device) as server,
        StemClient(server.address) as client,
    ):
        for s in subjects:
            model = s.build()
            d = model.describe()
            audio = demo(d.sample_rate, d.audio_channels, seconds)
            wav = torch.from_numpy(audio)

            def direct(model: Any = model, wav: torch.Tensor = wav, plan: Any = file_plan(d)) -> None:  # noqa: B008
                # on a fresh thread, as the served side runs on the engine's worker thread
                on_worker_thread(lambda: separate_signal(model, wav, plan=plan))

            def served(audio: Any = audio, rate: int = d.sample_rate, name: str = s.name) -> None:
                chunks = iter_chunks(audio, CHUNK_FRAMES)
                frames = sum(c.shape[-1] for _, c in client.separate_chunks(chunks, audio.shape[0], rate, name))
                if frames != audio.shape[1]:
                    raise RuntimeError(f"{name}: {frames} frames came back for {audio.shape[1]}")

            direct()
            served()  # warm both paths
            runs: dict[str, list[float]] = {"direct": [], "served": []}
            for _ in range(repeats):
                for label, fn in (("direct", direct), ("served", served)):
                    start = time.perf_counter()
                    fn()
                    runs[label].append(time.perf_counter() - start)
            t_direct, t_served = statistics.median(runs["direct"]), statistics.median(runs["served"])
            ratio = t_served / t_direct
            rows.append(
                {
                    "model": s.name,
                    "weights": s.weights,
                    "audio_s": seconds,
                    "direct_s": t_direct,
                    "served_s": t_served,
                    "ratio": ratio,
                    "goal_ratio": GOAL_RATIO,
                    "verdict": goal_text(ratio, GOAL_RATIO),
                    "runs": runs,
                }
            )
    print(TITLE)
    print(table(rows, COLUMNS))
    fig, axes = figure()
    ax = axes[0][0]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["direct_s"] for r in rows], 0.4, label="separate_signal (direct)")
    ax.bar([x + 0.2 for x in xs], [r["served_s"] for r in rows], 0.4, label="Separate over gRPC")
    for x, r in zip(xs, rows, strict=True):
        ax.annotate(f"{r['ratio']:.2f}x", (x + 0.2, r["served_s"]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), [r["model"] for r in rows], fontsize=8)
    ax.set_ylabel(f"seconds for {seconds:g} s of audio")
    ax.legend(fontsize=7)
    save_figure(fig, options.out, ITEM, TITLE)
    return {"title": TITLE, "goal": {"ratio": GOAL_RATIO}, "rows": rows}
