"""Clients at any rate and channel layout share one model (and its batches).

A client at another rate than the model's is resampled in and out with soxr;
the resampler's availability lag is part of L, so with an identity network
the output is still the input delayed by exactly L (to the resampler's
accuracy). Channel rules (see server/engine/channels.py): mono <-> stereo is
converted (duplicate in, average out; average in, duplicate out), other
mismatches are refused.
"""

from __future__ import annotations

import numpy as np
import pytest

from stemserve.server.engine import InvalidAudioError
from tests.server.engine.helpers import block_sizes, joined, make_engine, stream
from tests.server.engine.tiny_models import TinyCausalConfig, TinyCausalNet, TinySpecConfig, TinySpecNet


def tones(rate: int, channels: int, seconds: float) -> np.ndarray:
    """A few sines well inside every rate's passband, different per channel."""
    t = np.arange(int(rate * seconds)) / rate
    rows = [0.3 * np.sin(2 * np.pi * 440 * (c + 1) * t) + 0.2 * np.sin(2 * np.pi * 97 * t) for c in range(channels)]
    return np.array(rows, dtype=np.float32)


def test_sessions_at_different_rates_and_block_sizes_share_batches_and_keep_latency() -> None:
    model = TinySpecNet(TinySpecConfig(identity=True))  # 16 kHz stereo
    engine = make_engine(max_wait_ms=20.0)
    try:
        engine.load_model("m", model=model)
        clients = [(16000, 2), (44100, 2), (48000, 1)]
        infos = [engine.open_session("m", rate, ch) for rate, ch in clients]
        assert infos[0].latency.resampler == 0
        assert all(i.latency.resampler > 0 for i in infos[1:])
        signals = [tones(rate, ch, 0.6) for rate, ch in clients]
        # fixed 128, random 1..4096, fixed 441 (whole blocks)
        sizes = [[128] * 75, block_sizes(signals[1].shape[1], np.random.default_rng(0)), [441] * 65]
        signals = [x[:, : sum(ns)] for x, ns in zip(signals, sizes, strict=True)]
        results = stream(engine, [i.id for i in infos], signals, sizes)
        for info, x, got in zip(infos, signals, results, strict=True):
            y = joined(got, "output") / len(info.stems)  # identity: every stem is the input
            assert y.shape == x.shape, "N samples in, N out, at the client's rate"
            latency = info.latency.total
            settled = latency + info.sample_rate // 20  # past soxr's start-up transient
            error = np.abs(y[:, settled:] - x[:, settled - latency : x.shape[1] - latency]).max()
            assert error < 1e-4, f"{info.sample_rate} Hz: output is not the input delayed by L ({error})"
            assert np.abs(y[:, : latency - 8]).max() < 1e-3, "nothing before L"
        assert engine.stats()["models"]["m"]["shared_batches"] > 0
    finally:
        engine.shutdown()


def test_mono_client_on_a_stereo_model_is_duplicated_in_and_averaged_out() -> None:
    engine = make_engine()
    try:
        engine.load_model("m", model=TinySpecNet(TinySpecConfig(identity=True, sources=("x",))))
        info = engine.open_session("m", 16000, 1)
        x = np.random.default_rng(1).standard_normal((1, 4000)).astype(np.float32)
        (got,) = stream(engine, [info.id], [x], [[500] * 8])
        y = joined(got, "output")
        latency = info.latency.total
        assert y.shape == (1, 4000)
        np.testing.assert_allclose(y[:, latency:], x[:, : 4000 - latency], atol=1e-5)
    finally:
        engine.shutdown()


def test_stereo_client_on_a_mono_model_hears_the_average_on_both_channels() -> None:
    engine = make_engine()
    try:
        engine.load_model("m", model=TinyCausalNet(TinyCausalConfig(identity=True, sources=("x",))))  # mono
        info = engine.open_session("m", 8000, 2)
        x = np.random.default_rng(2).standard_normal((2, 3000)).astype(np.float32)
        (got,) = stream(engine, [info.id], [x], [[300] * 10])
        y = joined(got, "output")
        latency = info.latency.total
        mean = x.mean(axis=0)
        assert y.shape == (2, 3000)
        np.testing.assert_allclose(y[0, latency:], mean[: 3000 - latency], atol=1e-6)
        np.testing.assert_array_equal(y[0], y[1])
    finally:
        engine.shutdown()


@pytest.mark.parametrize("channels", [0, 3, 6])
def test_other_channel_layouts_are_refused_at_open(channels: int) -> None:
    engine = make_engine()
    try:
        engine.load_model("m", model=TinySpecNet())
        with pytest.raises(InvalidAudioError, match="channel"):
            engine.open_session("m", 16000, channels)
    finally:
        engine.shutdown()


@pytest.mark.parametrize("rate", [0, 4000, 400000, 44100.0, True])
def test_unsupported_sample_rates_are_refused_at_open(rate: object) -> None:
    engine = make_engine()
    try:
        engine.load_model("m", model=TinySpecNet())
        with pytest.raises(InvalidAudioError, match="rate"):
            engine.open_session("m", rate, 2)  # type: ignore[arg-type]
    finally:
        engine.shutdown()
