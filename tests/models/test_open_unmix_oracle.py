"""Parity with the ``openunmix`` package (test-only oracle): same state dict, same output.

The package imports torchaudio when imported, which has no build here, so its
``model.py`` is loaded on its own under a private name, with stand-ins for the
two sibling modules it imports names from (``filtering``, ``transforms``; only
the package's ``Separator`` uses them, not ``OpenUnmix``).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from torch import nn

from stemserve.models.open_unmix import OpenUnmix, OpenUnmixConfig, OpenUnmixStems, load_official

# The oracle is part of the test environment (scripts/install-deps): a missing one is a failure.
_SPEC = importlib.util.find_spec("openunmix")
assert _SPEC is not None and _SPEC.submodule_search_locations, "openunmix (test-only oracle) is not installed"

_PACKAGE = "_openunmix_oracle"
M = TypeVar("M", bound=nn.Module)


@pytest.fixture(scope="module")
def oracle() -> Iterator[types.ModuleType]:
    """``openunmix/model.py`` as a module, without importing the package."""
    assert _SPEC is not None and _SPEC.submodule_search_locations is not None
    source = Path(next(iter(_SPEC.submodule_search_locations))) / "model.py"
    stand_ins = {
        _PACKAGE: types.ModuleType(_PACKAGE),
        f"{_PACKAGE}.filtering": types.ModuleType(f"{_PACKAGE}.filtering"),
        f"{_PACKAGE}.transforms": types.ModuleType(f"{_PACKAGE}.transforms"),
    }
    stand_ins[_PACKAGE].__path__ = []
    stand_ins[f"{_PACKAGE}.filtering"].wiener = None  # type: ignore[attr-defined]
    stand_ins[f"{_PACKAGE}.transforms"].make_filterbanks = None  # type: ignore[attr-defined]
    stand_ins[f"{_PACKAGE}.transforms"].ComplexNorm = None  # type: ignore[attr-defined]
    spec = importlib.util.spec_from_file_location(f"{_PACKAGE}.model", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.update(stand_ins)
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)


def randomise(model: M, seed: int) -> M:
    """Random weights, BatchNorm statistics and input/output scalings, so nothing is an identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("input_scale", "output_scale")):
                p.copy_(torch.rand(p.shape, generator=gen) * 1.5 + 0.5)
            elif name.endswith(("input_mean", "output_mean")):
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.5)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) * 1.5 + 0.5)
    return model.eval()


def peer_model(oracle: types.ModuleType, seed: int, **kwargs: Any) -> nn.Module:
    return randomise(oracle.OpenUnmix(**kwargs), seed)


@pytest.mark.parametrize("unidirectional", [False, True])
def test_published_size_matches_package(oracle: types.ModuleType, tmp_path: Path, unidirectional: bool) -> None:
    # umx / umxhq: 4096-point STFT, stereo, hidden 512, 3 layers, 16 kHz bandwidth
    peer = peer_model(
        oracle, seed=1, nb_bins=2049, nb_channels=2, hidden_size=512, nb_layers=3,
        unidirectional=unidirectional, max_bin=1487,
    )  # fmt: skip
    file = tmp_path / "vocals.pth"
    torch.save(peer.state_dict(), file)

    ours = OpenUnmix(OpenUnmixConfig(unidirectional=unidirectional)).eval()
    ours.load_state_dict(torch.load(file, weights_only=True))  # strict: same names and shapes
    assert set(ours.state_dict()) == set(peer.state_dict())

    gen = torch.Generator().manual_seed(2)
    for batch in (1, 2):
        x = torch.randn(batch, 2, 2049, 9, generator=gen).abs()
        with torch.no_grad():
            expected = peer(x.clone())
            got = ours(x)
            separated = ours.separate(x)
        assert got.shape == expected.shape == (batch, 2, 2049, 9)
        assert (got - expected).abs().max().item() <= 1e-5
        assert torch.equal(separated[:, 0], got)


def test_published_folder_matches_package(oracle: types.ModuleType, tmp_path: Path) -> None:
    """A folder written as the package writes it loads into OpenUnmixStems with the package's outputs."""
    hyper = {"nb_bins": 65, "nb_channels": 2, "hidden_size": 16, "nb_layers": 2, "max_bin": 40}
    peers = {t: peer_model(oracle, seed=10 + k, **hyper) for k, t in enumerate(("vocals", "drums", "bass", "other"))}
    (tmp_path / "separator.json").write_text(
        json.dumps({"nfft": 128, "nhop": 32, "nb_channels": 2, "sample_rate": 44100.0}, indent=4, sort_keys=True)
    )
    for target, peer in peers.items():
        state = dict(peer.state_dict())
        state["sample_rate"] = torch.tensor(44100.0)  # legacy entries of older published files
        state["stft.window"] = torch.hann_window(128)
        state["transform.0.window"] = torch.hann_window(128)
        torch.save(state, tmp_path / f"{target}.pth")

    stems = load_official(tmp_path)
    assert isinstance(stems, OpenUnmixStems)
    assert stems.config.targets == ("vocals", "drums", "bass", "other")
    x = torch.randn(2, 2, 65, 7, generator=torch.Generator().manual_seed(3)).abs()
    with torch.no_grad():
        est = stems.separate(x)
        for k, (target, peer) in enumerate(peers.items()):
            assert (est[:, k] - peer(x.clone())).abs().max().item() <= 1e-5, target
