"""Registry and `stemserve models`: every architecture is listed with its description."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stemserve.models.description import ModelDescription
from stemserve.models.registry import UnknownModelError, build, describe_all

SPECTROGRAM = {"unet", "conditioned_unet", "multi_unet", "open_unmix", "mask_inference", "deep_clustering", "chimera"}


def test_stemserve_models_json_lists_every_spectrogram_architecture_with_its_description() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "stemserve.server.cli", "models", "--json"], check=True, capture_output=True, text=True
    ).stdout
    entries = {e["name"]: e for e in json.loads(out)}
    assert set(entries) >= SPECTROGRAM
    for name in SPECTROGRAM:
        d = ModelDescription.from_dict(entries[name]["description"])
        assert d.domain == "spectrogram"
        assert d.n_fft and d.hop_length and d.window_frames
        assert entries[name]["parameters"] > 0
    assert entries["conditioned_unet"]["description"]["conditioned"] is True
    assert entries["conditioned_unet"]["description"]["sources"] == ["vocals", "drums", "bass", "other"]


def test_descriptions_round_trip_through_plain_dicts() -> None:
    for entry in describe_all():
        d = ModelDescription.from_dict(entry["description"])
        assert d.to_dict() == entry["description"]


def test_unknown_names_and_fields_are_refused_clearly() -> None:
    with pytest.raises(UnknownModelError, match="unknown model 'nope'"):
        build("nope")
    with pytest.raises(ValueError, match="unknown UNetConfig fields"):
        build("unet", {"depth": 3})
