"""Torch datasets over the MUSDB and wsj0-2mix layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stemserve.models.data import music
from stemserve.models.data.augment import AugmentConfig
from stemserve.models.data.datasets import DataError, MusicStems, SpeechMixtures
from tests.models.data.tiny import render_music, render_speech


@pytest.fixture(scope="module")
def music_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_music(tmp_path_factory.mktemp("music"))


@pytest.fixture(scope="module")
def speech_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_speech(tmp_path_factory.mktemp("speech"))


def test_music_windows_cover_every_track_in_order(music_root: Path) -> None:
    data = MusicStems(music_root, "valid", segment_seconds=0.5)
    assert len(data) == 4  # one 2 s track in 0.5 s windows
    mixture, stems = data[1]
    assert mixture.shape == (2, 22050) and stems.shape == (4, 2, 22050)
    assert torch.allclose(mixture, stems.sum(0), atol=1e-6)
    whole = MusicStems(music_root, "valid", segment_seconds=None)
    full_mixture, _ = whole[0]
    assert torch.equal(full_mixture[:, 22050:44100], mixture)


def test_music_stems_follow_the_stated_order(music_root: Path) -> None:
    default = MusicStems(music_root, "test", segment_seconds=None)
    assert default.sources == music.SOURCES == ("drums", "bass", "other", "vocals")
    reordered = MusicStems(music_root, "test", segment_seconds=None, sources=("vocals", "drums"))
    _, all_stems = default[0]
    mixture, stems = reordered[0]
    assert torch.equal(stems, all_stems[[3, 0]])
    assert torch.equal(mixture, default[0][0])  # still the full mix


def test_random_examples_are_a_function_of_seed_epoch_and_index(music_root: Path) -> None:
    data = MusicStems(music_root, "train", 0.25, augment=AugmentConfig(), seed=3)
    again = MusicStems(music_root, "train", 0.25, augment=AugmentConfig(), seed=3)
    assert all(torch.equal(data[i][0], again[i][0]) for i in range(4))
    first = data[0][1]
    data.set_epoch(1)
    assert not torch.equal(data[0][1], first)


def test_augmented_subset_mixture_is_the_sum_of_every_stem(music_root: Path) -> None:
    full = MusicStems(music_root, "train", 0.25, augment=AugmentConfig(drop_probability=0.0), seed=1)
    vocals = MusicStems(
        music_root, "train", 0.25, augment=AugmentConfig(drop_probability=0.0), sources=("vocals",), seed=1
    )
    for i in range(4):
        mixture, stems = full[i]
        assert torch.equal(mixture, stems.sum(0))
        assert torch.equal(vocals[i][0], mixture) and torch.equal(vocals[i][1], stems[3:])


def test_repitched_examples_are_deterministic_full_length_and_still_sum_to_the_mixture(music_root: Path) -> None:
    config = AugmentConfig(drop_probability=0.0, repitch_probability=1.0)
    data = MusicStems(music_root, "train", 0.25, augment=config, seed=4)
    plain = MusicStems(music_root, "train", 0.25, augment=AugmentConfig(drop_probability=0.0), seed=4)
    for i in range(4):
        mixture, stems = data[i]
        assert stems.shape == plain[i][1].shape
        assert torch.equal(mixture, stems.sum(0))
        assert torch.equal(stems, data[i][1])
    assert not torch.equal(data[0][1], plain[0][1])


def test_mono_and_resampled_music(music_root: Path) -> None:
    data = MusicStems(music_root, "valid", 0.5, sample_rate=22050, channels=1)
    mixture, stems = data[0]
    assert mixture.shape == (1, 11025) and stems.shape == (4, 1, 11025)


def test_speech_mixtures_shapes(speech_root: Path) -> None:
    data = SpeechMixtures(speech_root, "tt")
    mixture, sources = data[0]
    assert mixture.shape == (1, 16000) and sources.shape == (2, 1, 16000)
    assert torch.allclose(mixture, sources.sum(0), atol=1e-6)
    train = SpeechMixtures(speech_root, "train", segment_seconds=0.5, seed=0)
    assert train.random_crop and train[0][0].shape == (1, 4000)


def test_missing_data_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no tracks"):
        MusicStems(tmp_path, "train", 1.0)
    with pytest.raises(DataError, match="no mixtures"):
        SpeechMixtures(tmp_path, "tr", 1.0)
    with pytest.raises(ValueError, match="segment_seconds"):
        MusicStems(render_music(tmp_path / "m", seconds=1.0), "train", None, random_crop=True)
