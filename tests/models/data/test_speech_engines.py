"""Speech synthesisers: espeak-ng and flite (real subprocesses), the engine pool and the held-out engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stemserve.models.data import speech

ONE_EACH = {"tt": 1}


def _render(root: Path, engines: tuple[str, ...], seed: int = 3, voices: tuple[str, ...] = ()) -> Path:
    settings = speech.SpeechSettings(seconds=1.5, engines=engines, voices=voices)
    speech.render_dataset(root, ONE_EACH, base_seed=seed, settings=settings, workers=1)
    return root


def _speakers(root: Path) -> list[speech.Speaker]:
    entries = json.loads((root / "tt" / "mixtures.json").read_text())
    return [speech.Speaker(**s) for entry in entries for s in entry["speakers"]]


@pytest.mark.parametrize("engine", speech.ENGINES)
def test_each_engine_renders_a_mixture_that_sums(tmp_path: Path, engine: str) -> None:
    root = _render(tmp_path, (engine,))
    (ident,) = speech.list_mixtures(root, "tt")
    mix, s1, s2 = (sf.read(str(root / "tt" / f / f"{ident}.wav"), dtype="float32")[0] for f in ("mix", "s1", "s2"))
    assert mix.shape == s1.shape == s2.shape == (12000,)
    assert np.max(np.abs(mix - (s1 + s2))) <= 1e-6
    assert -5.0 <= speech.snr_db(s1, s2) <= 5.0 and 0 < np.max(np.abs(mix)) <= 0.9
    # Both sources hold speech (not silence) from the named engine.
    assert min(speech.power(s1), speech.power(s2)) > 1e-7
    speakers = _speakers(root)
    assert [s.engine for s in speakers] == [engine, engine]
    assert all(s.voice in speech.ENGINE_VOICES[engine] for s in speakers) and speech.different(*speakers)
    manifest = json.loads((root / "dataset.json").read_text())
    assert manifest.get("engines", ["espeak-ng"]) == [engine]


def test_the_default_pool_is_espeak_ng_as_recorded_before_engines(tmp_path: Path) -> None:
    root = _render(tmp_path, speech.TRAIN_ENGINES)
    entries = json.loads((root / "tt" / "mixtures.json").read_text())
    assert all("engine" not in s for entry in entries for s in entry["speakers"])
    assert "engines" not in json.loads((root / "dataset.json").read_text())
    assert speech.HELD_OUT_ENGINE not in speech.TRAIN_ENGINES


def test_flite_is_deterministic_and_follows_pitch_and_rate() -> None:
    text = "the teacher sings near the river"
    low = speech.Speaker("slt", "", pitch=20, rate=160, engine="flite")
    a, rate_a = speech.synthesise(text, low)
    b, _ = speech.synthesise(text, low)
    assert rate_a == 16000 and np.array_equal(a, b)
    high, _ = speech.synthesise(text, speech.Speaker("slt", "", pitch=79, rate=160, engine="flite"))
    slow, _ = speech.synthesise(text, speech.Speaker("slt", "", pitch=20, rate=120, engine="flite"))
    assert len(high) == len(a) and not np.array_equal(high, a)
    assert len(slow) > 1.2 * len(a)  # 160 / 120 = 1.33 times the durations


def test_a_mixed_pool_draws_both_engines_and_voices_restrict_it() -> None:
    rng = np.random.default_rng(0)
    both = [speech.random_speaker(rng, ("espeak-ng", "flite")) for _ in range(100)]
    assert {s.engine for s in both} == {"espeak-ng", "flite"}
    assert {s.voice for s in both if s.engine == "flite"} == set(speech.FLITE_VOICES)
    only = [speech.random_speaker(rng, ("flite",), ("slt", "awb")) for _ in range(50)]
    assert {s.voice for s in only} == {"slt", "awb"}


def test_flite_speakers_differ_only_where_the_voice_follows_the_pitch() -> None:
    slt_low, slt_high = (speech.Speaker("slt", "", p, 160, "flite") for p in (20, 60))
    rms_low, rms_high = (speech.Speaker("rms", "", p, 160, "flite") for p in (20, 60))
    assert speech.different(slt_low, slt_high) and speech.different(slt_low, rms_low)
    assert not speech.different(rms_low, rms_high)  # rms ignores the f0 scale: one voice


def test_bad_engine_settings_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown engines"):
        speech.SpeechSettings(engines=("festival",))
    with pytest.raises(ValueError, match="belong"):
        speech.SpeechSettings(engines=("flite",), voices=("en",))
    with pytest.raises(ValueError, match="belongs"):
        speech.SpeechSettings(engines=("espeak-ng", "flite"), voices=("slt",))
    monkeypatch.setattr(speech.shutil, "which", lambda name: None)
    with pytest.raises(speech.SynthesisError, match="apt-get install flite"):
        speech.render_dataset("/nonexistent", ONE_EACH, settings=speech.SpeechSettings(engines=("flite",)))
