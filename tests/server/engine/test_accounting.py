"""Sample accounting: N samples in -> N out per stem, in order, and an impulse comes out exactly L later.

For every family (spectrogram window, conditioned, causal waveform, chunked
waveform): each block's result has the block's length for every stem, echoes
its sequence number, and starts where the previous block's output ended. With
an identity network the output is the input delayed by exactly the reported L.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from stemserve.models.base import Separator
from tests.server.engine.helpers import DEVICES, TIMEOUT, block_sizes, joined, make_engine, stream
from tests.server.engine.tiny_models import (
    TinyCausalConfig,
    TinyCausalNet,
    TinyChunkConfig,
    TinyChunkNet,
    TinySpecConfig,
    TinySpecNet,
)

FAMILIES: dict[str, Callable[[bool], Separator]] = {
    "spectrogram": lambda identity: TinySpecNet(TinySpecConfig(identity=identity)),
    "conditioned": lambda identity: TinySpecNet(TinySpecConfig(identity=identity, conditioned=True)),
    "causal": lambda identity: TinyCausalNet(TinyCausalConfig(identity=identity)),
    "chunked": lambda identity: TinyChunkNet(TinyChunkConfig(identity=identity)),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_samples_out_equal_samples_in_with_contiguous_seq_and_positions(family: str) -> None:
    model = FAMILIES[family](False)
    d = model.describe()
    engine = make_engine()
    try:
        engine.load_model("m", model=model)
        infos = [engine.open_session("m", d.sample_rate, d.audio_channels) for _ in range(2)]
        rng = np.random.default_rng(1)
        length = int(0.5 * d.sample_rate)
        signals = [rng.standard_normal((d.audio_channels, length)).astype(np.float32) for _ in infos]
        sizes = [block_sizes(length, rng) for _ in infos]
        results = stream(engine, [i.id for i in infos], signals, sizes)
        for info, got, ns in zip(infos, results, sizes, strict=True):
            assert [r.seq for r in got] == list(range(len(ns)))
            assert [r.output.shape for r in got] == [(d.audio_channels, n) for n in ns]
            assert [r.stems.shape for r in got] == [(len(info.stems), d.audio_channels, n) for n in ns]
            assert [r.position for r in got] == list(np.cumsum([0, *ns[:-1]]))
            assert all(r.session_id == info.id and r.stem_names == info.stems for r in got)
            assert all(np.all(np.isfinite(r.stems)) for r in got)
        stats = engine.stats()
        assert stats["blocks_in"] == stats["blocks_out"] == sum(len(s) for s in sizes)
    finally:
        engine.shutdown()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_an_impulse_comes_out_exactly_latency_samples_later(family: str, device: str) -> None:
    model = FAMILIES[family](True)
    d = model.describe()
    engine = make_engine(device=device)
    try:
        engine.load_model("m", model=model)
        info = engine.open_session("m", d.sample_rate, d.audio_channels)
        latency = info.latency
        assert latency.total == latency.model + latency.buffering + latency.resampler
        assert latency.resampler == 0 and latency.buffering == 0  # model rate, no added buffering
        length = latency.total + 3000
        at = 1234
        x = np.zeros((d.audio_channels, length), np.float32)
        x[:, at] = 1.0
        sizes = block_sizes(length, np.random.default_rng(2), largest=700)
        (got,) = stream(engine, [info.id], [x], [sizes])
        y = joined(got, "output")  # the mix: every stem of an identity model is the input
        expected_peak = len(info.stems) * 1.0
        assert y.shape == x.shape
        assert int(np.argmax(np.abs(y[0]))) == at + latency.total
        np.testing.assert_allclose(y[:, at + latency.total], expected_peak, atol=1e-4)
        assert np.abs(y[:, : at + latency.total]).max() < 1e-5, "nothing may come out before the impulse + L"
        assert engine.session_latency(info.id) == latency
    finally:
        engine.shutdown()


def test_flush_returns_exactly_latency_samples_then_the_stream_starts_over() -> None:
    model = TinyCausalNet(TinyCausalConfig(identity=True))
    d = model.describe()
    engine = make_engine(causal_hop=64)
    try:
        engine.load_model("m", model=model)
        info = engine.open_session("m", d.sample_rate, 1)
        latency = info.latency.total
        x = np.random.default_rng(3).standard_normal((1, 1000)).astype(np.float32)
        (got,) = stream(engine, [info.id], [x], [[300, 1, 699]])
        tail = engine.flush(info.id).result(timeout=TIMEOUT)
        assert tail.stems.shape == (2, 1, latency)
        whole = np.concatenate([joined(got), tail.stems], axis=-1)
        np.testing.assert_allclose(whole[..., latency:], np.broadcast_to(x, (2, 1, 1000)), atol=1e-6)
        # after a flush the session is fresh: positions restart, silence for L
        again = engine.submit(info.id, 3, x[:, :10]).result(timeout=TIMEOUT)
        assert again.position == 0
        assert np.all(again.stems == 0)
        assert engine.session_latency(info.id).total == latency
    finally:
        engine.shutdown()
