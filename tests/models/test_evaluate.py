"""Evaluation: metrics on toy cases with known answers, oracle bounds, report, figure, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stemserve.models import registry
from stemserve.models.checkpoint import save_checkpoint
from stemserve.models.data import music
from stemserve.models.data.wavfile import write_wav
from stemserve.models.evaluate import best_permutation, evaluate, ideal_ratio_mask, score, sdr, si_sdr, write_figure

RATE = 16000
TINY_UNET = {"n_fft": 256, "hop_length": 64, "bins": 128, "window_frames": 16, "channels": [4, 8], "dropout": 0.0}


def _toy_stems(seed: int, seconds: float = 2.0, channels: int = 2) -> np.ndarray:
    """Four clearly different stems (S, C, T): clicks, a low tone, a chord, a high vibrato tone."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    clicks = np.zeros_like(t)
    clicks[:: RATE // 4] = 1.0
    clicks = np.convolve(clicks, rng.standard_normal(200) * np.exp(-np.arange(200) / 30), mode="same")
    low = np.sin(2 * np.pi * (55 + 10 * seed) * t)
    chord = sum(np.sin(2 * np.pi * f * t) for f in (262, 330, 392)) / 3
    lead = np.sin(2 * np.pi * (880 + 20 * np.sin(2 * np.pi * 5 * t)) * t)
    stems = np.stack([clicks, low, chord, lead]) * 0.2
    pans = np.array([[1.0, 0.8], [1.0, 1.0], [0.6, 1.0], [0.9, 0.7]])[:, :channels]
    return (stems[:, None, :] * pans[:, :, None]).astype(np.float32)


@pytest.fixture()
def toy_music(tmp_path: Path) -> Path:
    for index in range(2):
        folder = tmp_path / "test" / music.track_name(index)
        folder.mkdir(parents=True)
        stems = _toy_stems(index)
        for name, stem in zip(music.SOURCES, stems, strict=True):
            write_wav(folder / f"{name}.wav", stem, RATE)
        write_wav(folder / "mixture.wav", stems.sum(0), RATE)
    return tmp_path


def test_perfect_estimate_scores_very_high() -> None:
    stems = _toy_stems(0)
    for row in score(stems, stems.copy(), RATE):
        assert row["sdr"] > 60 and row["si_sdr"] > 60


def test_mixture_as_estimate_is_the_lower_baseline() -> None:
    stems = _toy_stems(0)
    mixture = np.repeat(stems.sum(0)[None], 4, axis=0)
    rows = score(stems, mixture, RATE)
    assert all(r["sdr"] < 10 for r in rows)
    # The quietest stem (clicks) drowns in the mixture; the loudest is near 0 dB.
    assert rows[0]["si_sdr"] < -15 and -5 < rows[1]["si_sdr"] < 5


def test_si_sdr_of_signal_plus_orthogonal_noise_is_their_power_ratio() -> None:
    rng = np.random.default_rng(3)
    signal = rng.standard_normal(8000)
    signal -= signal.mean()
    noise = rng.standard_normal(8000)
    noise -= noise.mean()
    noise -= (noise @ signal) / (signal @ signal) * signal  # exactly orthogonal to the signal
    noise *= np.sqrt((signal @ signal) / (noise @ noise)) * 10 ** (-12 / 20)  # 12 dB below
    assert si_sdr(signal, signal + noise) == pytest.approx(12.0, abs=1e-6)
    assert si_sdr(signal, 3.0 * (signal + noise)) == pytest.approx(12.0, abs=1e-6)  # scale-invariant


def test_oracle_ratio_mask_beats_the_mixture_and_sums_to_it() -> None:
    stems = _toy_stems(1)
    mixture = stems.sum(0)
    irm = ideal_ratio_mask(mixture, stems, 1024, 256)
    assert irm.shape == stems.shape
    assert np.max(np.abs(irm.sum(0) - mixture)) < 1e-4
    oracle = score(stems, irm, RATE)
    lower = score(stems, np.repeat(mixture[None], 4, axis=0), RATE)
    for o, m in zip(oracle, lower, strict=True):
        assert o["sdr"] > m["sdr"] + 5 and o["si_sdr"] > m["si_sdr"] + 5


def test_scale_invariance_and_silence() -> None:
    stems = _toy_stems(0)
    assert si_sdr(stems[3], 0.1 * stems[3]) > 60
    assert np.isnan(si_sdr(np.zeros((2, 1000)), stems[3][:, :1000]))
    assert np.isnan(sdr(np.zeros((2, RATE)), stems[3][:, :RATE], RATE))
    assert sdr(stems[3], np.zeros_like(stems[3]), RATE) == -100.0


def test_best_permutation_matches_swapped_speakers() -> None:
    stems = _toy_stems(0, channels=1)[[1, 3]]
    assert best_permutation(stems, stems[[1, 0]]) == [1, 0]
    assert best_permutation(stems, stems) == [0, 1]


def _oracle_separate(root: Path, sources: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """A stand-in for the model that returns the true stems of whichever track it is given."""
    tracks = {}
    for folder in music.iter_tracks(root, "test"):
        stems = np.stack([_read(folder / f"{s}.wav") for s in sources])
        tracks[_read(folder / "mixture.wav").tobytes()] = stems

    def separate(wav: torch.Tensor, target: int | None) -> torch.Tensor:
        stems = tracks[wav.numpy().tobytes()]
        return torch.from_numpy(stems if target is None else stems[target : target + 1])

    return separate


def _read(path: Path) -> np.ndarray:
    import soundfile as sf

    audio, _ = sf.read(str(path), dtype="float32", always_2d=True)
    return np.ascontiguousarray(audio.T)


def test_evaluate_reports_model_oracle_and_mixture(toy_music: Path, tmp_path: Path) -> None:
    model = registry.build("multi_unet", {**TINY_UNET, "sample_rate": RATE})
    sources = model.describe().sources
    report, first = evaluate(model, toy_music, separate=_oracle_separate(toy_music, sources))
    assert [t["name"] for t in report["tracks"]] == ["track00000", "track00001"]
    assert report["sources"] == list(sources)
    for stem in sources:
        model_sdr = report["summary"]["model"][stem]["sdr"]
        irm_sdr = report["summary"]["irm"][stem]["sdr"]
        mix_sdr = report["summary"]["mixture"][stem]["sdr"]
        assert model_sdr > 60 and irm_sdr > mix_sdr
        for track in report["tracks"]:
            reference = _toy_stems(int(track["name"][-1]))[music.SOURCES.index(stem)]
            mixture = _toy_stems(int(track["name"][-1])).sum(0)
            assert track["mixture"][stem]["si_sdr"] == pytest.approx(si_sdr(reference, mixture), abs=1e-4)
    # The oracle-separated "model" scores about 100 dB: far past the IRM's share of 1.
    assert all(report["irm_share"][stem] > 1 for stem in sources)
    json.dumps(report, allow_nan=False)  # strict JSON: NaN became null
    assert first is not None
    png = write_figure(report, first, tmp_path / "figure.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_a_subset_of_targets_of_a_conditioned_model(toy_music: Path) -> None:
    model = registry.build("conditioned_unet", {**TINY_UNET, "sample_rate": RATE, "film_hidden": 4})
    sources = model.describe().sources
    report, _ = evaluate(model, toy_music, targets=["bass"], separate=_oracle_separate(toy_music, sources))
    assert report["sources"] == ["bass"] and set(report["summary"]["model"]) == {"bass"}
    assert report["summary"]["model"]["bass"]["sdr"] > 60


def test_silent_stems_are_left_out_of_the_medians(toy_music: Path) -> None:
    write_wav(toy_music / "test" / "track00000" / "vocals.wav", np.zeros((2, 2 * RATE), np.float32), RATE)
    model = registry.build("multi_unet", {**TINY_UNET, "sample_rate": RATE})
    report, _ = evaluate(model, toy_music, separate=_oracle_separate(toy_music, model.describe().sources))
    assert report["tracks"][0]["model"]["vocals"]["sdr"] is None
    assert report["summary"]["model"]["vocals"]["sdr"] == report["tracks"][1]["model"]["vocals"]["sdr"]


def test_cli_writes_report_and_figure(toy_music: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stemserve.server.cli import main

    checkpoint = save_checkpoint(registry.build("unet", {**TINY_UNET, "sample_rate": RATE}), tmp_path / "unet.pt")
    out, figure = tmp_path / "report.json", tmp_path / "report.png"
    code = main(["eval", "--model", str(checkpoint), "--data", str(toy_music), "--out", str(out),
                 "--figure", str(figure), "--no-progress"])  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report["sources"] == ["vocals"] and len(report["tracks"]) == 2
    assert report["summary"]["irm"]["vocals"]["sdr"] > report["summary"]["mixture"]["vocals"]["sdr"]
    assert figure.read_bytes()[:4] == b"\x89PNG"
    assert "vocals" in capsys.readouterr().out
    assert main(["eval", "--model", str(checkpoint), "--data", str(tmp_path / "nothing"), "--no-progress"]) == 2


def test_irm_share_places_the_model_between_mixture_and_oracle() -> None:
    from stemserve.models.evaluate import irm_share

    def at(model: float, irm: float, mixture: float) -> dict[str, dict[str, float]]:
        return {"model": {"sdr": model}, "irm": {"sdr": irm}, "mixture": {"sdr": mixture}}

    stems = {"a": at(4.0, 10.0, -2.0), "b": at(-2.0, 8.0, -2.0), "c": at(3.0, 1.0, 2.0)}
    summary = {m: {s: v[m] for s, v in stems.items()} for m in ("model", "irm", "mixture")}
    share = irm_share(summary, ["a", "b", "c"])
    assert share["a"] == pytest.approx(0.5) and share["b"] == 0.0
    assert math.isnan(share["c"])  # the oracle does not beat the mixture: no scale
    assert share["mean"] == pytest.approx(0.25)


def test_by_default_the_model_is_scored_as_a_file_job_computes_it_and_live_is_a_setting(toy_music: Path) -> None:
    from stemserve.models.apply import file_plan, plan_for, separate_signal
    from stemserve.models.evaluate import EvaluationError

    torch.manual_seed(0)
    model = registry.build("multi_unet", {**TINY_UNET, "sample_rate": RATE}).eval()
    d = model.describe()

    def with_plan(plan):  # type: ignore[no-untyped-def]
        def separate(wav: torch.Tensor, target: int | None) -> torch.Tensor:
            with torch.no_grad():
                return separate_signal(model, wav, target, plan=plan)

        return separate

    def model_sdrs(report: dict) -> list[float]:  # type: ignore[type-arg]
        return [t["model"][s]["sdr"] for t in report["tracks"] for s in d.sources]

    default, _ = evaluate(model, toy_music, keep_first=False)
    live, _ = evaluate(model, toy_music, plan="live", keep_first=False)
    assert model_sdrs(default) == model_sdrs(evaluate(model, toy_music, separate=with_plan(file_plan(d)))[0])
    assert model_sdrs(live) == model_sdrs(evaluate(model, toy_music, separate=with_plan(plan_for(d)))[0])
    assert model_sdrs(default) != model_sdrs(live)  # the plans tile the signal differently
    with pytest.raises(EvaluationError, match="unknown plan"):
        evaluate(model, toy_music, plan="fast")
