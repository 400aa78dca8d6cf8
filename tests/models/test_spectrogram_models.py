"""Spectrogram architectures: shapes, mask ranges, conditioning, causality, training steps."""

from __future__ import annotations

import pytest
import torch

from stemserve.models import losses
from stemserve.models.registry import build

# Small configs: the contract and shapes do not depend on size.
SMALL_UNET = {"n_fft": 256, "hop_length": 64, "bins": 128, "window_frames": 16, "channels": (4, 8, 8, 16, 16, 16)}
SMALL_RNN = {"n_fft": 64, "hop_length": 16, "window_frames": 12, "hidden_size": 8, "num_layers": 2}
FOUR = ("vocals", "drums", "bass", "other")

CASES = {
    "unet": SMALL_UNET,
    "multi_unet": {**SMALL_UNET, "sources": FOUR},
    "conditioned_unet": {**SMALL_UNET, "sources": FOUR},
    "mask_inference": SMALL_RNN,
    "deep_clustering": {**SMALL_RNN, "embedding_size": 5},
    "chimera": {**SMALL_RNN, "embedding_size": 5},
}


def _inputs(name: str, batch: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None]:
    model = build(name, CASES[name]).eval()
    d = model.describe()
    assert d.n_fft is not None and d.window_frames is not None
    mag = torch.rand(batch, d.audio_channels, d.n_fft // 2 + 1, d.window_frames)
    target = torch.arange(batch) % len(d.sources) if d.conditioned else None
    return model, mag, target


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("batch", [1, 3])
def test_separate_returns_one_estimate_per_source_with_input_shape(name: str, batch: int) -> None:
    model, mag, target = _inputs(name, batch)
    d = model.describe()
    with torch.no_grad():
        est = model.separate(mag, target)
    expected_sources = 1 if d.conditioned else len(d.sources)
    assert est.shape == (batch, expected_sources, *mag.shape[1:])
    assert torch.isfinite(est).all()


@pytest.mark.parametrize("name", list(CASES))
def test_masks_lie_between_zero_and_one(name: str) -> None:
    model, mag, target = _inputs(name, 2)
    with torch.no_grad():
        est = model.separate(mag, target)
    mask = est / mag[:, None].clamp_min(1e-12)
    assert mask.min() >= 0 and mask.max() <= 1 + 1e-5


def test_softmax_multi_unet_masks_sum_to_one() -> None:
    model = build("multi_unet", {**CASES["multi_unet"], "mask_activation": "softmax"}).eval()
    with torch.no_grad():
        masks = model(torch.rand(2, 2, 129, 16))
    torch.testing.assert_close(masks.sum(1), torch.ones(2, 2, 129, 16))


def test_unet_accepts_windows_whose_size_is_not_a_power_of_two() -> None:
    model = build("unet", {**SMALL_UNET, "window_frames": 13}).eval()
    with torch.no_grad():
        est = model.separate(torch.rand(1, 2, 129, 13))
    assert est.shape == (1, 1, 2, 129, 13)


def test_conditioned_unet_output_depends_on_the_target() -> None:
    model, mag, _ = _inputs("conditioned_unet", 1)
    # FiLM starts as the identity; perturb it so targets differ as after training.
    torch.nn.init.normal_(model.film.to_film.weight)
    with torch.no_grad():
        a = model.separate(mag, torch.tensor([0]))
        b = model.separate(mag, torch.tensor([1]))
    assert (a - b).abs().max() > 1e-4


def test_conditioned_unet_batches_different_targets_like_separate_calls() -> None:
    model, mag, _ = _inputs("conditioned_unet", 2)
    torch.nn.init.normal_(model.film.to_film.weight)
    with torch.no_grad():
        both = model.separate(mag, torch.tensor([0, 3]))
        first = model.separate(mag[:1], torch.tensor([0]))
        second = model.separate(mag[1:], torch.tensor([3]))
    torch.testing.assert_close(both, torch.cat([first, second]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad", [torch.tensor([4]), torch.tensor([-1]), None])
def test_conditioned_unet_rejects_missing_or_unknown_targets(bad: torch.Tensor | None) -> None:
    model, mag, _ = _inputs("conditioned_unet", 1)
    with pytest.raises(ValueError):
        model.separate(mag, bad)


@pytest.mark.parametrize("name", list(CASES))
def test_wrong_input_shape_is_a_value_error_naming_the_shape(name: str) -> None:
    model, mag, target = _inputs(name, 1)
    with pytest.raises(ValueError, match=r"\(1, "):
        model.separate(mag[:, :, :-1], target)


def test_unet_dropout_follows_the_paper_by_default_and_can_move_to_the_encoder() -> None:
    def dropout_ps(config: dict) -> tuple[list[float], list[float]]:
        core = build("unet", config).core
        enc = [getattr(layer.dropout, "p", 0.0) for layer in core.encoder]
        dec = [getattr(layer.dropout, "p", 0.0) for layer in core.decoder]
        return enc, dec

    enc, dec = dropout_ps(SMALL_UNET)
    assert enc == [0.0] * 6 and dec == [0.5, 0.5, 0.5, 0.0, 0.0]
    enc, dec = dropout_ps({**SMALL_UNET, "dropout_layers": "encoder"})
    assert enc == [0.5, 0.5, 0.5, 0.0, 0.0, 0.0] and dec == [0.0] * 5


def test_unet_matches_the_papers_layer_count_and_kernel() -> None:
    core = build("unet").core
    assert len(core.encoder) == 6 and len(core.decoder) + 1 == 6
    assert all(layer.conv.kernel_size == (5, 5) and layer.conv.stride == (2, 2) for layer in core.encoder)
    assert [layer.conv.out_channels for layer in core.encoder] == [16, 32, 64, 128, 256, 512]


def test_unidirectional_trunk_is_causal_in_frames_and_bidirectional_is_not() -> None:
    for bidirectional, expect_change in [(False, False), (True, True)]:
        model = build("mask_inference", {**SMALL_RNN, "bidirectional": bidirectional}).eval()
        mag = torch.rand(1, 1, 33, 12)
        changed = mag.clone()
        changed[..., 8:] = torch.rand(1, 1, 33, 4)
        with torch.no_grad():
            a, b = model.separate(mag), model.separate(changed)
        past_changed = bool((a[..., :8] - b[..., :8]).abs().max() > 1e-6)
        assert past_changed == expect_change
        assert model.describe().causal == (not bidirectional)


def test_deep_clustering_embeddings_are_unit_norm_per_bin() -> None:
    model, mag, _ = _inputs("deep_clustering", 2)
    with torch.no_grad():
        emb = model.embed(mag)
    assert emb.shape == (2, 1 * 33 * 12, 5)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2, 33 * 12))


def test_deep_clustering_masks_are_binary_and_partition_the_mixture() -> None:
    model, mag, _ = _inputs("deep_clustering", 2)
    with torch.no_grad():
        est = model.separate(mag)
    torch.testing.assert_close(est.sum(1), mag)
    ratio = est / mag[:, None]
    assert torch.all((ratio.abs() < 1e-6) | ((ratio - 1).abs() < 1e-6))


def test_deep_clustering_inference_is_deterministic() -> None:
    model, mag, _ = _inputs("deep_clustering", 1)
    with torch.no_grad():
        torch.testing.assert_close(model.separate(mag), model.separate(mag))


def _training_loss(name: str, model: torch.nn.Module, mag: torch.Tensor, stems: torch.Tensor) -> torch.Tensor:
    if name == "conditioned_unet":
        target = torch.arange(mag.shape[0]) % stems.shape[1]
        chosen = stems[torch.arange(mag.shape[0]), target][:, None]
        return losses.mask_inference_l1(model.separate(mag, target), chosen)
    if name == "deep_clustering":
        return losses.deep_clustering_loss(
            model.embed(mag), losses.ideal_binary_assignment(stems), weights=mag.flatten(1)
        )
    if name == "chimera":
        est, emb = model(mag)
        return losses.chimera_loss(est, stems, emb, losses.ideal_binary_assignment(stems), alpha=0.5)
    return losses.mask_inference_l1(model.separate(mag), stems)


@pytest.mark.parametrize("name", list(CASES))
def test_a_few_adam_steps_reduce_the_training_loss_on_a_fixed_batch(name: str) -> None:
    model = build(name, {**CASES[name], "dropout": 0.0})
    d = model.describe()
    assert d.n_fft is not None and d.window_frames is not None
    stems = torch.rand(2, 1 if name == "unet" else len(d.sources), d.audio_channels, d.n_fft // 2 + 1, d.window_frames)
    mag = stems.sum(1)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    first = _training_loss(name, model, mag, stems).item()
    for _ in range(15):
        optimiser.zero_grad()
        loss = _training_loss(name, model, mag, stems)
        loss.backward()
        optimiser.step()
    assert _training_loss(name, model, mag, stems).item() < first
