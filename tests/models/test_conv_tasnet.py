"""Conv-TasNet: shapes, causality, exact timing claims, streaming alignment, training, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stemserve.models import losses
from stemserve.models.conv_tasnet import ConvTasNet, ConvTasNetConfig
from stemserve.models.registry import build
from tests.models.waveform_checks import (
    assert_causal,
    assert_checkpoint_round_trip,
    assert_stride_aligned_tail,
    check_impulses,
    influence_span,
    train_steps,
)

SMALL = {"N": 16, "L": 4, "B": 8, "H": 16, "P": 3, "X": 3, "R": 2, "Sc": 8}


def small(**overrides: object) -> ConvTasNet:
    torch.manual_seed(0)
    return ConvTasNet(ConvTasNetConfig(**{**SMALL, **overrides})).eval()  # type: ignore[arg-type]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("length", [1, 3, 4, 5, 8, 37, 128])
@pytest.mark.parametrize("batch", [1, 3])
def test_output_has_the_input_length(causal: bool, length: int, batch: int) -> None:
    model = small(causal=causal, audio_channels=2)
    out = model.separate(torch.randn(batch, 2, length))
    assert out.shape == (batch, 2, 2, length)


def test_rejects_bad_shapes_before_work() -> None:
    model = small()
    for bad in (torch.randn(8), torch.randn(2, 8), torch.randn(1, 2, 8), torch.randn(1, 1, 0)):
        with pytest.raises(ValueError, match=str(tuple(bad.shape)).replace("(", r"\(").replace(")", r"\)")):
            model.separate(bad)
    with pytest.raises(ValueError, match="floating"):
        model.separate(torch.ones(1, 1, 8, dtype=torch.long))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="even"):
        ConvTasNetConfig(L=5)
    with pytest.raises(ValueError, match="causal"):
        ConvTasNetConfig(causal=True, norm="gln")
    assert ConvTasNetConfig().norm_kind == "gln"
    assert ConvTasNetConfig(causal=True).norm_kind == "cln"


def test_default_presets_describe_the_paper_model() -> None:
    offline = build("conv_tasnet").describe()
    assert (offline.causal, offline.receptive_field, offline.stride, offline.sample_rate) == (False, None, 8, 8000)
    assert offline.sources == ("speaker1", "speaker2") and offline.segment == 32000
    causal = build("conv_tasnet_causal").describe()
    # L = 16: the encoder window gives 15 samples of lookahead; cLN makes the field unbounded.
    assert (causal.causal, causal.lookahead, causal.stride, causal.receptive_field) == (True, 15, 8, None)
    # D = R (P-1) (2^X - 1) = 3 * 2 * 255 = 1530 frames; (D + 2) * 8 samples of conv reach.
    assert causal.extras["conv_receptive_field"] == 12256


@pytest.mark.parametrize("norm", ["cln", "channel"])
def test_causal_variant_is_causal(norm: str) -> None:
    model = small(causal=True, norm=norm).double()
    lookahead = model.describe().lookahead
    x = torch.randn(2, 1, 200, dtype=torch.float64)
    for t in (0, 57, 100, 151):
        assert_causal(model, x, t, lookahead)


def test_channel_norm_receptive_field_and_lookahead_are_exact() -> None:
    model = small(causal=True, norm="channel").double()
    desc = model.describe()
    assert desc.lookahead == 3  # L - 1
    assert desc.receptive_field == (2 * 2 * 7 + 2) * 2  # (D + 2) * L/2, D = R (P-1) (2^X - 1)
    x = torch.randn(1, 1, 300, dtype=torch.float64)
    check_impulses(model, x, range(120, 128), desc.receptive_field, desc.lookahead, exact=True)


def test_cumulative_norm_has_unbounded_reach() -> None:
    model = small(causal=True, norm="cln").double()
    desc = model.describe()
    assert desc.receptive_field is None
    x = torch.randn(1, 1, 400, dtype=torch.float64)
    check_impulses(model, x, range(120, 124), None, desc.lookahead, exact=True)
    span = influence_span(model, x, 120)
    assert span is not None and span[1] - 120 + 1 > desc.extras["conv_receptive_field"]


def test_stride_aligned_segment_reproduces_offline_tail() -> None:
    model = small(causal=True, norm="channel").double()
    stride = model.describe().stride
    x = torch.randn(2, 1, 301, dtype=torch.float64)
    for start in (stride * 5, stride * 23):
        assert_stride_aligned_tail(model, x, start)


def test_non_causal_output_depends_on_the_whole_input() -> None:
    model = small().double()
    x = torch.randn(1, 1, 200, dtype=torch.float64)
    assert influence_span(model, x, 100) == (0, 199)  # gLN statistics are global


@pytest.mark.parametrize("causal", [False, True])
def test_a_few_adam_steps_reduce_the_si_snr_pit_loss(causal: bool) -> None:
    model = small(causal=causal)
    torch.manual_seed(1)
    refs = torch.randn(2, 2, 1, 128)  # (batch, speakers, channels, samples)
    mixture = refs.sum(1)
    first, last = train_steps(model, mixture, lambda est: losses.pit(losses.neg_si_snr, est, refs)[0])
    assert last < first


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = small(causal=True, norm="channel", mask_activation="relu")
    assert_checkpoint_round_trip(model, torch.randn(2, 1, 77), tmp_path)
