"""Rendering variety: soundfont pools, a held-out soundfont, humanisation, SoX effects, loudness, labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stemserve.models.data import labels, music, variety

# The two quick-loading soundfonts (the sf3 ones decompress for a second or two per stem).
QUICK_POOL = ("FluidR3_GM", "TimGM6mb")
VARIED = music.RenderSettings(
    seconds=2.0, soundfonts=QUICK_POOL, timing_ms=8.0, velocity_spread=8.0, effects=True, loudness_db=4.0
)


@pytest.fixture(scope="module")
def varied(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    base = tmp_path_factory.mktemp("varied")
    return [music.render_track(base / name, "train", 0, 11, VARIED) for name in ("a", "b")]


def test_every_listed_soundfont_is_installed() -> None:
    for name in variety.GM_SOUNDFONTS:
        assert variety.resolve_soundfont(name).is_file()


def test_the_held_out_soundfont_is_in_no_training_pool() -> None:
    assert variety.HELD_OUT_SOUNDFONT in variety.GM_SOUNDFONTS
    assert variety.HELD_OUT_SOUNDFONT not in variety.TRAIN_SOUNDFONTS
    default = music.find_soundfont()
    pool = [variety.resolve_soundfont(n) for n in variety.TRAIN_SOUNDFONTS]
    used = {
        Path(c.soundfont)
        for seed in range(40)
        for c in variety.choose(seed, music.SOURCES, variety.TRAIN_SOUNDFONTS, True, 4.0, default).values()
    }
    assert used == set(pool)  # all of the pool is used, nothing else


def test_defaults_render_what_they_always_did(tmp_path: Path) -> None:
    plan = music.plan_song(5, 2.0)
    meta = music._meta(plan, music.RenderSettings(seconds=2.0), "train", 0)
    assert set(meta["settings"]) == {"seconds", "sample_rate", "subtype", "soundfont", "peak"}
    assert "production" not in meta  # so sets rendered before the variety fields stay complete
    assert music.performed_parts(plan, music.RenderSettings(seconds=2.0)) is plan.parts


def test_a_varied_track_is_deterministic_and_still_sums_to_its_mixture(varied: list[Path]) -> None:
    a, b = varied
    for name in ["mixture.wav", *(f"{s}.wav" for s in music.SOURCES), "meta.json", "notes.json"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    mixture = sf.read(str(a / "mixture.wav"), dtype="float32")[0]
    stems = sum(sf.read(str(a / f"{s}.wav"), dtype="float32")[0] for s in music.SOURCES)
    assert np.abs(mixture - stems).max() < 1e-6
    production = json.loads((a / "meta.json").read_text())["production"]
    assert set(production) == set(music.SOURCES)
    assert {p["soundfont"] for p in production.values()} <= set(QUICK_POOL)
    assert all(abs(p["gain_db"]) <= 4.0 for p in production.values())


def test_variety_changes_the_sound_of_the_same_notes(varied: list[Path], tmp_path: Path) -> None:
    plain = music.render_track(tmp_path, "train", 0, 11, music.RenderSettings(seconds=2.0))
    for stem in music.SOURCES:
        x = sf.read(str(plain / f"{stem}.wav"), dtype="float32")[0]
        y = sf.read(str(varied[0] / f"{stem}.wav"), dtype="float32")[0]
        if np.abs(x).max() > 0:
            assert not np.allclose(x / np.abs(x).max(), y / max(np.abs(y).max(), 1e-9), atol=1e-3), stem


def test_humanisation_moves_onsets_by_the_stated_spread() -> None:
    plan = music.plan_song(3, 20.0)
    settings = music.RenderSettings(seconds=20.0, timing_ms=10.0, velocity_spread=6.0)
    performed = music.performed_parts(plan, settings)
    beat_ms = 60_000.0 / plan.tempo
    shifts, steps = [], []
    for stem in music.SOURCES:
        for before, after in zip(plan.parts[stem], performed[stem], strict=True):
            for n, m in zip(before.notes, after.notes, strict=True):
                assert m.pitch == n.pitch and m.duration == n.duration and 1 <= m.velocity <= 127
                if n.start > 0.1:  # away from the clamp at the song start
                    shifts.append((m.start - n.start) * beat_ms)
                steps.append(m.velocity - n.velocity)
    assert len(shifts) > 200
    assert 8.5 < np.std(shifts) < 11.5 and abs(np.mean(shifts)) < 1.5
    assert 4.5 < np.std(steps) < 7.0


def test_reverb_adds_a_tail_and_boosts_never_clip(tmp_path: Path) -> None:
    rate = 44100
    impulse = np.zeros((2, rate), dtype=np.float32)
    impulse[:, 100] = 1.0
    wet = variety.apply_effects(impulse, rate, [("reverb", "80", "50", "100", "100", "0", "-3")], tmp_path)
    assert wet.shape == impulse.shape
    assert np.sum(wet[:, 4410:] ** 2) > 1e-4  # energy 0.1 s after the impulse
    loud = 3.0 * np.sin(2 * np.pi * 1000 * np.arange(rate) / rate).astype(np.float32)[None].repeat(2, 0)
    boosted = variety.apply_effects(loud, rate, [("gain", "6")], tmp_path)
    assert 5.5 < np.abs(boosted).max() < 6.5  # 3.0 * 2: passed through SoX below its clipping point


def test_unknown_soundfonts_and_bad_spreads_are_rejected() -> None:
    with pytest.raises(ValueError, match="not found"):
        music.RenderSettings(soundfonts=("NoSuchFont",))
    with pytest.raises(ValueError, match="not both"):
        music.RenderSettings(soundfont=music.SOUNDFONT_CANDIDATES[0], soundfonts=QUICK_POOL)
    with pytest.raises(ValueError):
        music.RenderSettings(timing_ms=-1.0)


def test_labels_mark_each_frame_by_the_notes_at_its_centre() -> None:
    notes = {
        "drums": np.array([[0.0, 0.5, 36.0]]),
        "bass": np.zeros((0, 3)),
        "other": np.array([[1.0, 2.0, 60.0]]),
        "vocals": np.array([[0.25, 1.0, 69.0], [0.9, 1.5, 72.0]]),  # overlapping: the later onset wins
    }
    # n_fft 1000, hop 500 at 1 kHz: frame k's centre is at 0.5 + 0.5 k seconds.
    got = labels.frame_labels(notes, music.SOURCES, start=0, frames=4, n_fft=1000, hop=500, sample_rate=1000)
    np.testing.assert_array_equal(got.activity[0], [0, 0, 0, 0])  # drums end at 0.5 (offset exclusive)
    np.testing.assert_array_equal(got.activity[1], [0, 0, 0, 0])
    np.testing.assert_array_equal(got.activity[2], [0, 1, 1, 0])  # centres 0.5, 1.0, 1.5, 2.0
    np.testing.assert_array_equal(got.f0, [69, 72, 0, 0])
    np.testing.assert_array_equal(got.voiced, [1, 1, 0, 0])
    later = labels.frame_labels(notes, music.SOURCES, start=250, frames=1, n_fft=1000, hop=500, sample_rate=1000)
    assert later.f0[0] == 69 and later.activity[:, 0].tolist() == [0, 0, 0, 1]  # centre 0.75


def test_labels_of_a_rendered_track_follow_its_audio(tmp_path: Path) -> None:
    settings = music.RenderSettings(seconds=6.0, timing_ms=5.0)
    track = music.render_track(tmp_path, "test", 0, 21, settings)
    notes = labels.read_notes(track)
    n_fft, hop, rate = 4096, 1024, music.SAMPLE_RATE
    frames = 1 + (int(6.0 * rate) - n_fft) // hop
    got = labels.frame_labels(notes, music.SOURCES, 0, frames, n_fft, hop, rate)
    vocals = sf.read(str(track / "vocals.wav"), dtype="float64")[0].mean(axis=1)
    centres = (np.arange(frames) * hop + n_fft // 2).astype(int)
    energy = np.array([np.mean(vocals[c - hop // 2 : c + hop // 2] ** 2) for c in centres])
    assert got.voiced.sum() > 10
    assert energy[got.voiced == 1].mean() > 5 * energy[got.voiced == 0].mean()
    # Raw pitch at voiced frames: the strongest harmonic-sum candidate within the lead's range.
    hz = labels.midi_to_hz(got.f0)
    correct = 0
    for k in np.flatnonzero(got.voiced):
        segment = vocals[k * hop : k * hop + n_fft] * np.hanning(n_fft)
        spectrum = np.abs(np.fft.rfft(segment, 8 * n_fft))
        candidates = 440.0 * 2.0 ** ((np.arange(45, 90, 0.1) - 69) / 12)
        salience = [sum(spectrum[int(round(h * f * 8 * n_fft / rate))] / h for h in range(1, 5)) for f in candidates]
        best = candidates[int(np.argmax(salience))]
        correct += abs(1200 * np.log2(best / hz[k])) < 50
    assert correct / got.voiced.sum() > 0.6
    with pytest.raises(labels.LabelError, match="render the track again"):
        labels.read_notes(tmp_path)
