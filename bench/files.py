"""Item ``files``: seconds per second of audio of a file job, ours next to the peer packages.

* The bundled default (conditioned U-Net, all four stems) through
  :meth:`Engine.separate_file <server.engine.engine.Engine.separate_file>` (the path
  ``stemserve separate`` and ``Separate`` take) with the throughput plan and with the
  live plan (``EngineConfig(file_plan="live")``, the plan file jobs used before).
  Goal: the throughput plan <= ``GOAL_REALTIME`` x real time.
* Demucs v2 in the published layout with random weights built by the ``demucs``
  package: ours through ``Engine.separate_file`` vs ``demucs.apply.apply_model``
  with the ``demucs`` command's defaults (shifts 1, split, overlap 0.25) on the same
  weights. Goal: ours <= 1.0x the peer.
* Open-Unmix: ``openunmix.Separator`` imports torchaudio, which has no build here; the
  row is measured only where it imports (else listed under ``not_measured``).

Audio: the demo clip (looped to ``audio_s``) at the model's rate and channels.
Runs are interleaved (ours, peer, ours, ...) and the median is reported; the
machine's load average is recorded with the result (others share the CPU).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from stemserve.bench.audio import demo
from stemserve.bench.report import Options, figure, goal_text, load_average, save_figure, table

ITEM = "files"
COLUMNS = ["model", "side", "audio_s", "seconds", "s_per_audio_s", "ratio", "goal", "verdict"]
TITLE = "File jobs: seconds per second of audio, ours vs the peer packages"
GOAL_REALTIME = 0.25
GOAL_RATIO = 1.0


def timed(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Each function once to warm up, then ``repeats`` interleaved timed runs."""
    for fn in fns.values():
        fn()
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - start)
    return runs


def file_job(engine: Any, name: str, audio: Any, rate: int) -> Callable[[], None]:
    def run() -> None:
        frames = sum(chunk.shape[-1] for _, chunk in engine.separate_file(name, audio, rate))
        if frames != audio.shape[1]:
            raise RuntimeError(f"{name}: {frames} frames came back for {audio.shape[1]}")

    return run


def row(model: str, side: str, seconds: float, runs: list[float], **extra: Any) -> dict[str, Any]:
    t = statistics.median(runs)
    return {"model": model, "side": side, "audio_s": seconds, "seconds": t, "s_per_audio_s": t / seconds, **extra}


def bundled_rows(options: Options, seconds: float, repeats: int) -> list[dict[str, Any]]:
    from stemserve.bench.subjects import subject
    from stemserve.server.engine import Engine, EngineConfig

    s = subject("conditioned_unet", options.tiny)
    fns: dict[str, Callable[[], None]] = {}
    engines = []
    for plan in ("throughput", "live"):
        engine = Engine(EngineConfig(device=options.device, file_plan=plan, realtime_capacity=float("inf")))
        engines.append(engine)
        model = s.build()
        d = model.describe()
        engine.load_model(s.name, model=model)
        fns[plan] = file_job(engine, s.name, demo(d.sample_rate, d.audio_channels, seconds), d.sample_rate)
    try:
        runs = timed(fns, repeats)
    finally:
        for engine in engines:
            engine.shutdown()
    out = []
    for plan in ("throughput", "live"):
        r = row(f"{s.name} ({s.weights})", f"ours, {plan} plan", seconds, runs[plan])
        r["ratio"] = r["seconds"] / statistics.median(runs["live"])
        r["goal"] = f"<= {GOAL_REALTIME}x real time" if plan == "throughput" else "(before)"
        r["verdict"] = goal_text(r["s_per_audio_s"], GOAL_REALTIME) if plan == "throughput" else ""
        out.append(r)
    return out


def demucs_rows(options: Options, seconds: float, repeats: int) -> list[dict[str, Any]]:
    import torch
    from demucs.apply import apply_model
    from stemserve.bench.peers import build_pair
    from stemserve.server.engine import Engine, EngineConfig

    ours, peer = build_pair("demucs", options.tiny)
    d = ours.describe()
    audio = demo(d.sample_rate, d.audio_channels, seconds)
    engine = Engine(EngineConfig(device=options.device, realtime_capacity=float("inf")))
    engine.load_model("demucs_v2", model=ours)
    wav = torch.from_numpy(audio)[None]

    def package() -> None:
        with torch.inference_mode():
            apply_model(peer, wav, shifts=1, split=True, overlap=0.25, progress=False)

    try:
        runs = timed({"ours": file_job(engine, "demucs_v2", audio, d.sample_rate), "peer": package}, repeats)
    finally:
        engine.shutdown()
    ratio = statistics.median(runs["ours"]) / statistics.median(runs["peer"])
    name = "demucs v2 (published layout, random weights)" if not options.tiny else "demucs v2 (tiny)"
    return [
        row(
            name,
            "ours (Engine.separate_file)",
            seconds,
            runs["ours"],
            ratio=ratio,
            goal=f"<= {GOAL_RATIO}x peer",
            verdict=goal_text(ratio, GOAL_RATIO),
        ),
        row(name, "demucs.apply.apply_model", seconds, runs["peer"], ratio=1.0, goal="", verdict=""),
    ]


def run(options: Options) -> dict[str, Any]:
    seconds = 1.0 if options.tiny else float(options.extra.get("serving_seconds", 12.0))
    repeats = 1 if options.tiny else int(options.extra.get("repeats", 3))
    load_before = load_average()
    rows = bundled_rows(options, seconds, repeats)
    missing: dict[str, str] = {}
    try:
        rows += demucs_rows(options, seconds, repeats)
    except ImportError as err:
        missing["demucs"] = f"the demucs package does not import: {err}"
    missing["open_unmix"] = "openunmix.Separator imports torchaudio, which has no build here"
    print(TITLE)
    print(table(rows, COLUMNS))
    for name, why in missing.items():
        print(f"not measured: {name}: {why}")
    fig, axes = figure()
    ax = axes[0][0]
    ax.barh([f"{r['model']}\n{r['side']}" for r in rows], [r["s_per_audio_s"] for r in rows])
    ax.axvline(GOAL_REALTIME, color="k", linestyle=":", label=f"{GOAL_REALTIME}x real time")
    ax.set_xlabel("seconds per second of audio")
    ax.tick_params(axis="y", labelsize=6)
    ax.legend(fontsize=7)
    save_figure(fig, options.out, ITEM, TITLE)
    return {
        "title": TITLE,
        "goal": {"realtime": GOAL_REALTIME, "ratio": GOAL_RATIO},
        "rows": rows,
        "not_measured": missing,
        "load_average": {"before": load_before, "after": load_average()},
    }
