"""``stemserve checkpoint``: show a checkpoint, or copy it with inference settings changed.

::

    stemserve checkpoint models/weights/conditioned_unet.safetensors
    stemserve checkpoint unet.safetensors --config spatial_seconds=10 --out unet.spatial.safetensors

Only settings that leave every weight's shape alone can change (``spatial_seconds``,
``joint_power``, ``dropout`` ...); the weights and the training metadata are
copied as they are, and the metadata records what changed.
"""

from __future__ import annotations

import argparse
import json
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a stemserve checkpoint (.pt or .safetensors)")
    parser.add_argument(
        "--config", action="append", default=[], metavar="KEY=VALUE",
        help="setting to change (JSON value); repeatable; needs --out",
    )  # fmt: skip
    parser.add_argument("--out", default=None, help="where to write the changed copy (.pt or .safetensors)")


def run(args: argparse.Namespace) -> int:
    from stemserve.models.checkpoint import CheckpointError, read_checkpoint, reconfigure, save_checkpoint
    from stemserve.models.train import TrainError, parse_overrides

    try:
        content = read_checkpoint(args.checkpoint)
        if not args.config:
            if args.out:
                raise CheckpointError("--out needs at least one --config KEY=VALUE to change")
            shown = {k: content.get(k) for k in ("architecture", "config", "description", "metadata")}
            print(json.dumps(shown, indent=2))
            return 0
        if not args.out:
            raise CheckpointError("--config needs --out: the checkpoint itself is never overwritten")
        model, changed = reconfigure(content, parse_overrides(args.config))
    except (CheckpointError, TrainError) as err:
        print(f"stemserve checkpoint: {err}", file=sys.stderr)
        return 2
    metadata = dict(content.get("metadata") or {})
    history = json.loads(metadata.get("reconfigured", "[]"))  # every change made since training
    metadata["reconfigured"] = json.dumps([*history, changed])
    save_checkpoint(model, args.out, metadata)
    for key, (old, new) in changed.items():
        print(f"{key}: {old} -> {new}")
    print(f"wrote {args.out}")
    return 0
