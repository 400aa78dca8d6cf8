"""Causal Demucs streams with per-layer caches: stepping equals the offline pass, nothing is recomputed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from stemserve.models import registry
from stemserve.models.apply import causal_plan
from stemserve.models.demucs import causal_reach
from stemserve.models.streaming import split_state, stack_states, stream_signal

CONFIGS: dict[str, dict[str, Any]] = {
    "mono/lstm": {"channels": 4, "depth": 2, "lstm_layers": 1, "samplerate": 8000, "audio_channels": 1},
    "stereo/2 lstm layers": {"channels": 4, "depth": 3, "lstm_layers": 2},
    "no lstm, no rewrite": {"channels": 4, "depth": 3, "lstm_layers": 0, "rewrite": False},
    "context 2, stride 2": {"channels": 4, "depth": 3, "lstm_layers": 1, "context": 2, "stride": 2, "kernel_size": 6},
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return registry.build("demucs_causal", CONFIGS[name]).eval()


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("periods", [1, 3])
def test_stepping_equals_the_offline_pass(name: str, periods: int) -> None:
    model = build(name)
    stride = model.describe().stride
    wav = torch.randn(2, model.config.audio_channels, 7 * stride + 37)  # not a multiple of the stride
    with torch.no_grad():
        assert torch.allclose(stream_signal(model, wav, periods * stride), model.separate(wav), atol=1e-6)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_stream_delay_plus_one_step_is_the_lookahead(name: str) -> None:
    model = build(name)
    d = model.describe()
    assert d.stream_delay is not None
    assert d.stream_delay + d.stride - 1 == d.lookahead == causal_reach(model.config)[1]


def test_the_engine_plans_cached_steps_for_it() -> None:
    plan = causal_plan(build("stereo/2 lstm layers").describe())
    assert plan.cached and plan.context == 0  # no recomputed left context


def test_a_step_costs_only_its_new_samples() -> None:
    """The state has the same shapes after 1 and after 50 steps: no history grows, none is re-run."""
    model = build("stereo/2 lstm layers")
    stride = model.describe().stride
    state = model.stream_init(1)
    shapes = {k: v.shape for k, v in state.items()}
    with torch.no_grad():
        for _ in range(50):
            y, state = model.stream_step(torch.randn(1, 2, stride), state)
            assert y.shape == (1, 4, 2, stride)
    assert {k: v.shape for k, v in state.items()} == shapes
    assert int(state["position"]) == 50 * stride


def test_streams_stack_and_split_without_mixing() -> None:
    model = build("mono/lstm")
    stride = model.describe().stride
    a, b = torch.randn(1, 1, 4 * stride), torch.randn(1, 1, 4 * stride)
    with torch.no_grad():
        alone, _ = model.stream_step(a, model.stream_init(1))
        fresh = model.stream_init(1)
        state = stack_states([fresh, fresh])
        together, state = model.stream_step(torch.cat([a, b]), state)
        assert torch.allclose(together[:1], alone, atol=1e-7)
        first, second = split_state(state, 2)
        assert not torch.equal(first["lstm.hidden"], second["lstm.hidden"])


def test_a_step_leaves_its_input_state_untouched() -> None:
    model = build("stereo/2 lstm layers")
    state = model.stream_init(1)
    before = {k: v.clone() for k, v in state.items()}
    with torch.no_grad():
        model.stream_step(torch.randn(1, 2, 2 * model.describe().stride), state)
    assert all(torch.equal(before[k], state[k]) for k in state)


def test_the_music_size_fits_50_ms_at_44_1_khz() -> None:
    """Depth 4 (stride 256): 2387 samples of lookahead at depth 5 would be 54 ms."""
    model = registry.build("demucs_causal", {"channels": 8, "depth": 4})
    d = model.describe()
    assert d.sample_rate == 44100 and d.audio_channels == 2
    assert (d.lookahead + 1) / d.sample_rate <= 0.050


def test_bad_steps_and_non_causal_models_are_refused() -> None:
    model = build("mono/lstm")
    with pytest.raises(ValueError, match="multiple of"):
        model.stream_step(torch.randn(1, 1, 5), model.stream_init(1))
    with pytest.raises(ValueError, match="cannot stream"):
        registry.build("demucs", {"channels": 4, "depth": 2}).stream_init(1)
