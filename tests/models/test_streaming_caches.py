"""Per-layer caches: stepping a causal model through a stream equals one offline pass.

``models.streaming.stream_signal`` feeds a signal through ``stream_step`` in equal
steps; the concatenated, delay-aligned output must equal ``separate`` on the whole
signal, for any step that is a multiple of the stride, with a batch of streams.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from stemserve.models import registry
from stemserve.models.streaming import split_state, stack_states, stream_signal

TINY_CONV_TASNET = {"N": 16, "L": 8, "B": 8, "H": 16, "X": 3, "R": 2, "Sc": 8, "audio_channels": 2}
CACHED: dict[str, dict[str, Any]] = {
    "conv_tasnet_causal/cln": {**TINY_CONV_TASNET},
    "conv_tasnet_causal/channel": {**TINY_CONV_TASNET, "norm": "channel"},
    "tasnet_causal/lstm": {"N": 16, "L": 8, "hidden": 12, "layers": 2, "audio_channels": 2},
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Steps are thousands of tiny ops: a second intra-op thread only adds wake-ups (and stalls
    badly when the other core is busy)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return registry.build(name.split("/")[0], CACHED[name]).eval()


@pytest.mark.parametrize("name", list(CACHED))
@pytest.mark.parametrize("step", [8, 32, 136])
def test_stepping_equals_the_offline_pass(name: str, step: int) -> None:
    model = build(name)
    wav = torch.randn(3, 2, 1203)  # not a multiple of the step or the stride
    with torch.no_grad():
        assert torch.allclose(stream_signal(model, wav, step), model.separate(wav), atol=1e-5)


def test_cumulative_norm_stays_exact_over_a_long_stream() -> None:
    model = build("conv_tasnet_causal/cln")
    wav = torch.randn(1, 2, 8000 * 20)  # 20 s at 8 kHz: statistics over 40 000 frames
    with torch.no_grad():
        assert torch.allclose(stream_signal(model, wav, 32), model.separate(wav), atol=1e-4)


def test_states_of_streams_stack_and_split_without_mixing() -> None:
    model = build("conv_tasnet_causal/cln")
    a, b = torch.randn(1, 2, 64), torch.randn(1, 2, 64)
    with torch.no_grad():
        _, state_a = model.stream_step(a, model.stream_init(1))
        _, state_b = model.stream_step(b, model.stream_init(1))
        together, state = model.stream_step(torch.cat([a, b]), stack_states([model.stream_init(1)] * 2))
        alone, _ = model.stream_step(b, model.stream_init(1))
    assert torch.allclose(together[1:], alone)
    split = split_state(state, 2)
    assert all(torch.allclose(split[1][k], state_b[k]) for k in state_b)
    assert all(torch.allclose(split[0][k], state_a[k]) for k in state_a)


def test_delay_is_stated_in_the_description() -> None:
    assert build("conv_tasnet_causal/cln").describe().stream_delay == 4  # L - L/2 samples
    assert build("tasnet_causal/lstm").describe().stream_delay == 0  # a segment is final once complete
    assert (
        registry.build("conv_tasnet", {"N": 8, "L": 8, "B": 4, "H": 8, "X": 1, "R": 1, "Sc": 4}).describe().stream_delay
        is None
    )


def test_non_causal_models_and_bad_steps_are_refused() -> None:
    non_causal = registry.build("conv_tasnet", {"N": 8, "L": 8, "B": 4, "H": 8, "X": 1, "R": 1, "Sc": 4})
    with pytest.raises(ValueError, match="cannot stream"):
        non_causal.stream_init(1)
    with pytest.raises(ValueError, match="no per-layer caches"):
        stream_signal(non_causal, torch.zeros(1, 1, 64), 8)
    model = build("conv_tasnet_causal/cln")
    with pytest.raises(ValueError, match="multiple of 4"):
        model.stream_step(torch.zeros(1, 2, 6), model.stream_init(1))
    with pytest.raises(ValueError, match="multiple of the stride"):
        stream_signal(model, torch.zeros(1, 2, 64), 6)
