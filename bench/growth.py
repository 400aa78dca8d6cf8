"""Item 7: growth: time and peak server memory of ``Separate`` vs file length.

A server in its own process; the client streams noise made on the fly (never
the whole file in memory) and drops the stems as they arrive, so what grows is
the server's. Peak memory is the server process's resident high-water mark
above its level before the call (the kernel's VmHWM, reset per call). Goal:
linear time (seconds per second of audio flat) and bounded memory (the peak
does not grow with length).
"""

from __future__ import annotations

import math
import time
from typing import Any

from stemserve.bench.audio import noise_chunks
from stemserve.bench.report import Options, PeakMemory, figure, save_figure, table
from stemserve.bench.subjects import Subject, subject

ITEM = "growth"
COLUMNS = ["model", "length_s", "time_s", "s_per_audio_s", "peak_mib"]
TITLE = "Separate: time and peak server memory vs file length"
FULL_LENGTHS = (1.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# The passthrough model isolates the Separate plumbing (gRPC, session, chunking);
# a real model adds its compute per second of audio.
PASSTHROUGH = "passthrough"
DEFAULT_MODELS = (PASSTHROUGH, "conditioned_unet")
GOAL_MEMORY_GROWTH = 1.25  # peak at the longest file <= 1.25x the peak at 10 s


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares ``y = a + b x``: ``(a, b, r^2)``."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    b = sxy / sxx if sxx else math.nan
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return a, b, 1 - ss_res / ss_tot if ss_tot else math.nan


def measure(name: str, options: Options, lengths: tuple[float, ...]) -> tuple[str, str, list[dict[str, Any]]]:
    """``(weights, stems, rows)``: one Separate per length through a fresh server."""
    from stemserve.bench.servers import ServerProcess
    from stemserve.plugin_bridge.client import CHUNK_FRAMES, StemClient

    passthrough = name == PASSTHROUGH
    s = Subject(name) if passthrough else subject(name, options.tiny)
    served = [] if passthrough else [s]
    rows: list[dict[str, Any]] = []
    with (
        ServerProcess(served, passthrough=passthrough, threads=options.threads, device=options.device) as server,
        StemClient(server.address) as client,
    ):
        model = next(m for m in client.list_models() if m.name == name)
        rate, channels = model.sample_rate, model.channels
        stems = [model.sources[0]] if model.conditioned else []  # one pass per window either way
        warm = noise_chunks(rate, channels, 1.0, CHUNK_FRAMES)
        for _ in client.separate_chunks(warm, channels, rate, name, stems):
            pass
        for seconds in lengths:
            probe = PeakMemory(server.pid).start()
            start = time.perf_counter()
            frames = 0
            chunks = noise_chunks(rate, channels, seconds, CHUNK_FRAMES)
            for _, chunk in client.separate_chunks(chunks, channels, rate, name, stems, int(seconds * rate)):
                frames += chunk.shape[-1]
            elapsed = time.perf_counter() - start
            grown = probe.stop()
            if frames != int(seconds * rate):
                raise RuntimeError(f"{frames} frames came back for {int(seconds * rate)}")
            rows.append(
                {
                    "model": name,
                    "length_s": seconds,
                    "time_s": elapsed,
                    "s_per_audio_s": elapsed / seconds,
                    "peak_mib": grown / 2**20,
                    "memory_method": probe.method,
                }
            )
    weights = "-" if passthrough else s.weights
    return weights, ",".join(stems) or "all", rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Straight-line fit of time vs length; peak memory at the longest file vs at 10 s."""
    a, b, r2 = fit_line([r["length_s"] for r in rows], [r["time_s"] for r in rows])
    reference = next((r for r in rows if r["length_s"] >= 10.0), rows[0])
    growth = rows[-1]["peak_mib"] / reference["peak_mib"] if reference["peak_mib"] else math.nan
    return {
        "intercept_s": a,
        "fit_s_per_audio_s": b,
        "r2": r2,
        "longest_s": rows[-1]["length_s"],
        "memory_reference_s": reference["length_s"],
        "memory_growth": growth,
        "goal_memory_growth": GOAL_MEMORY_GROWTH,
        "linear_time": r2 >= 0.99 if len(rows) > 2 else None,
        "bounded_memory": growth <= GOAL_MEMORY_GROWTH,
    }


def run(options: Options) -> dict[str, Any]:
    names = options.models or ((PASSTHROUGH, "conditioned_unet") if options.tiny else DEFAULT_MODELS)
    longest = options.max_length or (2.0 if options.tiny else FULL_LENGTHS[-1])
    rows: list[dict[str, Any]] = []
    summaries: dict[str, Any] = {}
    for name in names:
        # The passthrough model costs nothing: it always runs the full range of lengths.
        top = FULL_LENGTHS[-1] if name == PASSTHROUGH and not options.tiny else longest
        lengths = (0.5, 1.0, 2.0) if options.tiny else tuple(x for x in FULL_LENGTHS if x <= top)
        weights, stems, measured = measure(name, options, lengths)
        rows += measured
        summaries[name] = {"weights": weights, "stems": stems, **summarise(measured)}
    print(TITLE)
    print(table(rows, COLUMNS))
    for name, v in summaries.items():
        print(
            f"{name} ({v['weights']}, stems {v['stems']}): time = {v['intercept_s']:.3f} s + "
            f"{v['fit_s_per_audio_s']:.4f} s x length (r^2 {v['r2']:.4f}); peak memory at {v['longest_s']:g} s is "
            f"{v['memory_growth']:.2f}x the peak at {v['memory_reference_s']:g} s (goal <= {GOAL_MEMORY_GROWTH}x)"
        )
    fig, axes = figure(1, 2, width=4.2)
    for name in summaries:
        mine = [r for r in rows if r["model"] == name]
        xs = [r["length_s"] for r in mine]
        axes[0][0].loglog(xs, [r["time_s"] for r in mine], "o-", label=name)
        b = summaries[name]["fit_s_per_audio_s"]
        axes[0][0].loglog(xs, [max(b * x, 1e-6) for x in xs], "k:", lw=0.8)
        axes[0][1].semilogx(xs, [r["peak_mib"] for r in mine], "o-", label=name)
    axes[0][0].set_xlabel("file length (s)")
    axes[0][0].set_ylabel("Separate wall time (s); dotted: linear fit")
    axes[0][0].legend(fontsize=7)
    axes[0][1].set_ylim(bottom=0)
    axes[0][1].set_xlabel("file length (s)")
    axes[0][1].set_ylabel("server peak RSS above idle (MiB)")
    axes[0][1].legend(fontsize=7)
    save_figure(fig, options.out, ITEM, TITLE)
    return {"title": TITLE, "rows": rows, "summary": summaries}
