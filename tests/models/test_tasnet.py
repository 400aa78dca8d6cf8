"""TasNet: shapes, causality, timing claims, training with SI-SNR + PIT, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stemserve.models import losses
from stemserve.models.registry import build
from stemserve.models.tasnet import TasNet, TasNetConfig
from tests.models.waveform_checks import (
    assert_causal,
    assert_checkpoint_round_trip,
    check_impulses,
    influence_span,
    train_steps,
)

SMALL = {"N": 16, "L": 4, "hidden": 8, "layers": 2}


def small(**overrides: object) -> TasNet:
    torch.manual_seed(0)
    return TasNet(TasNetConfig(**{**SMALL, **overrides})).eval()  # type: ignore[arg-type]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("length", [1, 3, 4, 5, 8, 37])
def test_output_has_the_input_length(causal: bool, length: int) -> None:
    # Lengths that are not a multiple of L are padded inside and cropped back.
    model = small(causal=causal, audio_channels=2)
    out = model.separate(torch.randn(3, 2, length))
    assert out.shape == (3, 2, 2, length)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_both_mask_activations_run(activation: str) -> None:
    model = small(mask_activation=activation, sources=("a", "b", "c"))
    assert model.separate(torch.randn(1, 1, 21)).shape == (1, 3, 1, 21)


def test_rejects_bad_shapes_before_work() -> None:
    model = small()
    for bad in (torch.randn(8), torch.randn(2, 8), torch.randn(1, 2, 8), torch.randn(1, 1, 0)):
        with pytest.raises(ValueError, match="expected a waveform"):
            model.separate(bad)
    with pytest.raises(ValueError, match="floating"):
        model.separate(torch.ones(1, 1, 8, dtype=torch.long))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="L must be"):
        TasNetConfig(L=0)
    with pytest.raises(ValueError, match="mask_activation"):
        TasNetConfig(mask_activation="tanh")  # type: ignore[arg-type]


def test_default_presets_describe_the_paper_model() -> None:
    offline = build("tasnet").describe()
    # 4 s chunks at 8 kHz; a BLSTM output depends on the whole chunk (span - 1 of lookahead).
    assert (offline.causal, offline.segment, offline.lookahead, offline.receptive_field) == (False, 32000, 31999, None)
    causal = build("tasnet_causal").describe()
    # L = 40 (5 ms): an output sample waits for the rest of its segment; the LSTM state is unbounded.
    assert (causal.causal, causal.lookahead, causal.stride, causal.receptive_field) == (True, 39, 40, None)


def test_causal_variant_is_causal() -> None:
    model = small(causal=True).double()
    lookahead = model.describe().lookahead
    x = torch.randn(2, 1, 120, dtype=torch.float64)
    for t in (0, 33, 60, 97):
        assert_causal(model, x, t, lookahead)


def test_causal_lookahead_is_exact_and_the_past_reach_unbounded() -> None:
    model = small(causal=True).double()
    desc = model.describe()
    assert desc.lookahead == 3 and desc.receptive_field is None  # L - 1
    x = torch.randn(1, 1, 200, dtype=torch.float64)
    # One full segment of impulse positions: the last sample of a segment reaches back to its first.
    check_impulses(model, x, range(40, 44), None, desc.lookahead, exact=True)
    span = influence_span(model, x, 40)
    assert span is not None and span[1] == 199  # the LSTM carries it to the end of the signal


def test_non_causal_output_depends_on_the_whole_input() -> None:
    model = small().double()
    x = torch.randn(1, 1, 120, dtype=torch.float64)
    assert influence_span(model, x, 60) == (0, 119)


@pytest.mark.parametrize("causal", [False, True])
def test_a_few_adam_steps_reduce_the_si_snr_pit_loss(causal: bool) -> None:
    model = small(causal=causal)
    torch.manual_seed(1)
    refs = torch.randn(2, 2, 1, 128)  # (batch, speakers, channels, samples)
    mixture = refs.sum(1)
    first, last = train_steps(model, mixture, lambda est: losses.pit(losses.neg_si_snr, est, refs)[0])
    assert last < first


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = small(causal=True, mask_activation="sigmoid", skip=False)
    assert_checkpoint_round_trip(model, torch.randn(2, 1, 39), tmp_path)
