"""Item 5: batching gain: windows per second of the window batcher at batch 1, 2, 4, ... 64.

The engine's :class:`~server.engine.batcher.WindowBatcher` runs work items
(spectrogram windows, causal steps, waveform chunks) of many sessions in one
forward pass. Here it gets ``b`` items of the model's item shape per pass; the
gain is windows/s at batch ``b`` over windows/s unbatched (one item per pass).
Goal on a GPU: >= 4x at batch 16. On a CPU a forward pass already keeps the
cores busy, so little gain is expected there.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from stemserve.bench.report import Options, figure, goal_text, on_worker_thread, save_figure, table
from stemserve.bench.subjects import subject

ITEM = "batching"
COLUMNS = ["model", "item_shape", "batch", "ms_per_pass", "windows_per_s", "gain", "goal_gain", "verdict"]
TITLE = "Window batcher: windows/s vs batch size"
GOAL_GAIN = 4.0  # on a GPU, at batch 16
GOAL_BATCH = 16
DEFAULT_MODELS = ("conditioned_unet", "conv_tasnet_causal")


def windows_per_second(name: str, options: Options, sizes: tuple[int, ...], min_seconds: float) -> list[dict[str, Any]]:
    import torch

    from stemserve.server.engine.batcher import WindowBatcher, WorkItem
    from stemserve.server.engine.engine import EngineConfig, default_plan, make_streamer
    from stemserve.server.engine.pool import LoadedModel, resolve_device
    from stemserve.server.engine.work import ItemSpec, StateSlot

    s = subject(name, options.tiny)
    device = resolve_device(options.device)
    model = LoadedModel(name, s.build(), device)
    d = model.description
    streamer = make_streamer(d, default_plan(d, EngineConfig(), device))  # the engine's plan on this device
    shape = streamer.item_shape
    batcher = WindowBatcher(model, shape, max(sizes), None, lambda item: True)
    gen = torch.Generator().manual_seed(0)
    owners = [object() for _ in range(max(sizes))]  # one session per item: a shared batch
    # A causal model with per-layer caches steps with each session's caches, as in the engine.
    items = [
        WorkItem(
            owner,
            0,
            ItemSpec(
                torch.rand(shape, generator=gen), k % len(d.sources), k, StateSlot() if streamer.stateful else None
            ),
            True,
        )
        for k, owner in enumerate(owners)
    ]
    rows: list[dict[str, Any]] = []
    for size in sizes:
        batcher.run(items[:size])  # first pass of a shape: allocations, autotuning
        passes, start = 0, time.perf_counter()
        while passes < 2 or time.perf_counter() - start < min_seconds:
            outcome = batcher.run(items[:size])
            passes += 1
            errors = [o for o in outcome.outputs if isinstance(o, BaseException)]
            if errors:
                raise RuntimeError(f"{name} at batch {size}: {errors[0]}")
        seconds = time.perf_counter() - start
        rows.append(
            {
                "model": name,
                "weights": s.weights,
                "item_shape": "x".join(map(str, shape)),
                "batch": size,
                "ms_per_pass": seconds / passes * 1e3,
                "windows_per_s": size * passes / seconds,
            }
        )
    base = float(rows[0]["windows_per_s"])
    on_gpu = options.device.startswith("cuda")
    for row in rows:
        gain = float(row["windows_per_s"]) / base
        goal = GOAL_GAIN if row["batch"] == GOAL_BATCH else None
        row.update(gain=gain, goal_gain=goal, verdict=goal_text(gain, goal, "higher") if on_gpu else "")
    return rows


def run(options: Options) -> dict[str, Any]:
    import torch

    torch.set_num_threads(options.threads)
    sizes = (1, 2, 4) if options.tiny else (1, 2, 4, 8, 16, 32, 64)
    min_seconds = 0.05 if options.tiny else float(options.extra.get("min_seconds", 2.0))
    rows: list[dict[str, Any]] = []
    for name in options.models or DEFAULT_MODELS:
        # on a worker thread, as the engine's scheduler runs the batcher
        rows += on_worker_thread(functools.partial(windows_per_second, name, options, sizes, min_seconds))
    print(f"{TITLE} ({options.device}; goal >= {GOAL_GAIN}x at batch {GOAL_BATCH} applies on a GPU)")
    print(table(rows, COLUMNS))
    fig, axes = figure()
    ax = axes[0][0]
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        ax.plot([r["batch"] for r in mine], [r["gain"] for r in mine], "o-", label=f"{name} ({options.device})")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.plot([GOAL_BATCH], [GOAL_GAIN], "r*", ms=10, label=f"goal on GPU: {GOAL_GAIN}x at {GOAL_BATCH}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch (windows per forward pass)")
    ax.set_ylabel("windows/s relative to batch 1")
    ax.legend(fontsize=7)
    save_figure(fig, options.out, ITEM, TITLE)
    return {"title": TITLE, "device": options.device, "goal": {"batch": GOAL_BATCH, "gain": GOAL_GAIN}, "rows": rows}
