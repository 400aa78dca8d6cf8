"""Losses: minimal at the perfect estimate, PIT order-invariance, DC efficient form == naive form."""

from __future__ import annotations

import math

import pytest
import torch

from stemserve.models import losses


def test_mask_inference_l1_is_zero_for_the_perfect_estimate_and_positive_otherwise() -> None:
    target = torch.rand(2, 3, 1, 17, 9)
    assert losses.mask_inference_l1(target, target).item() == 0
    assert losses.mask_inference_l1(target + 0.1, target).item() == pytest.approx(0.1, rel=1e-5)


def _naive_dc(v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((v @ v.transpose(1, 2) - y @ y.transpose(1, 2)) ** 2).sum((1, 2)) / v.shape[1] ** 2


def test_deep_clustering_efficient_form_equals_the_affinity_matrix_form() -> None:
    v = torch.nn.functional.normalize(torch.randn(2, 50, 4, dtype=torch.float64), dim=-1)
    y = torch.nn.functional.one_hot(torch.randint(0, 3, (2, 50)), 3).double()
    got = losses.deep_clustering_loss(v, y, reduction="none")
    torch.testing.assert_close(got, _naive_dc(v, y))


def test_deep_clustering_loss_is_zero_when_embeddings_are_the_assignments() -> None:
    y = torch.nn.functional.one_hot(torch.randint(0, 3, (2, 40)), 3).float()
    assert losses.deep_clustering_loss(y, y).item() == pytest.approx(0, abs=1e-6)
    assert losses.deep_clustering_loss(torch.roll(y, 1, dims=1), y).item() > 0.01


def test_deep_clustering_weights_ignore_zero_weight_bins() -> None:
    y = torch.nn.functional.one_hot(torch.randint(0, 2, (1, 30)), 2).float()
    v = y.clone()
    v[0, :10] = torch.nn.functional.normalize(torch.randn(10, 2), dim=-1)  # wrong only where weight is 0
    w = torch.ones(1, 30)
    w[0, :10] = 0
    assert losses.deep_clustering_loss(v, y, weights=w).item() == pytest.approx(0, abs=1e-6)


def test_si_snr_matches_the_hand_computed_value() -> None:
    t = torch.arange(8000, dtype=torch.float64)
    reference = torch.sin(2 * math.pi * 440 * t / 8000)
    noise = torch.sin(2 * math.pi * 1000 * t / 8000)  # orthogonal to the reference over whole periods
    reference, noise = reference - reference.mean(), noise - noise.mean()
    estimate = 3.0 * reference + 0.5 * noise  # the scale of the target part must not matter
    expected = 10 * math.log10((3.0**2 * reference.pow(2).sum()) / (0.5**2 * noise.pow(2).sum()))
    assert losses.si_snr(estimate, reference).item() == pytest.approx(expected, abs=1e-6)


def test_pit_is_invariant_to_source_order_and_returns_the_permutation() -> None:
    reference = torch.randn(3, 3, 1, 400)
    perm = torch.tensor([2, 0, 1])
    estimate = reference[:, perm] + 0.01 * torch.randn(3, 3, 1, 400)
    loss, best = losses.pit(losses.neg_si_snr, estimate, reference)
    ordered = losses.neg_si_snr(estimate[:, torch.argsort(perm)], reference)
    assert loss.item() == pytest.approx(ordered.item(), rel=1e-5)
    for row in best:
        torch.testing.assert_close(estimate[0, row], estimate[0, torch.argsort(perm)])


@pytest.mark.parametrize("loss", [losses.mse, losses.length_scaled_l1, losses.mask_inference_l1])
def test_pit_of_a_distance_is_zero_for_any_permuted_perfect_estimate(loss) -> None:  # type: ignore[no-untyped-def]
    reference = torch.randn(2, 2, 2, 100)
    value, _ = losses.pit(loss, reference.flip(1), reference)
    assert value.item() == pytest.approx(0, abs=1e-7)


def test_length_scaled_l1_divides_the_summed_error_by_the_length() -> None:
    ref = torch.zeros(1, 2, 1, 10)
    est = torch.ones(1, 2, 1, 10)
    assert losses.length_scaled_l1(est, ref).item() == pytest.approx(20 / 10)


def test_losses_name_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="differ"):
        losses.mse(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))


def test_joint_mask_l1_scores_the_stems_as_estimated_and_as_sharing_out_the_mixture() -> None:
    torch.manual_seed(0)
    target = torch.rand(2, 4, 2, 8, 5)
    mixture = target.sum(1)
    assert losses.joint_mask_l1(target, target, mixture) == pytest.approx(0.0, abs=1e-6)
    # Twice the truth: wrong as estimated, right once normalised (the ratios are exact).
    doubled = 2 * target
    plain = losses.mask_inference_l1(doubled, target)
    assert losses.joint_mask_l1(doubled, target, mixture, joint_weight=1.0) == pytest.approx(0.0, abs=1e-6)
    assert losses.joint_mask_l1(doubled, target, mixture, joint_weight=0.0) == pytest.approx(float(plain))
    assert losses.joint_mask_l1(doubled, target, mixture) == pytest.approx(0.5 * float(plain))
    # Shared by power, even exact magnitudes come out changed: the mixture splits by their squares.
    assert losses.joint_mask_l1(doubled, target, mixture, joint_weight=1.0, power=2) > 0.01
