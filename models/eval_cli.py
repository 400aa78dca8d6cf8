"""``stemserve eval``: score a checkpoint on a data split against the oracle IRM and the mixture.

::

    stemserve eval --model unet.pt --data data/music --split test --out report.json --figure report.png

Prints the per-stem medians (and, for a multitask model, its heads' pitch,
voicing and activity scores); ``--out`` writes the full per-track report as
JSON and ``--figure`` a PNG (spectrograms of one track, SDR bars). See
:mod:`models.evaluate` for how SDR / SI-SDR are computed.
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint (ours, or an official Open-Unmix / Demucs file)")
    parser.add_argument("--data", required=True, help="data folder (MUSDB or wsj0-2mix layout)")
    parser.add_argument("--split", default="test", help="split to score (default test; tt for speech works too)")
    parser.add_argument("--out", default=None, help="write the JSON report here")
    parser.add_argument("--figure", default=None, help="write a PNG figure here")
    parser.add_argument("--target", default=None, help="comma-separated stems to score (default: all the model's)")
    parser.add_argument(
        "--chunk-seconds",
        type=float,
        default=None,
        help="SDR chunk (default 1 s for music, whole utterance for speech)",
    )
    parser.add_argument("--tracks", type=int, default=None, help="score only the first N tracks")
    parser.add_argument(
        "--plan",
        choices=("file", "live"),
        default="file",
        help="score what a file job computes (default) or what a live session streams",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from stemserve.models.checkpoint import CheckpointError, load_model
    from stemserve.models.evaluate import EvaluationError, evaluate, write_figure

    try:
        model = load_model(args.model)
        targets = [t.strip() for t in args.target.split(",") if t.strip()] if args.target else None
        report, first = evaluate(
            model,
            args.data,
            split=args.split,
            targets=targets,
            chunk_seconds=args.chunk_seconds,
            max_tracks=args.tracks,
            plan=args.plan,
            progress=not args.no_progress,
            keep_first=args.figure is not None,
        )
    except (CheckpointError, EvaluationError) as err:
        print(f"stemserve eval: {err}", file=sys.stderr)
        return 2
    report["checkpoint"] = str(args.model)
    report["plan"] = args.plan
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    if args.figure and first is not None:
        write_figure(report, first, args.figure)

    def fmt(value: float | None) -> str:
        return "   n/a" if value is None else f"{value:6.2f}"

    def pct(value: float | None) -> str:
        return "  n/a" if value is None else f"{100 * value:4.0f}%"

    share = report["irm_share"]
    print(f"{report['model']} on {report['split']} ({len(report['tracks'])} tracks), median dB")
    print(
        f"{'stem':<10} {'SDR':>6} {'SI-SDR':>7} | {'IRM SDR':>7} {'SI-SDR':>7} | {'mix SDR':>7} {'SI-SDR':>7}"
        " | share of IRM gain"
    )
    for stem in report["sources"]:
        row = [report["summary"][m][stem] for m in ("model", "irm", "mixture")]
        print(
            f"{stem:<10} {fmt(row[0]['sdr'])} {fmt(row[0]['si_sdr']):>7} | {fmt(row[1]['sdr']):>7} "
            f"{fmt(row[1]['si_sdr']):>7} | {fmt(row[2]['sdr']):>7} {fmt(row[2]['si_sdr']):>7} | {pct(share[stem])}"
        )
    print(f"{'mean':<10} {'':>51}| {pct(share['mean'])}")
    heads = report.get("heads")
    if heads:
        pitch = pct(heads.get("raw_pitch_accuracy"))
        recall, alarm = pct(heads.get("voicing_recall")), pct(heads.get("voicing_false_alarm"))
        print(
            f"heads over {heads['frames']:.0f} frames: lead raw pitch accuracy (50 cents) {pitch}, "
            f"voicing recall {recall}, false alarm {alarm}"
        )
        f1 = ", ".join(
            f"{k.split('/', 1)[1]} {pct(v).strip()}" for k, v in heads.items() if k.startswith("activity_f1/")
        )
        print(f"activity F1 per stem: {f1}")
    return 0
