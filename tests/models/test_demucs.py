"""Demucs v2: shapes, causal timing claims, training, checkpoints, official key layouts and files.

Parity with the ``demucs`` package itself is in ``test_demucs_oracle.py``; this
file needs no package: it writes files in the official formats by hand.
"""

from __future__ import annotations

import io
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from stemserve.models import losses
from stemserve.models.checkpoint import CheckpointError, load_model
from stemserve.models.demucs import (
    Demucs,
    DemucsConfig,
    PickledGlobal,
    causal_reach,
    load_official,
    restricted_torch_load,
    translate_state_dict,
)
from stemserve.models.registry import build
from tests.models.waveform_checks import (
    assert_causal,
    assert_checkpoint_round_trip,
    assert_stride_aligned_tail,
    check_impulses,
    influence_span,
    run,
    train_steps,
)

SMALL: dict[str, Any] = {"channels": 4, "depth": 2, "lstm_layers": 1, "sources": ("drums", "bass", "rest")}
CAUSAL: dict[str, Any] = {"causal": True, "resample": False}


def small(**overrides: Any) -> Demucs:
    torch.manual_seed(0)
    return Demucs(DemucsConfig(**{**SMALL, **overrides})).eval()


VARIANTS = {
    "v2": {},
    "normalize": {"normalize": True},
    "no_resample": {"resample": False},
    "no_rewrite": {"rewrite": False},
    "causal": CAUSAL,
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("length", [1, 5, 16, 100, 333])
def test_output_has_the_input_length(variant: str, length: int) -> None:
    # Every length is padded to a valid one inside and cropped back.
    model = small(**VARIANTS[variant])
    out = model.separate(torch.randn(2, 2, length))
    assert out.shape == (2, 3, 2, length)
    assert torch.isfinite(out).all()


def test_rejects_bad_shapes_and_configs() -> None:
    model = small()
    for bad in (torch.randn(8), torch.randn(1, 1, 8), torch.randn(1, 2, 0)):
        with pytest.raises(ValueError, match="expected a waveform"):
            model.separate(bad)
    with pytest.raises(ValueError, match="causal"):
        DemucsConfig(causal=True)  # resampling looks at the whole signal
    with pytest.raises(ValueError, match="kernel_size"):
        DemucsConfig(kernel_size=2, stride=4)


def test_default_presets_describe_the_paper_model_and_the_causal_variant() -> None:
    offline = build("demucs").describe()
    # 10 s chunks at 44.1 kHz, all of a chunk seen by the BLSTM: span - 1 of lookahead.
    assert (offline.causal, offline.segment, offline.lookahead) == (False, 441000, 440999)
    assert offline.receptive_field is None
    assert offline.stride == 4**6 // 2  # six stride-4 layers at twice the input rate
    causal = build("demucs_causal").describe()
    assert (causal.causal, causal.receptive_field, causal.stride) == (True, None, 4**5)
    assert causal.lookahead == causal_reach(build("demucs_causal").config)[1] == 2387


def test_presets_build_on_the_meta_device() -> None:
    # ``stemserve models`` describes every preset from a shapes-only build.
    with torch.device("meta"):
        model = build("demucs")
    assert all(p.is_meta for p in model.parameters())


def test_causal_variant_is_causal() -> None:
    model = small(**CAUSAL).double()
    lookahead = model.describe().lookahead
    x = torch.randn(1, 2, 200, dtype=torch.float64)
    for t in (40, 97, 150):
        assert_causal(model, x, t, lookahead)


def open_every_relu(model: Demucs) -> Demucs:
    """Raise the biases before each ReLU so that none clips: a clipped unit hides a dependency."""
    with torch.no_grad():
        for layer in [*model.encoder, *model.decoder]:
            for conv in (getattr(layer, "conv", None), getattr(layer, "conv_tr", None)):
                if conv is not None:
                    conv.bias.add_(20.0)
    return model


def test_causal_receptive_field_and_lookahead_are_exact() -> None:
    model = open_every_relu(small(**CAUSAL, lstm_layers=0).double())
    desc = model.describe()
    assert (desc.receptive_field, desc.lookahead, desc.stride) == (76, 35, 16)
    x = torch.randn(1, 2, 320, dtype=torch.float64)
    # One full period of stride ** depth impulse positions: both bounds are reached.
    check_impulses(model, x, range(128, 144), desc.receptive_field, desc.lookahead, exact=True)


def test_causal_lstm_makes_the_past_reach_unbounded() -> None:
    model = small(**CAUSAL).double()
    assert model.describe().receptive_field is None
    x = torch.randn(1, 2, 320, dtype=torch.float64)
    span = influence_span(model, x, 50)
    assert span is not None and span[1] == 319


def test_causal_stride_aligned_segment_reproduces_offline_tail() -> None:
    model = small(**CAUSAL, lstm_layers=0).double()
    x = torch.randn(1, 2, 301, dtype=torch.float64)
    for start in (32, 96):
        assert_stride_aligned_tail(model, x, start)


def test_non_causal_output_depends_on_the_whole_input() -> None:
    model = small().double()
    x = torch.randn(1, 2, 150, dtype=torch.float64)
    assert influence_span(model, x, 75) == (0, 149)


@pytest.mark.parametrize("variant", ["v2", "causal"])
def test_a_few_adam_steps_reduce_the_length_scaled_l1(variant: str) -> None:
    model = small(**VARIANTS[variant])
    torch.manual_seed(1)
    refs = 0.3 * torch.randn(2, 3, 2, 128)  # (batch, sources, channels, samples)
    first, last = train_steps(model, refs.sum(1), lambda est: losses.length_scaled_l1(est, refs))
    assert last < first


@pytest.mark.parametrize("variant", ["normalize", "causal"])
def test_checkpoint_round_trip(variant: str, tmp_path: Path) -> None:
    assert_checkpoint_round_trip(small(**VARIANTS[variant]), torch.randn(2, 2, 70), tmp_path)


# ----------------------------------------------------------------------------- key layouts


def official_names(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """Our state dict under the official names (written out here, independently of the model code).

    v2 code: encoder ``[conv, ReLU, rewrite, GLU]``, decoder ``[context conv, GLU, conv_tr, ReLU]``.
    Today's package puts a norm after each conv, so the second conv is at index 3.
    """
    second = "2" if layout == "v2" else "3"
    renames = {"conv": "0", "rewrite": None, "conv_tr": second}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] in ("encoder", "decoder"):
            module = parts[2]
            if parts[0] == "encoder":
                parts[2] = "0" if module == "conv" else second
            else:
                parts[2] = "0" if module == "rewrite" else renames[module] or second
        out[".".join(parts)] = value
    return out


@pytest.mark.parametrize("layout", ["v2", "package"])
def test_official_key_layouts_load_unchanged(layout: str) -> None:
    model = small()
    renamed = official_names(model.state_dict(), layout)
    assert "encoder.1.0.weight" in renamed and f"decoder.0.{'2' if layout == 'v2' else '3'}.weight" in renamed
    other = small(rescale=0.0)
    torch.manual_seed(5)
    other.load_state_dict(renamed)  # strict: every official key finds its parameter
    x = torch.randn(1, 2, 120)
    torch.testing.assert_close(run(other, x), run(model, x), rtol=0, atol=0)


def test_a_state_dict_mixing_both_layouts_is_refused() -> None:
    model = small()
    state = official_names(model.state_dict(), "package")
    state["encoder.0.2.weight"] = state["encoder.0.3.weight"]
    with pytest.raises(ValueError, match="two key layouts"):
        translate_state_dict(state, model.config)


def test_a_bare_v2_state_dict_file_loads_with_inferred_hyperparameters(tmp_path: Path) -> None:
    model = small(channels=6, growth=1.5, context=2)
    path = tmp_path / "demucs.th"
    torch.save(official_names(model.state_dict(), "v2"), path)
    loaded = load_model(path)  # dispatches through models.official
    assert isinstance(loaded, Demucs)
    c = loaded.config
    assert (c.channels, c.growth, c.depth, c.context, c.lstm_layers, c.kernel_size) == (6, 1.5, 2, 2, 1, 8)
    x = torch.randn(1, 2, 90)
    torch.testing.assert_close(run(loaded, x), run(model, x), rtol=0, atol=0)


# ----------------------------------------------------------------------------- package files


@pytest.fixture
def fake_package(monkeypatch: pytest.MonkeyPatch) -> type:
    """A class pickled under the package's name ``demucs.demucs.Demucs``, to write package-format files."""
    package = types.ModuleType("demucs")
    module = types.ModuleType("demucs.demucs")
    klass = type("Demucs", (), {"__module__": "demucs.demucs"})
    module.Demucs = klass  # type: ignore[attr-defined]
    package.demucs = module  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "demucs", package)
    monkeypatch.setitem(sys.modules, "demucs.demucs", module)
    return klass


def package_content(klass: Any, model: Demucs, **kwargs: Any) -> dict[str, Any]:
    """What the package's ``serialize_model`` writes: class, constructor arguments, half-precision state."""
    c = model.config
    options = {"audio_channels": 2, "channels": c.channels, "depth": c.depth, "lstm_layers": c.lstm_layers}
    v2_options = {"gelu": False, "norm_starts": 4, "dconv_mode": 0, "normalize": False, "segment": 8}
    state = {k: v.half() for k, v in official_names(model.state_dict(), "package").items()}
    return {
        "klass": klass,
        "args": (list(c.sources),),
        "kwargs": {**options, **v2_options, **kwargs},
        "state": state,
        "training_args": {"lr": 3e-4},
    }


def test_a_package_format_file_loads_without_the_package(fake_package: type, tmp_path: Path) -> None:
    model = small()
    path = tmp_path / "model.th"
    torch.save(package_content(fake_package, model), path)
    loaded = load_official(path)
    assert loaded.config.sources == model.config.sources and loaded.config.segment == 8.0
    x = torch.randn(1, 2, 90)
    torch.testing.assert_close(run(loaded, x), run(model, x), rtol=0, atol=2e-3)  # half-precision weights


def test_package_files_with_options_we_do_not_implement_are_refused(fake_package: type, tmp_path: Path) -> None:
    path = tmp_path / "model.th"
    torch.save(package_content(fake_package, small(), gelu=True), path)
    with pytest.raises(CheckpointError, match="gelu"):
        load_official(path)


class Malicious:
    """Unpickling this calls ``open(marker, "w")``: any callable could stand there."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_a_file_with_a_malicious_reduce_is_refused_without_running_it(fake_package: type, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hidden = tmp_path / "in_kwargs.th"
    torch.save(package_content(fake_package, small(), samplerate=Malicious(marker)), hidden)
    with pytest.raises(CheckpointError, match=r"refused.*open"):
        load_official(hidden)
    as_class = tmp_path / "as_class.th"
    torch.save({"klass": Malicious(marker), "args": (), "kwargs": {}, "state": {}}, as_class)
    with pytest.raises(CheckpointError, match="not a Demucs"):
        load_official(as_class)
    content = restricted_torch_load(hidden)
    assert isinstance(content["kwargs"]["samplerate"], PickledGlobal)  # an inert placeholder
    assert not marker.exists()
    # The threat is real: an unrestricted unpickler runs the call.
    buffer = io.BytesIO(pickle.dumps(Malicious(marker)))
    pickle.load(buffer).close()
    assert marker.exists()


def test_non_demucs_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.th"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match=r"not a Demucs state dict|no encoder"):
        load_official(path)
    (tmp_path / "junk.th").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a readable torch file"):
        load_official(tmp_path / "junk.th")
