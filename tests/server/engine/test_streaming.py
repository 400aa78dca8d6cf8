"""Streaming == offline: for every family, through the engine, any block sizes, shared batches.

Output sample n of a session must equal sample n - L of
``models.apply.separate_signal`` on the same audio (to 1e-4), for random
block sizes 1..4096 changing every block, with several sessions whose work
shares forward passes. A flush then returns the last L samples, so the whole
offline output is reproduced.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

from stemserve.models import registry
from stemserve.models.apply import separate_signal
from stemserve.models.base import Separator
from stemserve.models.joint import joint_stems
from tests.server.engine.helpers import DEVICES, TIMEOUT, block_sizes, joined, make_engine, stream
from tests.server.engine.tiny_models import (
    TinyCausalConfig,
    TinyCausalNet,
    TinyChunkConfig,
    TinyChunkNet,
    TinySpecConfig,
    TinySpecNet,
)

TOLERANCE = 1e-4

# name -> (model factory, per-session open params: None = all stems)
FAMILIES: dict[str, tuple[Callable[[], Separator], list[dict[str, Any]] | None]] = {
    "spectrogram": (lambda: TinySpecNet(TinySpecConfig()), None),
    # each session conditions on a different target: one batch, several controls
    "conditioned": (
        lambda: TinySpecNet(TinySpecConfig(conditioned=True)),
        [{"stems": ["vocals"]}, {"stems": ["bass"]}, {"stems": ["drums", "vocals"]}],
    ),
    "causal": (lambda: TinyCausalNet(TinyCausalConfig(channels=2)), None),
    "chunked": (lambda: TinyChunkNet(TinyChunkConfig()), None),
    # per-layer caches (cumulative layer norm, depthwise-conv tails, decoder overlap)
    "cached": (
        lambda: registry.build(
            "conv_tasnet_causal", {"N": 16, "L": 8, "B": 8, "H": 16, "X": 2, "R": 1, "Sc": 8, "audio_channels": 2}
        ),
        None,
    ),
}

TINY_UNET = {
    "sample_rate": 16000,
    "audio_channels": 1,
    "n_fft": 64,
    "hop_length": 16,
    "bins": 32,
    "window_frames": 8,
    "channels": (4, 8),
}
TINY_CONV_TASNET = {"N": 16, "L": 8, "B": 8, "H": 16, "P": 3, "X": 2, "R": 1, "Sc": 8}
# Presets with tiny configs. Causal Conv-TasNet and TasNet stream with per-layer caches
# (exact for any length); causal Demucs recomputes its left context.
PRESETS: dict[str, dict[str, Any]] = {
    "unet": TINY_UNET,
    "multi_unet": TINY_UNET,
    "conditioned_unet": TINY_UNET,
    "conv_tasnet_causal": {**TINY_CONV_TASNET, "causal": True, "norm": "channel"},
    "conv_tasnet": {**TINY_CONV_TASNET, "segment": 0.05},
    "tasnet_causal": {"N": 16, "L": 8, "hidden": 8, "layers": 1},
    "wave_unet": {"sample_rate": 8000, "audio_channels": 1, "L": 3, "Fc": 4, "fd": 5, "fu": 3, "segment": 0.1},
    "demucs": {"channels": 4, "depth": 2, "lstm_layers": 1, "samplerate": 8000, "segment": 0.2, "audio_channels": 1},
    "demucs_causal": {"channels": 4, "depth": 2, "lstm_layers": 1, "samplerate": 8000, "audio_channels": 1},
    "open_unmix": {
        "nb_bins": 33,
        "n_fft": 64,
        "hop_length": 16,
        "hidden_size": 8,
        "nb_layers": 1,
        "max_bin": None,
        "window_frames": 8,
        "sample_rate": 16000,
    },
}


@pytest.fixture(autouse=True)
def exact_gpu_math() -> Iterator[None]:
    """TF32 would make GPU results differ from the reference by more than the tolerance."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def check_equivalence(
    model: Separator,
    device: str,
    seconds: float,
    open_params: list[dict[str, Any]] | None,
    seed: int = 0,
    **config: Any,
) -> dict[str, Any]:
    """Stream 3 sessions concurrently, compare each with the offline reference; return model stats."""
    d = model.describe()
    reference = copy.deepcopy(model).to(device).eval()
    engine = make_engine(device=device, **config)
    try:
        engine.load_model("m", model=model)
        rng = np.random.default_rng(seed)
        params = open_params or [{}, {}, {}]
        infos = [engine.open_session("m", d.sample_rate, d.audio_channels, p) for p in params]
        latency = infos[0].latency.total
        assert all(i.latency.total == latency for i in infos)
        assert latency == engine.model_info("m").latency.total
        length = int(seconds * d.sample_rate)
        signals = [(0.5 * rng.standard_normal((d.audio_channels, length))).astype(np.float32) for _ in infos]
        sizes = [block_sizes(length, rng) for _ in infos]
        results = stream(engine, [i.id for i in infos], signals, sizes)
        for info, signal, got in zip(infos, signals, results, strict=True):
            assert [r.seq for r in got] == list(range(len(got)))
            stems = joined(got)
            assert stems.shape == (len(info.stems), d.audio_channels, length)
            targets = [d.sources.index(s) for s in info.stems]
            wav = torch.from_numpy(signal).to(device)
            if d.conditioned and not joint_stems(d, targets):
                ref = torch.cat([separate_signal(reference, wav, target=t) for t in targets]).cpu().numpy()
            else:
                ref = separate_signal(reference, wav).cpu().numpy()[targets]
            assert np.all(stems[..., :latency] == 0), "nothing may come out before L"
            error = np.abs(stems[..., latency:] - ref[..., : length - latency]).max()
            assert error <= TOLERANCE, f"stream differs from offline by {error}"
            tail = engine.flush(info.id).result(timeout=TIMEOUT)
            assert tail.stems.shape[-1] == latency
            whole = np.concatenate([stems, tail.stems], axis=-1)[..., latency:]
            error = np.abs(whole - ref).max()
            assert error <= TOLERANCE, f"stream + flush differs from offline by {error}"
        return dict(engine.stats()["models"]["m"])
    finally:
        engine.shutdown()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_streaming_equals_offline(family: str, device: str) -> None:
    factory, params = FAMILIES[family]
    stats = check_equivalence(factory(), device, seconds=1.5, open_params=params)
    assert stats["shared_batches"] > 0, "sessions' work should have met in one forward pass"
    assert max(stats["batch_sizes"]) > 1


def test_jointly_normalised_stems_stream_like_offline() -> None:
    """A session asking for every stem (any order) gets them jointly normalised, as offline; one
    asking for a subset gets plain estimates; both share forward passes."""
    model = registry.build("conditioned_unet", {**TINY_UNET, "joint_stems": True}).eval()
    params = [{"stems": ["bass", "other", "vocals", "drums"]}, {"stems": ["vocals"]}, {}]
    stats = check_equivalence(model, "cpu", seconds=1.0, open_params=params)
    assert stats["shared_batches"] > 0


def test_stems_shared_out_by_the_spatial_wiener_filter_stream_like_offline() -> None:
    """The filter's moving averages carry across blocks: a stream gets what offline gets."""
    config = {**TINY_UNET, "audio_channels": 2, "joint_stems": True, "spatial_seconds": 0.05}
    model = registry.build("conditioned_unet", config).eval()
    params = [{"stems": ["bass", "other", "vocals", "drums"]}, {}, {"stems": ["vocals"]}]
    stats = check_equivalence(model, "cpu", seconds=1.0, open_params=params)
    assert stats["shared_batches"] > 0


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_stream_like_offline(preset: str) -> None:
    model = registry.build(preset, PRESETS[preset]).eval()
    d = model.describe()
    params = [{"stems": [d.sources[i % len(d.sources)]]} for i in range(3)] if d.conditioned else None
    # 0.65 s of context covers these 0.6 s streams and their flush whole, so unbounded-context models are exact
    stats = check_equivalence(model, "cpu", seconds=0.6, open_params=params, causal_hop=128, causal_context_s=0.65)
    assert stats["batches"] > 0


def test_causal_plan_hop_sets_latency_and_still_matches() -> None:
    model = TinyCausalNet()
    stats = check_equivalence(model, "cpu", seconds=1.0, open_params=None, causal_hop=8)
    assert stats["windows"] > 0


@pytest.mark.parametrize(
    ("preset", "config"),
    [
        ("conv_tasnet_causal", {**TINY_CONV_TASNET, "causal": True}),  # cLN: unbounded receptive field
        ("tasnet_causal", {"N": 16, "L": 8, "hidden": 8, "layers": 2}),  # LSTM state
    ],
)
def test_cached_models_stay_exact_far_beyond_any_context_cap(preset: str, config: dict[str, Any]) -> None:
    """With per-layer caches nothing is capped: a 3 s stream with a 0.05 s "context cap" is exact."""
    model = registry.build(preset, config).eval()
    engine = make_engine()
    try:
        plan = engine.load_model("probe", model=copy.deepcopy(model), warm_up=False).plan
        assert plan["cached"] and plan["context"] == 0 and plan["exact"]
    finally:
        engine.shutdown()
    stats = check_equivalence(model, "cpu", seconds=3.0, open_params=None, causal_context_s=0.05)
    assert stats["windows"] > 0


def test_cached_plan_steps_every_4_ms_at_a_latency_of_step_plus_delay() -> None:
    from stemserve.models.apply import plan_for

    model = registry.build("conv_tasnet_causal", {**TINY_CONV_TASNET, "L": 16, "causal": True})
    plan = plan_for(model.describe())  # 8 kHz, stride 8, stream delay 8
    assert (plan.hop, plan.context, plan.lookahead) == (32, 0, 8)
    assert plan.latency == 8 + 32 - 1  # 4.9 ms
    recompute = plan_for(model.describe(), causal_cached=False)
    assert recompute.context >= 4 * 8000 and recompute.latency > 10 * plan.latency


def test_file_jobs_step_a_cached_model_in_long_steps_and_still_match_offline() -> None:
    """A file job's stream steps about once a second (its latency is not heard; a step's fixed cost is),
    reports that latency, and shares the worker with real-time sessions stepping every few ms."""
    model = registry.build("conv_tasnet_causal", {**TINY_CONV_TASNET, "causal": True}).eval()
    reference = copy.deepcopy(model)
    engine = make_engine()
    try:
        engine.load_model("m", model=model)
        live = engine.open_session("m", 8000, 1)
        offline = engine.open_session("m", 8000, 1, realtime=False)
        assert live.latency.total == 4 + 128 - 1  # delay L - L/2 = 4 (L = 8), the CPU step: 16 ms
        assert offline.latency.total == 4 + 62 * 128 - 1  # steps of 62 x 128 samples, the nearest to 1 s
        engine.close(offline.id)
        rng = np.random.default_rng(5)
        signal = (0.5 * rng.standard_normal((1, 8000 * 3 + 123))).astype(np.float32)
        live_future = engine.submit(live.id, 0, signal[:, :4096])
        chunks = dict(engine.separate_file("m", signal, 8000))
        out = np.concatenate([chunks[k] for k in sorted(chunks)], axis=-1)
        ref = separate_signal(reference, torch.from_numpy(signal)).numpy()
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() <= TOLERANCE
        assert live_future.result(timeout=TIMEOUT).stems.shape[-1] == 4096
    finally:
        engine.shutdown()
