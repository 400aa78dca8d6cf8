"""Parity with the ``demucs`` package (test-only oracle): same weights, same output, both key layouts.

The oracle is ``demucs.demucs.Demucs`` built with the v2-equivalent options
(no DConv branch, no GELU, no group norm, 3-tap context convolution, a 2-layer
BLSTM) and random weights. Its state dict uses today's layout
(``encoder.{i}.3`` rewrite, ``decoder.{j}.3`` transposed conv, because of the
package's identity norm layers). The installed package cannot build the v2
code's layout (``encoder.{i}.2``, ``decoder.{j}.2``), so the test writes it by
renaming those keys: exactly the renaming the package's own
``Demucs.load_state_dict`` undoes for "previous generation" files, which the
test also checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import demucs.demucs as package_demucs  # test-only oracle, installed by scripts/install-deps
import demucs.states as package_states
import pytest
import torch

from stemserve.models.checkpoint import load_model
from stemserve.models.demucs import Demucs, DemucsConfig, load_official

SOURCES = ["drums", "bass", "other", "vocals"]
TOLERANCE = 1e-4
# The package's arguments that make its class compute Demucs v2.
V2_OPTIONS: dict[str, Any] = {"gelu": False, "glu": True, "norm_starts": 99, "dconv_mode": 0, "context": 1}
SMALL: dict[str, Any] = {"audio_channels": 2, "channels": 4, "depth": 3, "lstm_layers": 2, "rewrite": True}
PREPROCESSING = {
    "v2": {"normalize": False, "resample": True},
    "normalize": {"normalize": True, "resample": True},
    "no_resample": {"normalize": False, "resample": False},
}


def oracle(**options: Any) -> Any:  # a demucs.demucs.Demucs
    torch.manual_seed(0)  # random weights, rescaled as the package initialises them
    options = {**SMALL, **V2_OPTIONS, **PREPROCESSING["v2"], **options}  # the package normalizes by default
    return package_demucs.Demucs(SOURCES, **options).eval()


def ours(**options: Any) -> Demucs:
    config = DemucsConfig(sources=tuple(SOURCES), **{**SMALL, **options}, rescale=0.0)
    return Demucs(config).eval()


def to_v2_layout(state: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """Today's keys to the v2 code's: the second conv of each layer moves from index 3 to 2."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] in ("encoder", "decoder") and int(parts[1]) < depth and parts[2] == "3":
            parts[2] = "2"
        out[".".join(parts)] = value
    return out


def assert_same_output(model: torch.nn.Module, reference: torch.nn.Module, lengths: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    for length in lengths:
        x = torch.randn(2, 2, length)
        with torch.no_grad():
            expected, got = reference(x), model(x)
        assert got.shape == expected.shape == (2, len(SOURCES), 2, length)
        assert (got - expected).abs().max().item() <= TOLERANCE, f"length {length}"


@pytest.mark.parametrize("preprocessing", PREPROCESSING)
def test_package_layout_state_dict_loads_unchanged_and_matches(preprocessing: str) -> None:
    reference = oracle(**PREPROCESSING[preprocessing])
    state = reference.state_dict()
    assert "encoder.0.3.weight" in state and "decoder.0.3.weight" in state  # today's layout
    model = ours(**PREPROCESSING[preprocessing])
    model.load_state_dict(state)  # strict, no renaming by the caller
    assert_same_output(model, reference, (2, 100, 1001, 4097))


def test_v2_layout_state_dict_loads_unchanged_and_matches() -> None:
    reference = oracle()
    state = to_v2_layout(reference.state_dict(), SMALL["depth"])
    assert "encoder.0.2.weight" in state and "decoder.0.2.weight" in state
    assert not any(k.split(".")[2:3] == ["3"] for k in state)
    # The package itself reads this layout as its previous generation's.
    fresh = oracle()
    fresh.load_state_dict(dict(state))
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)
    model = ours()
    model.load_state_dict(state)
    assert_same_output(model, reference, (100, 3000))


def test_a_file_saved_by_the_package_loads_without_pickle_and_matches(tmp_path: Path) -> None:
    """The package's own helpers write the file; ``serialize_model`` itself needs omegaconf for
    ``training_args``, so its dict is assembled here from the same pieces it uses."""
    reference = oracle(normalize=True, segment=8)
    args, kwargs = reference._init_args_kwargs
    content = {
        "klass": reference.__class__,
        "args": args,
        "kwargs": kwargs,
        "state": package_states.get_state(reference, None, half=True),
        "training_args": {"lr": 3e-4},
    }
    package_states.save_with_checksum(content, tmp_path / "demucs.th")
    (path,) = tmp_path.glob("demucs-*.th")  # the package appends a checksum to the name

    model = load_official(path)
    c = model.config
    assert (c.sources, c.normalize, c.resample, c.segment, c.samplerate) == (tuple(SOURCES), True, True, 8.0, 44100)
    assert (c.channels, c.depth, c.lstm_layers, c.context) == (4, 3, 2, 1)
    assert isinstance(load_model(path), Demucs)  # the generic loader dispatches to it
    # The package's loader runs the pickle (fine for a file this test just wrote).
    assert_same_output(model, package_states.load_model(path).eval(), (100, 2000))
