"""``torchrun ... -m tests.deploy.ddp_worker DIGESTS -- <stemserve train arguments>``.

Trains exactly as ``stemserve train`` does and, after every optimiser step, appends
``{"step", "sha256"}`` of this rank's parameters to ``DIGESTS/rank<R>.jsonl``, so the
test can compare the replicas bit for bit. (Buffers such as BatchNorm's running
statistics are left out: each rank updates its own in the forward pass, and DDP
overwrites them with rank 0's at the start of the next one.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from torch import nn

from stemserve.models import train_cli
from stemserve.models.train import train


def parameters_digest(model: nn.Module) -> str:
    """sha256 of every parameter of ``model``, in order, as CPU bytes."""
    digest = hashlib.sha256()
    for name, tensor in model.named_parameters():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(argv: list[str]) -> int:
    digests, train_argv = Path(argv[0]), argv[1:]
    parser = argparse.ArgumentParser(prog="ddp_worker")
    train_cli.configure(parser)
    options = train_cli.options_from_args(parser.parse_args(train_argv))
    digests.mkdir(parents=True, exist_ok=True)
    path = digests / f"rank{os.environ.get('RANK', '0')}.jsonl"

    def record(step: int, model: nn.Module) -> None:
        with path.open("a") as out:
            out.write(json.dumps({"step": step, "sha256": parameters_digest(model)}) + "\n")

    train(options, on_update=record)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
