"""Training: every family's loss runs, validation loss goes down, resume is exact, DDP runs."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from stemserve.models import registry
from stemserve.models.checkpoint import load_checkpoint, read_checkpoint
from stemserve.models.train import (
    TrainError,
    TrainingObjective,
    TrainOptions,
    choose_task,
    learning_rate,
    make_datasets,
    parse_overrides,
    state_path,
    train,
)
from tests.models.data.tiny import render_music, render_speech

TINY_UNET = {
    "n_fft": 256,
    "hop_length": 64,
    "bins": 128,
    "window_frames": 16,
    "channels": [8, 16],
    "dropout": 0.0,
}
TINY_RNN = {"hidden_size": 16, "num_layers": 1, "window_frames": 16, "dropout": 0.0}
# preset -> (data kind, tiny config, segment seconds or None)
TINY: dict[str, tuple[str, dict[str, Any], float | None]] = {
    "unet": ("music", TINY_UNET, None),
    "multi_unet": ("music", TINY_UNET, None),
    "conditioned_unet": ("music", {**TINY_UNET, "film_hidden": 8}, None),
    "conditioned_unet_joint": ("music", {**TINY_UNET, "film_hidden": 8, "joint_stems": True}, None),
    "open_unmix": (
        "music",
        {
            "nb_bins": 129,
            "n_fft": 256,
            "hop_length": 64,
            "hidden_size": 8,
            "nb_layers": 1,
            "max_bin": 64,
            "window_frames": 16,
        },
        None,
    ),
    "mask_inference": ("speech", TINY_RNN, None),
    "deep_clustering": ("speech", {**TINY_RNN, "embedding_size": 4}, None),
    "chimera": ("speech", {**TINY_RNN, "embedding_size": 4}, None),
    "tasnet": ("speech", {"N": 16, "hidden": 16, "layers": 1}, 0.5),
    "conv_tasnet": ("speech", {"N": 16, "L": 16, "B": 8, "H": 16, "X": 2, "R": 1, "Sc": 8}, 0.5),
    "wave_unet": ("music", {"L": 3, "Fc": 4}, 0.25),
    "demucs": ("music", {"channels": 4, "depth": 2, "lstm_layers": 1, "resample": False}, 0.25),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("train-data")
    return {"music": render_music(base / "music"), "speech": render_speech(base / "speech")}


def _options(sets: dict[str, Path], out: Path, preset: str = "unet", **changes: Any) -> TrainOptions:
    kind, config, segment = TINY[preset]
    values: dict[str, Any] = {
        "model": preset.removesuffix("_joint"),
        "data": str(sets[kind]),
        "out": str(out),
        "steps": 4,
        "batch": 2,
        "lr": 3e-3,
        "valid_every": 2,
        "threads": 1,
        "config": config,
        "segment": segment,
        "valid_items": 4,
        "progress": False,
    }
    values.update(changes)
    return TrainOptions(**values)


def _assert_registered(preset: str) -> None:
    assert preset in registry.presets(), f"{preset} is not registered"


@pytest.mark.parametrize("preset", sorted(TINY))
def test_every_family_trains_with_a_finite_loss(preset: str, data: dict[str, Path], tmp_path: Path) -> None:
    name = preset.removesuffix("_joint")  # a conditioned U-Net with joint_stems: every target per item
    _assert_registered(name)
    result = train(_options(data, tmp_path / "model.pt", preset))
    assert result.step == 4 and [h["step"] for h in result.history] == [2, 4]
    assert all(torch.isfinite(torch.tensor([h["train_loss"], h["val_loss"]])).all() for h in result.history)
    assert load_checkpoint(tmp_path / "model.pt").describe() == registry.build(name, TINY[preset][1]).describe()


def test_tiny_training_lowers_validation_loss(data: dict[str, Path], tmp_path: Path) -> None:
    result = train(_options(data, tmp_path / "unet.pt", steps=60, batch=4, valid_every=10, valid_items=None))
    losses = [h["val_loss"] for h in result.history]
    assert len(losses) == 6
    assert losses[-1] < 0.8 * losses[0], losses
    assert result.best_val_loss == min(losses)


def test_checkpoint_holds_the_best_model_and_primitive_metadata(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "unet.pt"
    result = train(_options(data, out, command="stemserve train --model unet"))
    content = read_checkpoint(out)  # weights_only=True inside
    meta = content["metadata"]
    assert meta["step"] == result.best_step and meta["val_loss"] == result.best_val_loss
    assert meta["seed"] == 0 and meta["device"] == "cpu" and meta["command"] == "stemserve train --model unet"
    assert meta["data"] == str(data["music"].resolve()) and meta["wall_seconds"] >= 0
    assert all(isinstance(v, (int, float, str, bool)) for v in meta.values())


def test_resume_continues_exactly_where_it_stopped(data: dict[str, Path], tmp_path: Path) -> None:
    straight = train(_options(data, tmp_path / "a.pt", steps=6, valid_every=3))
    first = train(_options(data, tmp_path / "b.pt", steps=3, valid_every=3))
    assert first.step == 3
    state = torch.load(state_path(tmp_path / "b.pt"), weights_only=True)
    assert state["step"] == 3
    resumed = train(_options(data, tmp_path / "b.pt", steps=6, valid_every=3, resume=True))
    assert resumed.step == 6
    assert [h["step"] for h in resumed.history] == [3, 6]
    assert resumed.history == straight.history
    a = torch.load(state_path(tmp_path / "a.pt"), weights_only=True)["model"]
    b = torch.load(state_path(tmp_path / "b.pt"), weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stop_after_cuts_a_run_short_without_changing_its_schedule(data: dict[str, Path], tmp_path: Path) -> None:
    cosine = {"lr_schedule": "cosine", "lr_min": 1e-5, "valid_every": 3}
    straight = train(_options(data, tmp_path / "a.pt", steps=6, **cosine))
    cut = train(_options(data, tmp_path / "b.pt", steps=6, stop_after=3, **cosine))
    assert cut.step == 3 and cut.history == straight.history[:1]
    resumed = train(_options(data, tmp_path / "b.pt", steps=6, resume=True, **cosine))
    assert resumed.history == straight.history  # the cut run was on the 6-step schedule all along
    with pytest.raises(TrainError, match="stop_after"):
        _options(data, tmp_path / "c.pt", steps=6, stop_after=7)


def test_resume_refuses_another_model_config(data: dict[str, Path], tmp_path: Path) -> None:
    train(_options(data, tmp_path / "m.pt", steps=2))
    other = {**TINY_UNET, "channels": [4, 8]}
    with pytest.raises(TrainError, match="same --model and --config"):
        train(_options(data, tmp_path / "m.pt", steps=4, resume=True, config=other))


def test_cosine_schedule_decays_from_lr_to_lr_min_over_the_run(data: dict[str, Path], tmp_path: Path) -> None:
    options = _options(data, tmp_path / "m.pt", steps=101, lr=1e-3, lr_schedule="cosine", lr_min=1e-5)
    rates = [learning_rate(options, step) for step in range(101)]
    assert rates[0] == pytest.approx(1e-3) and rates[50] == pytest.approx((1e-3 + 1e-5) / 2)
    assert rates[-1] == pytest.approx(1e-5)
    assert all(a > b for a, b in itertools.pairwise(rates))
    assert learning_rate(_options(data, tmp_path / "m.pt"), 3) == 3e-3  # the default stays constant


def test_init_starts_from_a_checkpoints_weights(data: dict[str, Path], tmp_path: Path) -> None:
    train(_options(data, tmp_path / "a.pt", steps=4, valid_every=4))
    # A vanishing learning rate keeps the copied weights through one step.
    train(_options(data, tmp_path / "b.pt", steps=1, valid_every=1, lr=1e-12, init=str(tmp_path / "a.pt")))
    start = dict(load_checkpoint(tmp_path / "a.pt").named_parameters())
    after = dict(load_checkpoint(tmp_path / "b.pt").named_parameters())
    fresh = dict(registry.build("unet", TINY_UNET).named_parameters())
    assert start.keys() == after.keys()
    assert all(torch.allclose(after[k], start[k], atol=1e-8) for k in start)
    assert not all(torch.allclose(fresh[k], start[k], atol=1e-4) for k in start)
    assert read_checkpoint(tmp_path / "b.pt")["metadata"]["init"] == str(tmp_path / "a.pt")
    with pytest.raises(TrainError, match="same model"):
        other = {**TINY_UNET, "channels": [4, 8]}
        train(_options(data, tmp_path / "d.pt", steps=1, init=str(tmp_path / "a.pt"), config=other))
    # Settings that leave every weight's shape alone may change (a new objective, dropout).
    train(_options(data, tmp_path / "e.pt", steps=1, init=str(tmp_path / "a.pt"), config={**TINY_UNET, "dropout": 0.3}))


def test_a_conditioned_model_with_joint_stems_trains_on_every_target_jointly() -> None:
    plain = registry.build("conditioned_unet", TINY["conditioned_unet"][1])
    joint = registry.build("conditioned_unet", TINY["conditioned_unet_joint"][1])
    assert choose_task(plain).objective == "conditioned"
    assert choose_task(joint).objective == "conditioned_joint"
    torch.manual_seed(0)
    d = joint.describe()
    assert d.window_samples is not None
    mixture = torch.rand(2, 2, d.window_samples)
    stems = torch.rand(2, 4, 2, d.window_samples)
    # No target is drawn: the loss covers all four stems of each item.
    loss = TrainingObjective(joint, choose_task(joint))(mixture, stems, torch.zeros(2, dtype=torch.long), None)
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_speech_losses_are_permutation_invariant(data: dict[str, Path]) -> None:
    torch.manual_seed(0)
    for preset in ("mask_inference", "chimera", "conv_tasnet"):
        _assert_registered(preset)
        model = registry.build(preset, TINY[preset][1]).eval()
        objective = TrainingObjective(model, choose_task(model, TINY[preset][2]))
        mixture = torch.randn(2, 1, objective.task.segment_samples)
        stems = torch.stack([mixture * 0.3, mixture * 0.7], dim=1) + 0.01 * torch.randn(2, 2, 1, mixture.shape[-1])
        with torch.no_grad():
            assert torch.allclose(objective(mixture, stems), objective(mixture, stems[:, [1, 0]]), atol=1e-5)


def test_music_data_for_a_speech_model_is_refused(data: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="tr/"):
        train(_options(data, tmp_path / "x.pt", "mask_inference", data=str(data["music"])))


def test_cli_trains_and_reports(data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stemserve.server.cli import main

    out = tmp_path / "cli.pt"
    args = ["train", "--model", "unet", "--data", str(data["music"]), "--out", str(out), "--steps", "2",
            "--batch", "2", "--valid-every", "1", "--threads", "1", "--valid-items", "2", "--no-progress"]  # fmt: skip
    for key, value in TINY_UNET.items():
        args += ["--config", f"{key}={json.dumps(value)}"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 2 and Path(summary["checkpoint"]) == out and out.is_file()
    assert main([*args[:4], str(tmp_path), *args[5:]]) == 2  # a folder without data
    assert "no train/ folder" in capsys.readouterr().err


def test_repitch_reaches_the_training_stems_and_only_them(data: dict[str, Path], tmp_path: Path) -> None:
    options = _options(data, tmp_path / "r.pt", repitch=0.5)
    model = registry.build(options.model, options.config)
    train_set, valid_set = make_datasets(model.describe(), choose_task(model), options.data, 0, True, 0.5)
    assert train_set.augment is not None and train_set.augment.repitch_probability == 0.5
    assert valid_set.augment is None
    result = train(options)
    assert all(torch.isfinite(torch.tensor(h["val_loss"])) for h in result.history)
    with pytest.raises(TrainError, match="probability"):
        _options(data, tmp_path / "x.pt", repitch=1.5)
    with pytest.raises(TrainError, match="augment"):
        _options(data, tmp_path / "x.pt", repitch=0.5, augment=False)


def test_config_overrides_parse_json_values() -> None:
    assert parse_overrides(["channels=[8,16]", "dropout=0.1", "target=vocals", "causal=true"]) == {
        "channels": [8, 16],
        "dropout": 0.1,
        "target": "vocals",
        "causal": True,
    }
    with pytest.raises(TrainError):
        parse_overrides(["channels"])


@pytest.mark.slow
def test_torchrun_ddp_on_two_cpu_processes(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ddp.pt"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "stemserve.server.cli", "train", "--model", "unet", "--data", str(data["music"]), "--out", str(out),
        "--steps", "4", "--batch", "2", "--valid-every", "2", "--threads", "1", "--valid-items", "2",
        "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    for key, value in TINY_UNET.items():
        command += ["--config", f"{key}={json.dumps(value)}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # only rank 0 reports
    assert json.loads(lines[0])["step"] == 4 and out.is_file()


def test_conditioned_targets_are_mostly_drawn_among_audible_stems() -> None:
    from stemserve.models.train import AUDIBLE_TARGET_SHARE, draw_targets

    model = registry.build("conditioned_unet", {**TINY_UNET, "film_hidden": 8})
    d = model.describe()
    assert d.window_samples is not None
    stems = torch.zeros(400, 4, d.audio_channels, d.window_samples)
    stems[:, 1] = torch.randn(400, d.audio_channels, d.window_samples)  # only stem 1 is audible
    targets = draw_targets(stems, torch.zeros(400, dtype=torch.long), d, torch.Generator().manual_seed(0))
    share = float((targets == 1).float().mean())
    # AUDIBLE_TARGET_SHARE always pick stem 1; the rest pick uniformly (1 in 4 of them is stem 1 too).
    expected = AUDIBLE_TARGET_SHARE + (1 - AUDIBLE_TARGET_SHARE) / 4
    assert abs(share - expected) < 0.06
    assert set(targets.tolist()) == {0, 1, 2, 3}  # silent targets still occur: the model learns silence
