"""The causal multichannel Wiener filter: stems that sum to the mixture, found by where they sit."""

from __future__ import annotations

import itertools

import pytest
import torch

from stemserve.models import registry
from stemserve.models.joint import JointStems, normalise_stems
from stemserve.models.stft import magnitude_phase
from stemserve.models.wiener import SpatialWiener
from tests.models.test_joint import TINY as JOINT_TINY

BINS = 65


def panned_sources(frames: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two broadband sources overlapping in every bin, one panned left, one right.

    Returns the stems' STFTs ``(2, 2, F, T)`` and the mixture's ``(2, F, T)``.
    """
    g = torch.Generator().manual_seed(seed)
    sources = torch.complex(torch.randn(2, BINS, frames, generator=g), torch.randn(2, BINS, frames, generator=g))
    pans = torch.tensor([[1.0, 0.3], [0.3, 1.0]])  # (stem, channel) gains
    stems = pans[:, :, None, None] * sources[:, None]
    return stems, stems.sum(0)


def wrong_magnitudes(stems: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """The stems' magnitudes, each bin off by a factor between 1/4 and 4 (the same in both channels)."""
    g = torch.Generator().manual_seed(seed)
    error = 4.0 ** (2 * torch.rand(stems.shape[0], 1, *stems.shape[2:], generator=g) - 1)
    return stems.abs() * error


def relative_error(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    return float((estimate - reference).abs().square().sum() / reference.abs().square().sum())


def test_stems_sum_to_the_mixture() -> None:
    stems, mixture = panned_sources(50)
    out = SpatialWiener(2, BINS, time_constant=20.0)(wrong_magnitudes(stems), *magnitude_phase(mixture))
    assert out.shape == stems.shape and out.dtype == mixture.dtype
    assert torch.allclose(out.sum(0), mixture, atol=1e-4)


def test_learnt_places_undo_magnitude_errors_that_power_sharing_keeps() -> None:
    """Estimates wrong by up to 4x per bin: sharing by power keeps that error; once the filter
    has averaged the stems' places over some frames, the level difference between the channels
    corrects part of it (a quarter less error energy here, seeds 0..3 alike)."""
    stems, mixture = panned_sources(400)
    estimates = wrong_magnitudes(stems)
    magnitude, phase = magnitude_phase(mixture)
    shared = normalise_stems(estimates, magnitude, power=2) * phase
    spatial = SpatialWiener(2, BINS, time_constant=100.0)(estimates, magnitude, phase)
    late = slice(200, None)  # after the averages have settled
    by_power = relative_error(shared[..., late], stems[..., late])
    by_place = relative_error(spatial[..., late], stems[..., late])
    assert by_place < 0.8 * by_power, (by_place, by_power)


def test_frames_fed_in_any_blocks_give_the_same_output_and_reset_starts_over() -> None:
    stems, mixture = panned_sources(300)
    estimates = wrong_magnitudes(stems)
    magnitude, phase = magnitude_phase(mixture)
    whole = SpatialWiener(2, BINS, time_constant=30.0)
    reference = whole(estimates, magnitude, phase)
    blocks = SpatialWiener(2, BINS, time_constant=30.0)
    edges = [0, 1, 2, 9, 100, 257, 300]
    pieces = [blocks(estimates[..., a:b], magnitude[..., a:b], phase[..., a:b]) for a, b in itertools.pairwise(edges)]
    assert torch.allclose(torch.cat(pieces, dim=-1), reference, atol=1e-5)
    whole.reset()
    assert torch.allclose(whole(estimates, magnitude, phase), reference, atol=1e-6)


def test_stems_that_all_sit_in_the_centre_are_shared_out_by_power() -> None:
    """Same place for every stem: no spatial cue, so the filter is the single-channel Wiener filter."""
    stems, _ = panned_sources(60)
    centred = stems.mean(1, keepdim=True).expand(-1, 2, -1, -1)  # both channels equal
    mixture = centred.sum(0)
    estimates = wrong_magnitudes(centred)
    magnitude, phase = magnitude_phase(mixture)
    expected = normalise_stems(estimates, magnitude, power=2) * phase
    out = SpatialWiener(2, BINS, time_constant=10.0)(estimates, magnitude, phase)
    assert relative_error(out, expected) < 1e-6


def test_a_short_time_constant_follows_a_stem_that_moves() -> None:
    """A stem panned left, then right: a 10-frame average follows it, a 1000-frame one lags."""
    stems, _ = panned_sources(400)
    moved = stems.clone()
    moved[0, :, :, 200:] = stems[0].flip(0)[:, :, 200:]  # stem 0 jumps to the right at frame 200
    mixture = moved.sum(0)
    estimates = wrong_magnitudes(moved)
    late = slice(250, None)
    magnitude, phase = magnitude_phase(mixture)
    quick = relative_error(SpatialWiener(2, BINS, 10.0)(estimates, magnitude, phase)[..., late], moved[..., late])
    slow = relative_error(SpatialWiener(2, BINS, 1000.0)(estimates, magnitude, phase)[..., late], moved[..., late])
    assert quick < slow


def test_a_one_frame_average_uses_each_frame_alone() -> None:
    stems, mixture = panned_sources(20)
    estimates = wrong_magnitudes(stems)
    magnitude, phase = magnitude_phase(mixture)
    whole = SpatialWiener(2, BINS, time_constant=1.0)(estimates, magnitude, phase)
    alone = [
        SpatialWiener(2, BINS, 1.0)(estimates[..., t : t + 1], magnitude[..., t : t + 1], phase[..., t : t + 1])
        for t in range(20)
    ]
    assert torch.allclose(whole, torch.cat(alone, dim=-1), atol=1e-6)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="time_constant"):
        SpatialWiener(2, BINS, time_constant=0.5)
    stems, mixture = panned_sources(5)
    with pytest.raises(ValueError, match="expected estimates"):
        SpatialWiener(3, BINS, 10.0)(stems.abs(), *magnitude_phase(mixture))
    with pytest.raises(ValueError, match="complex"):
        SpatialWiener(2, BINS, 10.0)(stems.abs(), mixture.abs(), mixture.abs())


TINY = {**JOINT_TINY, "joint_stems": True}  # a tiny stereo conditioned U-Net at 16 kHz, hop 16


@pytest.mark.parametrize(
    ("config", "spatial"),
    [
        ({"audio_channels": 2, "spatial_seconds": 0.5}, True),
        ({"audio_channels": 2, "spatial_seconds": 0.0}, False),  # off: power sharing
        ({"audio_channels": 1, "spatial_seconds": 0.5}, False),  # mono: nothing spatial to learn
    ],
)
def test_stereo_models_that_ask_for_it_get_the_spatial_filter(config: dict[str, object], spatial: bool) -> None:
    description = registry.build("conditioned_unet", {**TINY, **config}).describe()
    joint = JointStems(description)
    assert (joint.spatial is not None) == spatial
    if spatial:
        assert joint.spatial is not None and joint.spatial.time_constant == pytest.approx(0.5 * 16000 / 16)


def test_a_negative_time_constant_is_refused_in_the_config() -> None:
    with pytest.raises(ValueError, match="spatial_seconds"):
        registry.build("conditioned_unet", {**TINY, "spatial_seconds": -1.0})
