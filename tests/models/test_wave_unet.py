"""Wave-U-Net: shapes, the exact dependency reach, the difference output, MSE training, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stemserve.models import losses
from stemserve.models.registry import build
from stemserve.models.wave_unet import WaveUNet, WaveUNetConfig, dependency_reach, upsample_linear
from tests.models.waveform_checks import assert_checkpoint_round_trip, check_impulses, run, train_steps

SMALL = {"L": 3, "Fc": 4, "fd": 5, "fu": 3, "sources": ("drums", "bass", "rest")}


def small(**overrides: object) -> WaveUNet:
    torch.manual_seed(0)
    return WaveUNet(WaveUNetConfig(**{**SMALL, **overrides})).eval()  # type: ignore[arg-type]


@pytest.mark.parametrize("output", ["direct", "difference"])
@pytest.mark.parametrize("length", [1, 7, 8, 9, 50])
def test_output_has_the_input_length(output: str, length: int) -> None:
    # Lengths that are not a multiple of 2**L are padded inside and cropped back.
    model = small(output=output)
    out = model.separate(torch.randn(2, 2, length))
    assert out.shape == (2, 3, 2, length)


def test_difference_output_sums_to_the_mixture() -> None:
    model = small(output="difference")
    x = torch.randn(2, 2, 45)
    torch.testing.assert_close(run(model, x).sum(1), x)


def test_direct_outputs_are_bounded_by_tanh() -> None:
    out = run(small(), 100 * torch.randn(1, 2, 64))
    assert out.abs().max() <= 1


def test_linear_upsampling_keeps_samples_and_interpolates_between() -> None:
    x = torch.tensor([[[0.0, 2.0, 4.0]]])
    torch.testing.assert_close(upsample_linear(x), torch.tensor([[[0.0, 1.0, 2.0, 3.0, 4.0, 4.0]]]))


def test_rejects_bad_shapes_and_configs() -> None:
    model = small()
    for bad in (torch.randn(8), torch.randn(1, 1, 8), torch.randn(1, 2, 0)):
        with pytest.raises(ValueError, match="expected a waveform"):
            model.separate(bad)
    with pytest.raises(ValueError, match="difference"):
        WaveUNetConfig(sources=("only",), output="difference")
    with pytest.raises(ValueError, match="output"):
        WaveUNetConfig(output="sum")  # type: ignore[arg-type]


def test_default_preset_describes_the_paper_model() -> None:
    desc = build("wave_unet").describe()
    # L = 12 levels: the model steps by 2**12 samples; its reach is bounded on both sides.
    assert (desc.causal, desc.stride, desc.segment, desc.sample_rate) == (False, 4096, 264600, 44100)
    assert (desc.receptive_field, desc.lookahead) == (69623, 69622)


def test_receptive_field_and_lookahead_are_exact() -> None:
    model = small().double()
    desc = model.describe()
    past, future = dependency_reach(model.config)
    assert (desc.receptive_field, desc.lookahead) == (past + 1, future) == (45, 44)
    x = torch.randn(1, 2, 256, dtype=torch.float64)
    # One full period of 2**L impulse positions, far from both edges: both bounds are reached.
    check_impulses(model, x, range(120, 128), desc.receptive_field, desc.lookahead, exact=True)


def test_a_few_adam_steps_reduce_the_mse() -> None:
    model = small()
    torch.manual_seed(1)
    refs = 0.3 * torch.randn(2, 3, 2, 64)  # (batch, sources, channels, samples)
    first, last = train_steps(model, refs.sum(1), lambda est: losses.mse(est, refs))
    assert last < first


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    assert_checkpoint_round_trip(small(output="difference"), torch.randn(2, 2, 30), tmp_path)
