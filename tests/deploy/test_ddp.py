"""DDP training on CPU (gloo): two processes keep identical weights after every step, train as one
process with the same global batch does, and a run cut off and resumed ends where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stemserve.models import registry
from stemserve.models.train import parse_overrides, state_path
from tests.models.data.tiny import render_music, render_speech
from tests.models.test_train import TINY, TINY_UNET

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4
PER_RANK_BATCH = 2
# One process of batch 4 against two of batch 2: the same examples and the same mean gradient, but
# gloo's all-reduce sums in another order (float32 rounding).
TOLERANCE = 1e-5
TASNET = [f"{key}={json.dumps(value)}" for key, value in TINY["conv_tasnet"][1].items()]


def _train_args(data: Path, out: Path, preset: str, config: list[str], *extra: str) -> list[str]:
    """``stemserve train`` arguments: ``STEPS`` steps of ``PER_RANK_BATCH``, validated every 2 (``extra`` wins)."""
    args = [
        "--model", preset, "--data", str(data), "--out", str(out), "--steps", str(STEPS),
        "--batch", str(PER_RANK_BATCH), "--valid-every", "2", "--valid-items", "2", "--threads", "1",
        "--lr", "3e-3", "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    for item in config:
        args += ["--config", item]
    return [*args, *extra]


def _stemserve_train(args: list[str]) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "stemserve.server.cli", "train", *args])


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _torchrun_worker(digests: Path, train_args: list[str]) -> None:
    """``torchrun --standalone --nproc_per_node 2`` of the worker that records each rank's digests."""
    _run([
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "tests.deploy.ddp_worker", str(digests), *train_args,
    ])  # fmt: skip


def _digests(folder: Path, rank: int) -> list[tuple[int, str]]:
    lines = (folder / f"rank{rank}.jsonl").read_text().splitlines()
    return [(int(d["step"]), str(d["sha256"])) for d in map(json.loads, lines)]


def _last_weights(out: Path) -> tuple[int, dict[str, torch.Tensor]]:
    state = torch.load(state_path(out), map_location="cpu", weights_only=True)
    return int(state["step"]), state["model"]


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.slow
def test_two_gloo_processes_keep_identical_parameters_every_step_and_resume_exactly(tmp_path: Path) -> None:
    data = render_music(tmp_path / "music")
    unet = [f"{key}={json.dumps(value)}" for key, value in TINY_UNET.items()]

    # torchrun, two ranks, cut off after step 2, then resumed to the end.
    digests = tmp_path / "digests"
    resumed = tmp_path / "resumed.pt"
    _torchrun_worker(digests, _train_args(data, resumed, "unet", unet, "--stop-after", "2"))
    assert _last_weights(resumed)[0] == 2
    _torchrun_worker(digests, _train_args(data, resumed, "unet", unet, "--resume"))
    for rank in (0, 1):
        assert [step for step, _ in _digests(digests, rank)] == [1, 2, 3, 4]
    assert _digests(digests, 0) == _digests(digests, 1), "the replicas' parameters differ after some step"

    # `stemserve train --nproc 2`, uninterrupted, ends with the same weights bit for bit.
    whole = tmp_path / "whole.pt"
    done = _stemserve_train(_train_args(data, whole, "unet", unet, "--nproc", "2"))
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 1 and reports[0]["step"] == STEPS  # rank 0 reports, once
    (step_resumed, weights_resumed), (step_whole, weights_whole) = _last_weights(resumed), _last_weights(whole)
    assert step_resumed == step_whole == STEPS
    assert _max_difference(weights_resumed, weights_whole) == 0.0


@pytest.mark.slow
def test_two_gloo_processes_train_as_one_process_with_the_global_batch(tmp_path: Path) -> None:
    # Conv-TasNet (global layer norm): BatchNorm statistics would be per rank on CPU, where
    # SyncBatchNorm does not run, so a BatchNorm model cannot match the global batch there.
    data = render_speech(tmp_path / "speech")
    single, ddp = tmp_path / "single.pt", tmp_path / "ddp.pt"
    _stemserve_train(_train_args(data, single, "conv_tasnet", TASNET, "--segment", "0.5", "--batch", "4"))
    _stemserve_train(_train_args(data, ddp, "conv_tasnet", TASNET, "--segment", "0.5", "--nproc", "2"))

    (step_single, weights_single), (step_ddp, weights_ddp) = _last_weights(single), _last_weights(ddp)
    assert step_single == step_ddp == STEPS
    difference = _max_difference(weights_single, weights_ddp)
    print(f"ddp: max |one process - two| = {difference:.3g} after {STEPS} steps")
    assert difference < TOLERANCE, f"DDP weights differ from one process's by {difference:.3g}"
    # ...and training moved the weights far more than that (the comparison is not vacuous).
    torch.manual_seed(0)  # train() seeds with --seed (0) right before it builds the model
    initial = registry.build("conv_tasnet", parse_overrides(TASNET)).state_dict()
    assert _max_difference(initial, weights_single) > 1000 * TOLERANCE
