"""``stemserve bench ITEM``: run one benchmark (or ``all``), print its table, write JSON and PNG.

Items (issue 7): ``peers``, ``serving``, ``roundtrip``, ``capacity``,
``batching``, ``latency_budget``, ``growth``. ``--tiny`` runs each in seconds
with tiny model configs (what CI checks); without it the full settings run
(minutes to an hour on a small CPU; see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

ITEMS: dict[str, str] = {
    "peers": "ours vs the openunmix / demucs packages: time and peak memory per second of audio",
    "serving": "Separate over loopback gRPC vs the model called directly",
    "roundtrip": "Stream block round trip through a passthrough model (p50 / p99 / max)",
    "capacity": "concurrent real-time stereo sessions sustained with zero late blocks",
    "batching": "window batcher windows/s at batch 1..64",
    "latency_budget": "algorithmic + compute + transport latency per model",
    "growth": "Separate time and peak memory vs file length",
    "files": "file jobs: s per s of audio, throughput vs live plan, ours vs demucs and openunmix (same weights)",
    "soak": "samples lost / duplicated / misaligned under killed clients and server restarts; bad input",
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("item", choices=[*ITEMS, "all"], help="the benchmark to run (all: every one, in order)")
    parser.add_argument("--tiny", action="store_true", help="seconds-long run with tiny configs (CI)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for JSON and PNG")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for ours, peers and the server")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (GPU items where one exists)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per live-capacity trial (default 60)")
    parser.add_argument("--max-length", type=float, default=None, help="longest file for growth, s (default 600)")
    parser.add_argument("--model", action="append", default=[], help="model to measure (repeatable; item default)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats where an item repeats")
    parser.add_argument("--audio-seconds", type=float, default=None, help="clip length for serving (default 12)")


def run(args: argparse.Namespace) -> int:
    from stemserve.bench.report import Options

    extra: dict[str, float] = {}
    if args.repeats is not None:
        extra["repeats"] = args.repeats
    if args.audio_seconds is not None:
        extra["serving_seconds"] = args.audio_seconds
    options = Options(
        tiny=args.tiny,
        out=args.out,
        threads=args.threads,
        device=args.device,
        duration=args.duration,
        max_length=args.max_length,
        models=tuple(args.model),
        extra=extra,
    )
    items = list(ITEMS) if args.item == "all" else [args.item]
    failed = []
    for item in items:
        code = run_item(item, options)
        if code:
            failed.append(item)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def run_item(item: str, options: object) -> int:
    """Run one item; write ``<out>/<item>.json`` (the PNG is written by the item). 0 on success."""
    import torch

    from stemserve.bench.report import Options, write_json

    assert isinstance(options, Options)
    module = importlib.import_module(f"stemserve.bench.{item}")
    torch.set_num_threads(options.threads)
    start = time.perf_counter()
    try:
        result = module.run(options)
    except Exception:
        log.exception("benchmark %s failed", item)
        return 1
    result["wall_s"] = time.perf_counter() - start
    path = write_json(options.out, item, result, options)
    print(f"{item}: {path} and {path.with_suffix('.png')} ({result['wall_s']:.1f} s)\n")
    return 0
