"""espeak-ng two-speaker mixtures: determinism, exact sums, SNR range, layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stemserve.models.data import speech
from tests.models.data.tiny import SPEECH_COUNTS, files_of, render_speech


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("speech")
    return {
        "a": render_speech(base / "a", seed=0),
        "b": render_speech(base / "b", seed=0),
        "c": render_speech(base / "c", seed=1),
    }


def _read(root: Path, split: str, folder: str, ident: str) -> np.ndarray:
    audio, rate = sf.read(str(root / split / folder / f"{ident}.wav"), dtype="float32")
    assert rate == 8000 and audio.ndim == 1
    return audio


def test_same_seed_gives_byte_identical_files(rendered: dict[str, Path]) -> None:
    a, b = files_of(rendered["a"]), files_of(rendered["b"])
    assert a.keys() == b.keys()
    assert all(a[name] == b[name] for name in a)


def test_different_seed_gives_different_audio(rendered: dict[str, Path]) -> None:
    a, c = files_of(rendered["a"]), files_of(rendered["c"])
    mixes = [name for name in a if "/mix/" in name]
    assert mixes and all(a[name] != c[name] for name in mixes)


def test_layout_is_wsj0_2mix(rendered: dict[str, Path]) -> None:
    root = rendered["a"]
    for split, count in SPEECH_COUNTS.items():
        ids = speech.list_mixtures(root, split)
        assert len(ids) == count
        for folder in ("mix", "s1", "s2"):
            assert sorted(p.stem for p in (root / split / folder).glob("*.wav")) == ids
            for ident in ids:
                info = sf.info(str(root / split / folder / f"{ident}.wav"))
                assert (info.samplerate, info.channels, info.frames) == (8000, 1, 16000)
        described = json.loads((root / split / "mixtures.json").read_text())
        assert [d["id"] for d in described] == ids


def test_sources_sum_to_the_mixture_at_snrs_within_range(rendered: dict[str, Path]) -> None:
    root = rendered["a"]
    for split in SPEECH_COUNTS:
        for ident in speech.list_mixtures(root, split):
            mix, s1, s2 = (_read(root, split, f, ident) for f in ("mix", "s1", "s2"))
            assert np.max(np.abs(mix - (s1 + s2))) <= 1e-6
            assert -5.0 <= speech.snr_db(s1, s2) <= 5.0
            assert 0 < np.max(np.abs(mix)) <= 0.9


def test_the_two_speakers_differ(rendered: dict[str, Path]) -> None:
    for split in SPEECH_COUNTS:
        for entry in json.loads((rendered["a"] / split / "mixtures.json").read_text()):
            first, second = (speech.Speaker(**s) for s in entry["speakers"])
            assert speech.different(first, second)
            assert all(entry["texts"])


def test_snr_and_speakers_vary_over_seeds() -> None:
    rng = np.random.default_rng(0)
    speakers = {speech.random_speaker(rng) for _ in range(200)}
    assert len({s.voice for s in speakers}) > 8 and len({s.variant for s in speakers}) > 15
    assert all(20 <= s.pitch < 80 and 120 <= s.rate < 200 for s in speakers)


def test_16k_option(tmp_path: Path) -> None:
    settings = speech.SpeechSettings(seconds=1.0, sample_rate=16000)
    speech.render_dataset(tmp_path, {"tt": 1}, base_seed=5, settings=settings)
    ident = speech.list_mixtures(tmp_path, "tt")[0]
    assert sf.info(str(tmp_path / "tt" / "mix" / f"{ident}.wav")).samplerate == 16000


def test_split_seeds_are_disjoint_and_aliases_agree() -> None:
    train = {speech.mixture_seed(0, "tr", i) for i in range(300)}
    test = {speech.mixture_seed(0, "tt", i) for i in range(300)}
    assert len(train) == len(test) == 300 and not train & test
    assert speech.mixture_seed(0, "train", 3) == speech.mixture_seed(0, "tr", 3)


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError):
        speech.SpeechSettings(sample_rate=44100)
    with pytest.raises(ValueError, match="unknown splits"):
        speech.render_dataset("/nonexistent", {"dev": 1})
