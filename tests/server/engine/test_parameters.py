"""Session parameters and transport: target / mix / gains at block boundaries, reset, L never moves.

A parameter change applies to the blocks submitted after it: the first such
block ramps from the old mix to the new one (no zipper noise), the blocks
after it use the new one, the blocks before it are untouched. Reset (a DAW's
transport stop or seek) forgets all audio as if the session had just opened.
"""

from __future__ import annotations

import numpy as np
import pytest

from stemserve.server.engine import BlockResult, Engine, InvalidParameterError, UnknownTargetError
from tests.server.engine.helpers import TIMEOUT, joined, make_engine, stream
from tests.server.engine.tiny_models import TinySpecConfig, TinySpecNet

BLOCK = 256


def run_blocks(engine: Engine, session: str, x: np.ndarray) -> list[BlockResult]:
    """Stream ``x`` in blocks of ``BLOCK`` samples; the results in order."""
    (got,) = stream(engine, [session], [x], [[BLOCK] * (x.shape[1] // BLOCK)])
    return got


@pytest.mark.parametrize("conditioned", [False, True], ids=["multi-output", "conditioned"])
def test_target_change_takes_effect_at_the_next_block_boundary_and_never_changes_latency(conditioned: bool) -> None:
    model = TinySpecNet(TinySpecConfig(conditioned=conditioned))
    engine = make_engine()
    try:
        engine.load_model("m", model=model)
        info = engine.open_session("m", 16000, 2, {"stems": ["vocals", "drums"]})
        latency = info.latency
        x = np.random.default_rng(0).standard_normal((2, 40 * BLOCK)).astype(np.float32)
        before = [engine.submit(info.id, k, x[:, k * BLOCK : (k + 1) * BLOCK]) for k in range(20)]
        engine.set_parameters(info.id, target="drums")
        after = [engine.submit(info.id, k, x[:, k * BLOCK : (k + 1) * BLOCK]) for k in range(20, 40)]
        got = [f.result(timeout=TIMEOUT) for f in before + after]
        assert engine.session_latency(info.id) == latency
        vocals, drums = joined(got)
        out = joined(got, "output")
        edge = 20 * BLOCK
        # before the change: the sum of the session's stems
        np.testing.assert_allclose(out[:, :edge], (vocals + drums)[:, :edge], atol=1e-6)
        # the first block after it ramps linearly to the new target...
        ramp = np.arange(1, BLOCK + 1, dtype=np.float32) / BLOCK
        block = slice(edge, edge + BLOCK)
        np.testing.assert_allclose(out[:, block], vocals[:, block] * (1 - ramp) + drums[:, block], atol=1e-6)
        # ...and from the next one on only the target comes out
        np.testing.assert_allclose(out[:, edge + BLOCK :], drums[:, edge + BLOCK :], atol=1e-6)
        assert np.abs(drums[:, edge + BLOCK :]).max() > 0  # past L: real output
        assert all(r.stems.shape[0] == 2 for r in got)  # stems are fixed at open
    finally:
        engine.shutdown()


def test_mix_and_gains_blend_the_stems_with_the_dry_signal_delayed_by_latency() -> None:
    engine = make_engine()
    try:
        engine.load_model("m", model=TinySpecNet())
        info = engine.open_session("m", 16000, 2, {"mix": 0.25, "gains": {"bass": 2.0}})
        latency = info.latency.total
        x = np.random.default_rng(1).standard_normal((2, 20 * BLOCK)).astype(np.float32)
        got = run_blocks(engine, info.id, x)
        vocals, drums, bass = joined(got)
        dry = np.pad(x, ((0, 0), (latency, 0)))[:, : x.shape[1]]
        expected = 0.75 * dry + 0.25 * (vocals + drums + 2.0 * bass)
        np.testing.assert_allclose(joined(got, "output"), expected, atol=1e-5)
    finally:
        engine.shutdown()


def test_bad_parameters_are_refused_and_change_nothing() -> None:
    engine = make_engine()
    try:
        engine.load_model("m", model=TinySpecNet())
        info = engine.open_session("m", 16000, 2, {"target": "vocals"})
        with pytest.raises(UnknownTargetError, match="guitar"):
            engine.set_parameters(info.id, target="guitar")
        with pytest.raises(InvalidParameterError, match="mix"):
            engine.set_parameters(info.id, mix=1.5)
        with pytest.raises(InvalidParameterError, match="gain"):
            engine.set_parameters(info.id, gains={"bass": float("nan")})
        with pytest.raises(InvalidParameterError, match="unknown parameters"):
            engine.set_parameters(info.id, volume=1.0)
        with pytest.raises(InvalidParameterError, match="fixed"):
            engine.set_parameters(info.id, stems=["bass"])
        params = engine.set_parameters(info.id, mix=0.5)
        assert (params.target, params.mix, dict(params.gains)) == ("vocals", 0.5, {})
    finally:
        engine.shutdown()


def test_reset_forgets_all_audio_but_keeps_latency_and_parameters() -> None:
    engine = make_engine()
    try:
        engine.load_model("m", model=TinySpecNet())
        rng = np.random.default_rng(2)
        a = rng.standard_normal((2, 30 * BLOCK)).astype(np.float32)
        b = rng.standard_normal((2, 30 * BLOCK)).astype(np.float32)
        seeking = engine.open_session("m", 16000, 2, {"target": "drums"})
        fresh = engine.open_session("m", 16000, 2, {"target": "drums"})
        run_blocks(engine, seeking.id, a)
        engine.reset(seeking.id).result(timeout=TIMEOUT)
        after_seek = run_blocks(engine, seeking.id, b)
        reference = run_blocks(engine, fresh.id, b)
        assert engine.session_latency(seeking.id) == seeking.latency
        assert after_seek[0].position == 0
        np.testing.assert_allclose(joined(after_seek), joined(reference), atol=1e-6)
        np.testing.assert_allclose(joined(after_seek, "output"), joined(reference, "output"), atol=1e-6)
        # the first L output samples after the reset are silence again: nothing of `a` leaks
        assert np.all(joined(after_seek)[..., : seeking.latency.total] == 0)
    finally:
        engine.shutdown()
