"""Open-Unmix: shapes, causality, streaming, training, checkpoints and published-weight loading.

Small configs keep it fast; parity with the ``openunmix`` package is in
``test_open_unmix_oracle.py``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from torch import nn

from stemserve.models import registry
from stemserve.models.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from stemserve.models.description import ModelDescription
from stemserve.models.losses import mask_inference_l1
from stemserve.models.open_unmix import (
    MUSIC_TARGETS,
    OpenUnmix,
    OpenUnmixConfig,
    OpenUnmixStems,
    OpenUnmixStemsConfig,
    bandwidth_to_max_bin,
    load_official,
)

M = TypeVar("M", bound=nn.Module)

SMALL: dict[str, Any] = {
    "nb_bins": 65,
    "n_fft": 128,
    "hop_length": 32,
    "hidden_size": 16,
    "max_bin": 40,
    "window_frames": 16,
}


def small(**overrides: Any) -> OpenUnmixConfig:
    return OpenUnmixConfig(**{**SMALL, **overrides})


def small_stems(**overrides: Any) -> OpenUnmixStemsConfig:
    return OpenUnmixStemsConfig(**{**SMALL, **overrides})


def randomise(model: M, seed: int) -> M:
    """Random weights, BatchNorm statistics and input/output scalings, so nothing is an identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("input_scale", "output_scale")):
                p.copy_(torch.rand(p.shape, generator=gen) * 1.5 + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.3)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def mags(batch: int, frames: int, channels: int = 2, bins: int = 65, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, bins, frames, generator=gen).abs()


def published_state(model: OpenUnmix, sample_rate: float | None = 44100.0) -> dict[str, torch.Tensor]:
    """``model``'s state dict with the extra entries older published files carry."""
    state = dict(model.state_dict())
    n_fft = model.config.n_fft
    state["stft.window"] = torch.hann_window(n_fft)
    state["transform.0.window"] = torch.hann_window(n_fft)
    if sample_rate is not None:
        state["sample_rate"] = torch.tensor(sample_rate)
    return state


def write_published_folder(folder: Path, models: dict[str, OpenUnmix], separator: dict[str, Any]) -> Path:
    """A model folder as the package's training script leaves it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "separator.json").write_text(json.dumps(separator, indent=4, sort_keys=True))
    for target, model in models.items():
        torch.save(published_state(model), folder / f"{target}.pth")
    return folder


# ---------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("unidirectional", [False, True])
def test_single_target_shapes_and_non_negative(batch: int, unidirectional: bool) -> None:
    model = randomise(OpenUnmix(small(unidirectional=unidirectional)), seed=1)
    x = mags(batch, 7)
    with torch.no_grad():
        y = model(x)
        est = model.separate(x)
    assert y.shape == (batch, 2, 65, 7)
    assert est.shape == (batch, 1, 2, 65, 7)
    assert torch.equal(est[:, 0], y)
    assert (est >= 0).all()
    assert (est > 0).any()


@pytest.mark.parametrize("batch", [1, 2])
def test_stems_shapes_and_equal_to_per_target_models(batch: int) -> None:
    stems = randomise(OpenUnmixStems(small_stems()), seed=2)
    x = mags(batch, 5)
    with torch.no_grad():
        est = stems.separate(x)
        assert est.shape == (batch, 4, 2, 65, 5)
        assert (est >= 0).all()
        for k, target in enumerate(MUSIC_TARGETS):
            assert torch.equal(est[:, k], stems.target_models[target](x))
    assert set(stems.target_models) == set(MUSIC_TARGETS)
    assert "target_models.vocals.fc1.weight" in stems.state_dict()


def test_mono_and_full_band() -> None:
    model = randomise(OpenUnmix(small(nb_channels=1, max_bin=None, nb_layers=1)), seed=3)
    assert model.input_mean.shape == (65,)
    with torch.no_grad():
        assert model.separate(mags(2, 4, channels=1)).shape == (2, 1, 1, 65, 4)


@pytest.mark.parametrize(
    "shape",
    [(2, 65, 7), (1, 1, 65, 7), (1, 2, 64, 7), (1, 2, 65, 0), (0, 2, 65, 7), (1, 2, 65, 7, 1)],
)
def test_bad_input_shape_is_named(shape: tuple[int, ...]) -> None:
    for model in (OpenUnmix(small()), OpenUnmixStems(small_stems())):
        with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
            model.separate(torch.zeros(shape))


@pytest.mark.parametrize(
    "bad",
    [
        {"nb_bins": 64},  # not n_fft // 2 + 1
        {"max_bin": 66},
        {"max_bin": 0},
        {"hidden_size": 15},  # bidirectional needs an even width
        {"nb_layers": 0},
        {"lstm_dropout": 1.0},
        {"window_frames": 0},
        {"target": ""},
    ],
)
def test_config_rejects_inconsistent_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        small(**bad)


def test_stems_config_rejects_bad_targets() -> None:
    with pytest.raises(ValueError):
        small_stems(targets=())
    with pytest.raises(ValueError):
        small_stems(targets=("vocals", "vocals"))
    assert small(unidirectional=True, hidden_size=15).hidden_size == 15  # odd is fine one-way


def test_defaults_follow_the_paper() -> None:
    cfg = OpenUnmixConfig()
    assert (cfg.nb_bins, cfg.nb_channels, cfg.hidden_size, cfg.nb_layers) == (2049, 2, 512, 3)
    assert (cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.unidirectional) == (44100, 4096, 1024, False)
    assert cfg.max_bin == bandwidth_to_max_bin(44100, 4096, 16000) == 1487
    assert cfg.lstm_dropout == 0.4
    assert bandwidth_to_max_bin(16000, 1024, 16000) == 513  # capped at nb_bins


# ---------------------------------------------------------------------------- contract


@pytest.mark.parametrize("unidirectional", [False, True])
def test_describe(unidirectional: bool) -> None:
    cfg = small(unidirectional=unidirectional, sample_rate=22050)
    desc = OpenUnmix(cfg).describe()
    window = (cfg.window_frames - 1) * cfg.hop_length + cfg.n_fft
    assert desc.architecture == "open_unmix"
    assert desc.sources == ("vocals",)
    assert not desc.conditioned
    assert desc.domain == "spectrogram"
    assert (desc.sample_rate, desc.audio_channels) == (22050, 2)
    assert (desc.n_fft, desc.hop_length, desc.window_frames, desc.stride) == (128, 32, 16, 32)
    assert desc.causal is unidirectional
    assert desc.receptive_field is None
    # causal: an output sample waits for the rest of its frame; otherwise for the whole window
    assert desc.lookahead == (cfg.n_fft - 1 if unidirectional else window - 1)
    assert desc.window_samples == window
    assert ModelDescription.from_dict(desc.to_dict()) == desc

    stems = OpenUnmixStems(small_stems(unidirectional=unidirectional, targets=("vocals", "other"))).describe()
    assert stems.architecture == "open_unmix_stems"
    assert stems.sources == ("vocals", "other")
    assert (stems.causal, stems.lookahead) == (desc.causal, desc.lookahead)


def test_registry_presets() -> None:
    assert registry.build("open_unmix", SMALL).config == small()
    causal = registry.build("open_unmix_causal", SMALL)
    assert isinstance(causal, OpenUnmix) and causal.config.unidirectional
    assert causal.describe().causal
    stems = registry.build("open_unmix_stems", SMALL)
    assert isinstance(stems, OpenUnmixStems)
    assert stems.describe().sources == MUSIC_TARGETS
    assert registry.architecture_class("open_unmix") is OpenUnmix
    assert registry.architecture_class("open_unmix_stems") is OpenUnmixStems


# ---------------------------------------------------------------------------- causality


def test_unidirectional_is_causal_and_bidirectional_is_not() -> None:
    x = mags(2, 12)
    changed = x.clone()
    changed[..., 8:] = mags(2, 4, seed=9)
    for unidirectional in (True, False):
        model = randomise(OpenUnmix(small(unidirectional=unidirectional)), seed=4)
        with torch.no_grad():
            before, after = model(x), model(changed)
        past_equal = torch.allclose(before[..., :8], after[..., :8], rtol=0, atol=1e-6)
        assert past_equal is unidirectional
        assert not torch.allclose(before[..., 8:], after[..., 8:])


def test_stream_in_pieces_equals_offline() -> None:
    model = randomise(OpenUnmix(small(unidirectional=True)), seed=5)
    stems = randomise(OpenUnmixStems(small_stems(unidirectional=True, targets=("vocals", "bass"))), seed=6)
    x = mags(2, 13)
    for net in (model, stems):
        with torch.no_grad():
            offline = net.separate(x)
            pieces: list[torch.Tensor] = []
            state: Any = None  # (h, c) for one network, a dict of them for the stems
            start = 0
            for size in (1, 4, 3, 5):
                out, state = net.separate_stream(x[..., start : start + size], state)
                pieces.append(out)
                start += size
        assert torch.allclose(torch.cat(pieces, dim=-1), offline, rtol=0, atol=1e-6)


def test_stream_rejects_bidirectional_and_bad_state() -> None:
    with pytest.raises(ValueError, match="unidirectional"):
        OpenUnmix(small()).separate_stream(mags(1, 2))
    model = OpenUnmix(small(unidirectional=True)).eval()
    _, state = model.separate_stream(mags(1, 2))
    with pytest.raises(ValueError, match="state"):
        model.separate_stream(mags(2, 2), state)  # batch changed under the state


# ---------------------------------------------------------------------------- training


def test_adam_steps_reduce_mask_inference_loss() -> None:
    torch.manual_seed(0)
    model = OpenUnmix(small())
    x = mags(4, 10)
    target = (x * torch.rand(x.shape, generator=torch.Generator().manual_seed(1)))[:, None]
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_now() -> float:
        torch.manual_seed(123)  # same dropout draw for both measurements
        with torch.no_grad():
            return mask_inference_l1(model.separate(x), target).item()

    model.train()
    before = loss_now()
    for _ in range(15):
        optimiser.zero_grad()
        loss = mask_inference_l1(model.separate(x), target)
        loss.backward()
        optimiser.step()
    after = loss_now()
    assert after < 0.8 * before


# ---------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("stems", [False, True])
def test_checkpoint_round_trip(tmp_path: Path, suffix: str, stems: bool) -> None:
    model: OpenUnmix | OpenUnmixStems
    if stems:
        model = randomise(OpenUnmixStems(small_stems(targets=("drums", "vocals"))), seed=7)
    else:
        model = randomise(OpenUnmix(small(unidirectional=True, target="speech")), seed=7)
    path = save_checkpoint(model, tmp_path / f"model{suffix}")
    loaded = load_checkpoint(path)
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    assert loaded.describe() == model.describe()
    assert not loaded.training
    x = mags(2, 6)
    with torch.no_grad():
        assert torch.equal(loaded.separate(x), model.separate(x))


# ---------------------------------------------------------------------------- published weights


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"unidirectional": True, "nb_channels": 1, "nb_layers": 2, "max_bin": None},
        {"hidden_size": 24, "nb_layers": 1, "max_bin": 20},
    ],
)
def test_load_published_single_file_with_legacy_keys(tmp_path: Path, overrides: dict[str, Any]) -> None:
    peer = randomise(OpenUnmix(small(**overrides)), seed=8)
    file = tmp_path / "vocals-0123abcd.pth"  # torch.hub's name for a published target file
    torch.save(published_state(peer, sample_rate=22050.0), file)

    loaded = load_official(file)
    assert isinstance(loaded, OpenUnmix)
    # all but the hop is recovered from the file (the hop defaults to n_fft / 4); the window is the default
    expected = dataclasses.replace(peer.config, sample_rate=22050, window_frames=256, max_bin=peer.config.input_bins)
    assert loaded.config == expected
    assert not loaded.training
    assert set(loaded.state_dict()) == set(peer.state_dict())
    x = mags(2, 5, channels=peer.config.nb_channels)
    with torch.no_grad():
        assert torch.equal(loaded(x), peer(x))


def test_single_file_reads_separator_json_beside_it(tmp_path: Path) -> None:
    peer = randomise(OpenUnmix(small(target="drums")), seed=9)
    write_published_folder(
        tmp_path, {"drums": peer}, {"nfft": 128, "nhop": 64, "sample_rate": 16000.0, "nb_channels": 2}
    )
    loaded = load_official(tmp_path / "drums.pth")
    assert isinstance(loaded, OpenUnmix)
    assert (loaded.config.target, loaded.config.hop_length, loaded.config.sample_rate) == ("drums", 64, 16000)


def test_load_published_folder(tmp_path: Path) -> None:
    peers = {t: randomise(OpenUnmix(small(target=t)), seed=10 + k) for k, t in enumerate(("other", "bass", "vocals"))}
    # the keys the package's training script writes (and its loader reads)
    separator = {"nfft": 128, "nhop": 32, "sample_rate": 44100, "nb_channels": 2}
    folder = write_published_folder(tmp_path / "umx-small", peers, separator)
    (folder / "vocals.json").write_text(json.dumps({"args": {"target": "vocals"}}))  # training log: ignored

    loaded = load_official(folder)
    assert isinstance(loaded, OpenUnmixStems)
    assert loaded.config.targets == ("vocals", "bass", "other")  # the usual music order
    assert loaded.config.hyperparameters() == dataclasses.replace(small(), window_frames=256).hyperparameters()
    assert not loaded.training
    x = mags(2, 6)
    with torch.no_grad():
        est = loaded.separate(x)
        for k, target in enumerate(loaded.config.targets):
            assert torch.equal(est[:, k], peers[target](x))

    via_dispatcher = load_model(folder)
    assert isinstance(via_dispatcher, OpenUnmixStems) and not via_dispatcher.training
    with torch.no_grad():
        assert torch.equal(via_dispatcher.separate(x), est)


def test_folder_targets_list_and_single_target(tmp_path: Path) -> None:
    peers = {t: randomise(OpenUnmix(small(target=t)), seed=20 + k) for k, t in enumerate(("vocals", "drums", "bass"))}
    separator = {"nfft": 128, "nhop": 32, "sample_rate": 44100, "nb_channels": 2, "targets": ["drums", "vocals"]}
    folder = write_published_folder(tmp_path / "listed", peers, separator)
    loaded = load_official(folder)
    assert isinstance(loaded, OpenUnmixStems)
    assert loaded.config.targets == ("drums", "vocals")

    one = write_published_folder(tmp_path / "one", {"vocals": peers["vocals"]}, {**separator, "targets": ["vocals"]})
    single = load_official(one)
    assert isinstance(single, OpenUnmix) and single.config.target == "vocals"
    x = mags(1, 4)
    with torch.no_grad():
        assert torch.equal(single(x), peers["vocals"](x))


def test_not_open_unmix_raises_checkpoint_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    other = tmp_path / "other_net.pth"
    torch.save({"encoder.0.weight": torch.zeros(2, 2)}, other)
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listing)
    ours = save_checkpoint(OpenUnmix(small()), tmp_path / "ours.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "separator.json").write_text(json.dumps({"nfft": 128}))
    broken_json = tmp_path / "broken_json"
    broken_json.mkdir()
    (broken_json / "separator.json").write_text("{nfft")
    for path in (text, other, listing, ours, empty, no_weights, broken_json, tmp_path / "missing"):
        with pytest.raises(CheckpointError):
            load_official(path)
    with pytest.raises(CheckpointError):
        load_model(other)


@pytest.mark.parametrize(
    "separator",
    [
        {"nfft": 128, "nhop": 32, "sample_rate": 44100, "nb_channels": 1},  # weights are stereo
        {"nfft": 256, "nhop": 32, "sample_rate": 44100, "nb_channels": 2},  # weights have 65 bins
        {"nfft": 128, "nhop": 32.5, "sample_rate": 44100, "nb_channels": 2},
        {"nfft": 128, "nhop": 32, "sample_rate": "44100", "nb_channels": 2},
        {"nfft": 128, "targets": ["vocals", "drums"]},  # no drums.pth
    ],
)
def test_folder_that_contradicts_its_weights_raises(tmp_path: Path, separator: dict[str, Any]) -> None:
    folder = write_published_folder(tmp_path, {"vocals": OpenUnmix(small())}, separator)
    with pytest.raises(CheckpointError):
        load_official(folder)


def test_targets_with_different_shapes_raise(tmp_path: Path) -> None:
    models = {"vocals": OpenUnmix(small()), "drums": OpenUnmix(small(hidden_size=32))}
    folder = write_published_folder(tmp_path, models, {"nfft": 128, "nhop": 32, "sample_rate": 44100})
    with pytest.raises(CheckpointError, match="share"):
        load_official(folder)


def test_truncated_state_dict_raises(tmp_path: Path) -> None:
    state = published_state(OpenUnmix(small()))
    del state["fc3.weight"]
    torch.save(state, tmp_path / "vocals.pth")
    with pytest.raises(CheckpointError, match="fc3"):
        load_official(tmp_path / "vocals.pth")
