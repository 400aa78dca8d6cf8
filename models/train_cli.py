"""``stemserve train``: train a registry preset on rendered data.

::

    stemserve train --model unet --data data/music --out unet.pt --steps 20000 --batch 16
    stemserve train --model conv_tasnet --data data/speech --out tasnet.pt --config num_repeats=2
    stemserve train --nproc 2 --model unet --data data/music --out unet.pt --device cpu   # DDP, 2 processes
    torchrun --nproc_per_node 4 -m stemserve.server.cli train --model demucs --data data/music --out demucs.pt

The best checkpoint (lowest validation loss) is written to ``--out``; the state
to resume from (``--resume``) to ``<out>.train-state.pt``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stemserve.models.train import TrainOptions, TrainResult

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="registry preset (see `stemserve models`)")
    parser.add_argument("--data", required=True, help="data folder (MUSDB layout for music, wsj0-2mix for speech)")
    parser.add_argument("--out", required=True, help="checkpoint to write (.pt or .safetensors)")
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps in all (default 1000)")
    parser.add_argument("--batch", type=int, default=8, help="examples per step and process (default 8)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument(
        "--lr-schedule", choices=("constant", "cosine"), default="constant",
        help="constant, or cosine decay from --lr to --lr-min over --steps (default constant)",
    )  # fmt: skip
    parser.add_argument("--lr-min", type=float, default=0.0, help="last learning rate of the cosine schedule")
    parser.add_argument(
        "--init", default=None, metavar="CKPT", help="start from these weights (same model and config), fresh optimiser"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, crops and augmentation")
    parser.add_argument("--segment", type=float, default=None, help="seconds per example (default: per model)")
    parser.add_argument("--valid-every", type=int, default=100, help="validate (and checkpoint) every N steps")
    parser.add_argument("--valid-items", type=int, default=None, help="cap on validation examples (default: all)")
    parser.add_argument(
        "--stop-after", type=int, default=None, metavar="N",
        help="stop after step N, as if the run were cut off there (the schedule still spans --steps)",
    )  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue from <out>.train-state.pt if it exists")
    parser.add_argument(
        "--config", action="append", default=[], metavar="KEY=VALUE", help="config override (JSON value), repeatable"
    )
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    parser.add_argument("--clip", type=float, default=5.0, help="gradient norm clip (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--no-augment", action="store_true", help="train on plain random crops")
    parser.add_argument(
        "--repitch", type=float, default=0.0, metavar="PROB",
        help="chance that a training stem is resampled up to 2 semitones up or down, tempo with it (default 0)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--nproc", type=int, default=1,
        help="DDP processes on this machine, as torchrun --standalone --nproc_per_node N (gloo on CPU, "
        "NCCL on GPU: one process per GPU); --batch is per process (default 1: no DDP)",
    )  # fmt: skip


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    """The :class:`TrainOptions` of parsed ``stemserve train`` arguments (TrainError when invalid)."""
    from stemserve.models.train import TrainOptions, parse_overrides

    return TrainOptions(
        model=args.model,
        data=args.data,
        out=args.out,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        lr_min=args.lr_min,
        init=args.init,
        stop_after=args.stop_after,
        device=args.device,
        seed=args.seed,
        segment=args.segment,
        valid_every=args.valid_every,
        resume=args.resume,
        config=parse_overrides(args.config),
        workers=args.workers,
        clip=args.clip,
        threads=args.threads,
        valid_items=args.valid_items,
        augment=not args.no_augment,
        repitch=args.repitch,
        progress=not args.no_progress,
        command=" ".join(["stemserve", *sys.argv[1:]]),
    )


def launch(options: TrainOptions, nproc: int) -> TrainResult:
    """Run :func:`train` in ``nproc`` DDP processes (torchrun's standalone launcher); rank 0's result."""
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from stemserve.models.train import TrainError

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port on loopback, as torchrun --standalone
        max_restarts=0,
        start_method="spawn",
    )
    try:
        results = elastic_launch(config, _train_rank)(options)
    except ChildFailedError as err:  # the rank's own error was logged by the rank
        raise TrainError(f"a DDP process failed: {err.get_first_failure()[1].message}") from err
    return results[0]


def _train_rank(options: TrainOptions) -> TrainResult:
    from stemserve.models.train import train

    return train(options)


def run(args: argparse.Namespace) -> int:
    import json

    from stemserve.models.train import TrainError, train

    if args.nproc < 1:
        print("stemserve train: --nproc must be >= 1", file=sys.stderr)
        return 2
    try:
        options = options_from_args(args)
        launcher = args.nproc > 1 and "WORLD_SIZE" not in os.environ  # not when torchrun started us
        result = launch(options, args.nproc) if launcher else train(options)
    except TrainError as err:
        print(f"stemserve train: {err}", file=sys.stderr)
        return 2
    if not result.main:
        return 0
    summary = {
        "checkpoint": str(result.checkpoint),
        "step": result.step,
        "best_step": result.best_step,
        "best_val_loss": result.best_val_loss,
        "wall_seconds": round(result.wall_seconds, 2),
    }
    print(json.dumps(summary))
    return 0
