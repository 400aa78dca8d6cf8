"""Joint normalisation: the stems share the mixture out, only when every stem is asked for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stemserve.models import registry
from stemserve.models.apply import separate_signal
from stemserve.models.joint import joint_stems, normalise_stems
from tests.server.engine.tiny_models import TINY_UNET_CONFIG

TINY = TINY_UNET_CONFIG


def test_normalised_stems_keep_their_ratios_and_sum_to_the_mixture() -> None:
    torch.manual_seed(0)
    estimates = torch.rand(4, 2, 33, 10)
    mixture = torch.rand(2, 33, 10) + 0.1
    out = normalise_stems(estimates, mixture)
    assert torch.allclose(out.sum(0), mixture, atol=1e-6)
    assert torch.allclose(out[0] / out[1], estimates[0] / estimates[1], rtol=1e-4)


def test_power_two_shares_by_power() -> None:
    estimates = torch.tensor([3.0, 1.0])[:, None]
    mixture = torch.tensor([2.0])
    np.testing.assert_allclose(normalise_stems(estimates, mixture, power=1)[:, 0], [1.5, 0.5])
    np.testing.assert_allclose(normalise_stems(estimates, mixture, power=2)[:, 0], [1.8, 0.2])


@pytest.mark.parametrize("power", [1, 2])
def test_bins_that_no_stem_claims_stay_silent(power: int) -> None:
    estimates = torch.zeros(2, 1, 3, 4)
    estimates[0, 0, 0, 0] = 1.0
    out = normalise_stems(estimates, torch.ones(1, 3, 4), power=power)
    assert out[0, 0, 0, 0] == 1.0 and out.sum() == 1.0


def test_joint_applies_to_opted_in_models_asked_for_every_stem_once() -> None:
    joint = registry.build("conditioned_unet", {**TINY, "joint_stems": True}).describe()
    plain = registry.build("conditioned_unet", TINY).describe()
    single = registry.build("unet", {**TINY, "joint_stems": True}).describe()  # one source: nothing to share
    assert joint_stems(joint, None) and joint_stems(joint, [3, 1, 0, 2])
    assert not joint_stems(joint, [0, 1, 2]) and not joint_stems(joint, [0, 0, 1, 2, 3])
    assert not joint_stems(plain, None) and not joint_stems(single, None)


@pytest.mark.parametrize("preset", ["conditioned_unet", "multi_unet"])
def test_offline_separation_of_every_stem_sums_to_the_mixture(preset: str) -> None:
    torch.manual_seed(0)
    model = registry.build(preset, {**TINY, "joint_stems": True}).eval()
    plain = registry.build(preset, TINY).eval()
    plain.load_state_dict(model.state_dict())
    wav = 0.3 * torch.randn(2, 4000)
    every = separate_signal(model, wav)
    assert every.shape == (4, 2, 4000)
    # Frames whose four estimates are all zero cannot happen with sigmoid masks, so the sum is the
    # mixture up to the STFT round trip.
    assert torch.allclose(every.sum(0), wav, atol=1e-4)
    assert not torch.allclose(separate_signal(plain, wav).sum(0), wav, atol=1e-2)
    # One stem asked for: the plain estimate, as a DAW session gets it.
    np.testing.assert_allclose(separate_signal(model, wav, 2)[0], separate_signal(plain, wav, 2)[0], atol=1e-6)
