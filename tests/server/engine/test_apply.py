"""The offline reference (models/apply.py): plans, their latency, and what separation means."""

from __future__ import annotations

import pytest
import torch

from stemserve.models import registry
from stemserve.models.apply import (
    OverlapAdd,
    WindowPlan,
    causal_plan,
    overlap_windows,
    plan_for,
    separate_signal,
    unordered_sources,
    window_plan,
)
from tests.server.engine.tiny_models import (
    TinyCausalConfig,
    TinyCausalNet,
    TinyChunkConfig,
    TinyChunkNet,
    TinySpecConfig,
    TinySpecNet,
)

BUDGET_SAMPLES_44K = 11025  # the product limit: 250 ms at 44.1 kHz


def unet_description(window_frames: int | None = None):
    overrides = {} if window_frames is None else {"window_frames": window_frames}
    return registry.build("unet", overrides).describe()


def test_default_daw_unet_plan_fits_the_latency_budget() -> None:
    d = unet_description(32)  # n_fft 1024, hop 256, 32-frame windows at 44.1 kHz
    plan = window_plan(d)
    assert (plan.size, plan.hop, plan.lookahead, plan.weighting) == (32, 8, 8, "taper")
    # A sample waits for the rest of its frame (n_fft - 1) and 23 more frames:
    # 8 of right context plus the 16-frame cross-fade, less one.
    assert plan.delay == 23
    assert plan.latency == 1023 + 23 * 256 == 6911
    assert plan.latency <= BUDGET_SAMPLES_44K


def test_wide_windows_shrink_to_the_budget() -> None:
    d = unet_description()  # the preset's own (wider) window
    plan = window_plan(d)
    assert plan.latency <= int(0.2 * 44100)
    assert plan.size == d.window_frames  # the model still sees its trained shape
    with pytest.raises(ValueError, match="budget"):
        window_plan(d, window_hop=64, lookahead=64, max_latency_s=0.2)


@pytest.mark.parametrize("weighting", ["taper", "hard"])
@pytest.mark.parametrize(("size", "hop", "lookahead"), [(8, 2, 2), (8, 3, 0), (5, 1, 1), (32, 8, 8)])
def test_window_weights_cover_every_unit(weighting: str, size: int, hop: int, lookahead: int) -> None:
    plan = WindowPlan(size, hop, lookahead, weighting)  # type: ignore[arg-type]
    w = plan.weights(torch.float64)
    total = torch.zeros(200 + size, dtype=torch.float64)
    for j in range(plan.windows_for(100)):
        s = plan.start(j) + size  # shifted so negative starts fit
        total[s : s + size] += w
    covered = total[size : size + 100]
    assert bool((covered > 0).all())
    if weighting == "taper" and plan.support == 2 * hop:
        torch.testing.assert_close(covered, torch.ones(100, dtype=torch.float64))
    # the last window with weight on unit k ends `delay` units after k
    assert plan.final_after(plan.windows_for(100) - 1) >= 100


def test_overlap_add_of_constant_estimates_is_constant() -> None:
    plan = WindowPlan(8, 2, 2, "taper")
    acc = OverlapAdd(plan, stems=2, rest=(3,))
    pieces = []
    for _ in range(10):
        acc.add(torch.full((2, 3, 8), 0.5))
        pieces.append(acc.complete())
    out = torch.cat(pieces, dim=-1)
    assert out.shape == (2, 3, 20)
    torch.testing.assert_close(out, torch.full_like(out, 0.5))


@pytest.mark.parametrize(("n_fft", "hop"), [(64, 16), (48, 16), (60, 16), (64, 32)])
@pytest.mark.parametrize("weighting", ["taper", "hard"])
def test_identity_spectrogram_model_reconstructs_the_input(n_fft: int, hop: int, weighting: str) -> None:
    model = TinySpecNet(TinySpecConfig(identity=True, n_fft=n_fft, hop_length=hop, window_frames=6))
    wav = torch.randn(2, 1001)
    out = separate_signal(model, wav, plan=window_plan(model.describe(), weighting=weighting))  # type: ignore[arg-type]
    assert out.shape == (3, 2, 1001)
    torch.testing.assert_close(out, wav[None].expand(3, 2, 1001), atol=1e-5, rtol=0)


def test_spectrogram_windows_use_the_model_on_its_trained_shape() -> None:
    model = TinySpecNet()  # raises on any other window length
    out = separate_signal(model, torch.randn(2, 777))
    assert out.shape == (3, 2, 777)
    assert torch.isfinite(out).all()


def test_conditioned_target_selects_one_stem() -> None:
    model = TinySpecNet(TinySpecConfig(conditioned=True))
    wav = torch.randn(2, 900)
    every = separate_signal(model, wav)
    assert every.shape == (3, 2, 900)
    one = separate_signal(model, wav, target=1)
    torch.testing.assert_close(one[0], every[1])
    with pytest.raises(ValueError, match="target"):
        separate_signal(model, wav, target=3)


def test_causal_waveform_reference_is_one_pass() -> None:
    model = TinyCausalNet()
    wav = torch.randn(1, 1003)
    torch.testing.assert_close(separate_signal(model, wav), model.separate(wav[None])[0])
    plan = causal_plan(model.describe(), hop=100)
    assert plan.hop == 100 and plan.context % 4 == 0 and plan.context >= 6 * 4 + 1 + 3
    assert plan.latency == 3 + 100 - 1


def test_causal_reference_hears_silence_after_the_signal_as_a_flushed_stream_does() -> None:
    # The causal Demucs takes frames past its input's end as zero activations, so its
    # last `lookahead` outputs on the bare signal differ from the signal followed by
    # silence; the reference (and so the stream's flush) is the latter.
    config = {"channels": 4, "depth": 2, "lstm_layers": 1, "samplerate": 8000, "audio_channels": 1}
    model = registry.build("demucs_causal", config).eval()
    lookahead = model.describe().lookahead
    wav = torch.randn(1, 1000)
    followed_by_silence = model.separate(torch.nn.functional.pad(wav, (0, 10 * lookahead))[None])[0][..., :1000]
    torch.testing.assert_close(separate_signal(model, wav), followed_by_silence)


def test_chunked_reference_with_hard_tiling_is_model_on_consecutive_chunks() -> None:
    model = TinyChunkNet()
    plan = WindowPlan(size=256, hop=256, lookahead=0, weighting="hard")
    wav = torch.randn(2, 700)
    out = separate_signal(model, wav, plan=plan)
    padded = torch.nn.functional.pad(wav, (0, 768 - 700))
    expected = torch.cat([model.separate(padded[None, :, i : i + 256])[0] for i in range(0, 768, 256)], dim=-1)
    torch.testing.assert_close(out, expected[..., :700])


def test_chunked_identity_and_latency() -> None:
    model = TinyChunkNet(TinyChunkConfig(identity=True))
    plan = plan_for(model.describe())
    assert isinstance(plan, WindowPlan) and not plan.spectrogram
    assert plan.latency == plan.lookahead + plan.support - 1
    wav = torch.randn(2, 1234)
    torch.testing.assert_close(separate_signal(model, wav), wav[None].expand(2, 2, 1234), atol=1e-6, rtol=0)


def test_wrong_shape_is_refused_before_work() -> None:
    with pytest.raises(ValueError, match="expected wav"):
        separate_signal(TinyCausalNet(TinyCausalConfig()), torch.randn(2, 100))


def test_unordered_sources_keep_one_order_across_windows() -> None:
    """A speaker model may name its outputs in any order per window; the windows are re-ordered
    to agree where they overlap, so the result equals that of a model with a fixed order."""
    plan = WindowPlan(size=16, hop=4, lookahead=4)
    signal = torch.randn(2, 200)  # (rest, units): two different "speakers" as stand-ins

    def fixed(batch: torch.Tensor) -> torch.Tensor:  # (B, 2, size) -> (B, 2 sources, 2, size)
        return torch.stack([batch, 0.5 * batch.flip(1)], dim=1)

    calls = {"n": 0}

    def shuffled(batch: torch.Tensor) -> torch.Tensor:
        out = fixed(batch)
        flips = torch.tensor([(calls["n"] + b) % 3 == 1 for b in range(batch.shape[0])])
        calls["n"] += batch.shape[0]
        out[flips] = out[flips].flip(1)
        return out

    expected = overlap_windows(plan, signal, fixed, 2, batch_size=5)
    plain = overlap_windows(plan, signal, shuffled, 2, batch_size=5)
    calls["n"] = 0
    tracked = overlap_windows(plan, signal, shuffled, 2, batch_size=5, unordered=True)
    assert torch.allclose(tracked, expected, atol=1e-6)
    assert not torch.allclose(plain, expected, atol=1e-3)  # without tracking, speakers blend


def test_speaker_models_are_unordered_and_music_models_are_not() -> None:
    assert unordered_sources(registry.build("chimera").describe())
    assert unordered_sources(registry.build("conv_tasnet").describe())
    assert not unordered_sources(registry.build("conditioned_unet").describe())
    assert not unordered_sources(registry.build("wave_unet").describe())
