"""Checkpoints: one file, round trip exact, never executes pickled code."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from stemserve.models.checkpoint import CheckpointError, load_checkpoint, load_model, read_checkpoint, save_checkpoint
from stemserve.models.registry import build

SMALL = {"n_fft": 256, "hop_length": 64, "bins": 128, "window_frames": 16, "channels": (4, 8, 8, 16, 16, 16)}


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_restores_config_description_and_outputs(tmp_path: Path, suffix: str) -> None:
    model = build("conditioned_unet", SMALL).eval()
    torch.nn.init.normal_(model.film.to_film.weight)
    path = save_checkpoint(model, tmp_path / f"m{suffix}", metadata={"steps": 3, "note": "test"})
    loaded = load_checkpoint(path)
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    assert loaded.describe() == model.describe()
    assert not loaded.training
    mag = torch.rand(2, 2, 129, 16)
    target = torch.tensor([1, 2])
    with torch.no_grad():
        torch.testing.assert_close(loaded.separate(mag, target), model.separate(mag, target), rtol=0, atol=0)
    assert read_checkpoint(path)["metadata"] == {"steps": 3, "note": "test"}


def test_checkpoint_is_loadable_with_weights_only(tmp_path: Path) -> None:
    path = save_checkpoint(build("mask_inference", {"hidden_size": 4, "num_layers": 1}), tmp_path / "m.pt")
    content = torch.load(path, weights_only=True)
    assert content["architecture"] == "mask_inference"
    assert content["config"]["sources"] == ["speaker1", "speaker2"]


class _Boom:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path("/tmp/stemserve-pwned"),))


def test_a_file_carrying_pickled_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = Path("/tmp/stemserve-pwned")
    marker.unlink(missing_ok=True)
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as handle:
        pickle.dump({"format": "stemserve-checkpoint", "payload": _Boom()}, handle)
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    assert not marker.exists()


def test_a_mismatched_state_dict_is_a_clear_error(tmp_path: Path) -> None:
    path = save_checkpoint(build("unet", SMALL), tmp_path / "m.pt")
    content = torch.load(path, weights_only=True)
    del content["state_dict"]["input_mean"]
    torch.save(content, path)
    with pytest.raises(CheckpointError, match="input_mean"):
        load_checkpoint(path)


def test_load_model_reports_missing_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "absent.pt")


def test_the_checkpoint_command_changes_inference_settings_and_keeps_the_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stemserve.server.cli import main

    model = build("conditioned_unet", {**SMALL, "joint_stems": True}).eval()
    torch.nn.init.normal_(model.film.to_film.weight)
    source = save_checkpoint(model, tmp_path / "m.safetensors", metadata={"command": "stemserve train ..."})
    out = tmp_path / "spatial.safetensors"
    assert main(["checkpoint", str(source), "--config", "spatial_seconds=2.5", "--out", str(out)]) == 0
    assert "spatial_seconds: 0.0 -> 2.5" in capsys.readouterr().out
    changed = load_checkpoint(out)
    assert changed.config.spatial_seconds == 2.5 and changed.describe().extras["joint_spatial_frames"] > 0
    for key, value in model.state_dict().items():
        torch.testing.assert_close(changed.state_dict()[key], value, rtol=0, atol=0)
    metadata = read_checkpoint(out)["metadata"]
    assert metadata["command"] == "stemserve train ..."  # training provenance kept
    assert metadata["reconfigured"] == '[{"spatial_seconds": [0.0, 2.5]}]'
    # with no --config it shows the checkpoint
    assert main(["checkpoint", str(out)]) == 0
    assert '"spatial_seconds": 2.5' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--config", "channels=[4,8]", "--out", "x.safetensors"], "shape of the weights"),
        (["--config", "no_such_setting=1", "--out", "x.safetensors"], "no_such_setting"),
        (["--config", "spatial_seconds=-1", "--out", "x.safetensors"], "spatial_seconds"),
        (["--config", "spatial_seconds=1"], "needs --out"),
    ],
)
def test_the_checkpoint_command_refuses_changes_it_cannot_make(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    from stemserve.server.cli import main

    source = save_checkpoint(build("conditioned_unet", SMALL), tmp_path / "m.safetensors")
    arguments = [a if not a.endswith(".safetensors") else str(tmp_path / a) for a in arguments]
    assert main(["checkpoint", str(source), *arguments]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
