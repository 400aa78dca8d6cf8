"""Procedural multi-stem music: determinism, exact stems, layout, seeds, arrangement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stemserve.models.data import music
from tests.models.data.tiny import MUSIC_COUNTS, files_of, render_music


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("music")
    return {
        "a": render_music(base / "a", seed=0),
        "b": render_music(base / "b", seed=0),
        "c": render_music(base / "c", seed=1),
    }


def test_same_seed_gives_byte_identical_files(rendered: dict[str, Path]) -> None:
    a, b = files_of(rendered["a"]), files_of(rendered["b"])
    assert a.keys() == b.keys()
    assert all(a[name] == b[name] for name in a)


def test_different_seed_gives_different_audio(rendered: dict[str, Path]) -> None:
    a, c = files_of(rendered["a"]), files_of(rendered["c"])
    wavs = [name for name in a if name.endswith("mixture.wav")]
    assert wavs and all(a[name] != c[name] for name in wavs)


def test_layout_is_musdb(rendered: dict[str, Path]) -> None:
    root = rendered["a"]
    for split, count in MUSIC_COUNTS.items():
        tracks = list(music.iter_tracks(root, split))
        assert len(tracks) == count
        for track in tracks:
            for name in ("mixture", *music.SOURCES):
                info = sf.info(str(track / f"{name}.wav"))
                assert (info.samplerate, info.channels, info.frames, info.subtype) == (44100, 2, 88200, "FLOAT")
            meta = json.loads((track / "meta.json").read_text())
            assert meta["sources"] == list(music.SOURCES) and meta["split"] == split
    manifest = json.loads((root / "dataset.json").read_text())
    assert manifest["splits"] == MUSIC_COUNTS and manifest["kind"] == "music"


def test_stems_sum_to_the_mixture(rendered: dict[str, Path]) -> None:
    for split in MUSIC_COUNTS:
        for track in music.iter_tracks(rendered["a"], split):
            mixture, _ = sf.read(str(track / "mixture.wav"), dtype="float32")
            stems = [sf.read(str(track / f"{s}.wav"), dtype="float32")[0] for s in music.SOURCES]
            assert np.max(np.abs(mixture - np.sum(stems, axis=0))) <= 1e-6
            assert 0.01 < np.max(np.abs(mixture)) <= 0.9
            assert sum(float(np.abs(s).max()) > 0 for s in stems) >= 2  # a mixture, not a solo


def test_pcm16_stems_still_sum_exactly(tmp_path: Path) -> None:
    settings = music.RenderSettings(seconds=1.0, subtype="PCM_16")
    track = music.render_track(tmp_path, "test", 0, 3, settings)
    mixture, _ = sf.read(str(track / "mixture.wav"), dtype="float64")
    stems = sum(sf.read(str(track / f"{s}.wav"), dtype="float64")[0] for s in music.SOURCES)
    assert sf.info(str(track / "mixture.wav")).subtype == "PCM_16"
    assert np.max(np.abs(mixture - stems)) <= 1e-6


def test_complete_tracks_are_not_rendered_again(rendered: dict[str, Path]) -> None:
    track = rendered["a"] / "train" / "track00000"
    before = (track / "mixture.wav").stat().st_mtime_ns
    music.render_track(rendered["a"], "train", 0, 0, music.RenderSettings(seconds=2.0))
    assert (track / "mixture.wav").stat().st_mtime_ns == before


def test_split_seeds_are_disjoint() -> None:
    seeds = {split: {music.track_seed(0, split, i) for i in range(500)} for split in music.SPLITS}
    assert all(len(s) == 500 for s in seeds.values())
    assert (
        not seeds["train"] & seeds["test"]
        and not seeds["train"] & seeds["valid"]
        and not seeds["valid"] & seeds["test"]
    )
    assert music.track_seed(0, "train", 0) != music.track_seed(1, "train", 0)
    with pytest.raises(ValueError, match="unknown split"):
        music.track_seed(0, "dev", 0)


def test_plans_are_deterministic_and_vary() -> None:
    assert music.plan_song(7, 10.0).summary() == music.plan_song(7, 10.0).summary()
    plans = [music.plan_song(seed, 10.0) for seed in range(60)]
    assert len({round(p.tempo) for p in plans}) > 20
    assert {p.mode for p in plans} == {"major", "minor"}
    assert len({p.parts["vocals"][0].program for p in plans}) > 8


def test_instruments_come_from_each_stems_family() -> None:
    for seed in range(40):
        plan = music.plan_song(seed, 6.0)
        assert all(p.channel == music.DRUM_CHANNEL and p.program in music.DRUM_KITS for p in plan.parts["drums"])
        assert all(p.program in music.BASS_PROGRAMS for p in plan.parts["bass"])
        assert all(p.program in music.CHORD_PROGRAMS for p in plan.parts["other"])
        assert all(p.program in music.LEAD_PROGRAMS for p in plan.parts["vocals"])
        assert all(p.channel != music.DRUM_CHANNEL for s in ("bass", "other", "vocals") for p in plan.parts[s])


def test_arrangements_have_silent_sections_and_shared_registers() -> None:
    silent_sections = 0
    overlapping = 0
    for seed in range(40):
        plan = music.plan_song(seed, 12.0)
        silent_sections += sum(len(s["active"]) < len(music.SOURCES) for s in plan.sections)
        lead = [n.pitch for n in plan.parts["vocals"][0].notes]
        chords = [n.pitch for p in plan.parts["other"] for n in p.notes]
        if lead and chords and min(lead) <= max(chords):
            overlapping += 1
    assert silent_sections > 10  # stems come and go
    assert overlapping > 10  # the lead often shares the chords' register


def test_missing_soundfont_is_reported(tmp_path: Path) -> None:
    settings = music.RenderSettings(seconds=1.0, soundfont=str(tmp_path / "none.sf2"))
    with pytest.raises(music.RenderError, match="not found"):
        music.render_dataset(tmp_path, {"train": 1}, settings=settings)


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError):
        music.RenderSettings(seconds=0)
    with pytest.raises(ValueError):
        music.RenderSettings(subtype="MP3")
