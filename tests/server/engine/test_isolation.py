"""Isolation and errors: bad input is refused or cleaned before a model sees it; one
session's failure closes that session only; every error has its own type (and status).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stemserve.models.apply import separate_signal
from stemserve.server.engine import (
    AdmissionError,
    InvalidAudioError,
    NotReadyError,
    SessionFailedError,
    UnknownModelError,
    UnknownSessionError,
    UnknownTargetError,
)
from stemserve.server.engine.errors import status_name
from tests.server.engine.helpers import TIMEOUT, block_sizes, joined, make_engine, stream
from tests.server.engine.tiny_models import Fragile, TinySpecNet


def test_nan_and_inf_are_zeroed_and_counted_before_the_model() -> None:
    engine = make_engine()
    try:
        engine.load_model("m", model=TinySpecNet())
        dirty = engine.open_session("m", 16000, 2)
        clean = engine.open_session("m", 16000, 2)
        x = np.random.default_rng(0).standard_normal((2, 4096)).astype(np.float32)
        bad = x.copy()
        bad[0, 100] = np.nan
        bad[1, 2000:2003] = np.inf
        bad[0, 3000] = -np.inf
        zeroed = np.where(np.isfinite(bad), bad, 0).astype(np.float32)
        got_dirty, got_clean = stream(engine, [dirty.id, clean.id], [bad, zeroed], [[1024] * 4, [1024] * 4])
        assert [r.invalid_samples for r in got_dirty] == [1, 3, 1, 0]
        assert all(r.invalid_samples == 0 for r in got_clean)
        # the model and its state only ever saw zeros there: same output as the clean copy
        np.testing.assert_allclose(joined(got_dirty), joined(got_clean), atol=1e-6)
        assert np.all(np.isfinite(joined(got_dirty, "output")))
        assert engine.stats()["invalid_samples"] == 5
    finally:
        engine.shutdown()


def test_wrong_blocks_are_refused_before_any_work() -> None:
    engine = make_engine()
    try:
        engine.load_model("m", model=TinySpecNet())
        info = engine.open_session("m", 16000, 2)
        for block in (np.zeros((1, 64)), np.zeros((3, 64)), np.zeros(64), np.zeros((2, 0)), np.zeros((2, 4), bool)):
            with pytest.raises(InvalidAudioError):
                engine.submit(info.id, 0, block)
        with pytest.raises(InvalidAudioError, match=r"shape \(2, n >= 1\)"):
            engine.submit(info.id, 0, np.zeros((1, 64), np.float32))
        assert engine.stats()["blocks_in"] == 0
        assert engine.submit(info.id, 0, np.zeros((2, 64), np.float32)).result(timeout=TIMEOUT).seq == 0
    finally:
        engine.shutdown()


def test_unknown_model_target_and_session_raise_their_own_errors() -> None:
    engine = make_engine()
    try:
        with pytest.raises(UnknownModelError, match="no_such_model"):
            engine.load_model("no_such_model")
        engine.load_model("m", model=TinySpecNet())
        with pytest.raises(UnknownModelError, match="loaded: m"):
            engine.open_session("other", 16000, 2)
        with pytest.raises(UnknownModelError):
            engine.model_info("other")
        with pytest.raises(UnknownTargetError, match="guitar"):
            engine.open_session("m", 16000, 2, {"target": "guitar"})
        with pytest.raises(UnknownTargetError, match="guitar"):
            engine.open_session("m", 16000, 2, {"stems": ["vocals", "guitar"]})
        for call in (
            lambda: engine.submit("nope", 0, np.zeros((2, 8), np.float32)),
            lambda: engine.set_parameters("nope", mix=0.5),
            lambda: engine.reset("nope"),
            lambda: engine.flush("nope"),
            lambda: engine.session_latency("nope"),
            lambda: engine.session_sources("nope"),
        ):
            with pytest.raises(UnknownSessionError, match="nope"):
                call()
        assert engine.close("nope") is False
    finally:
        engine.shutdown()


def test_a_failing_session_is_closed_and_a_concurrent_healthy_one_is_unaffected() -> None:
    model = Fragile()  # raises on any STFT magnitude above 1e3
    engine = make_engine()
    try:
        engine.load_model("m", model=model)
        healthy = engine.open_session("m", 16000, 2)
        failing = engine.open_session("m", 16000, 2)
        rng = np.random.default_rng(1)
        x = rng.standard_normal((2, 8000)).astype(np.float32)
        sizes = block_sizes(8000, rng)
        loud = np.full((2, 8000), 1e4, np.float32)
        healthy_futures, failing_futures = [], []
        position = 0
        failing_open = True
        for k, n in enumerate(sizes):  # interleaved, so their windows share batches
            healthy_futures.append(engine.submit(healthy.id, k, x[:, position : position + n]))
            if failing_open:
                try:
                    failing_futures.append(engine.submit(failing.id, k, loud[:, position : position + n]))
                except UnknownSessionError:  # it already failed and was closed
                    failing_open = False
            position += n
        got = [f.result(timeout=TIMEOUT) for f in healthy_futures]
        errors = [f.exception(timeout=TIMEOUT) for f in failing_futures]
        # blocks answered from the first L samples of silence may come back; every later one fails
        failed = [e is not None for e in errors]
        assert failed[-1] and failed == sorted(failed)
        assert all(isinstance(e, SessionFailedError) for e in errors if e)
        assert any(isinstance(e.__cause__, RuntimeError) for e in errors if e), "the model's error is chained"
        with pytest.raises(UnknownSessionError):
            engine.submit(failing.id, 9, x[:, :10])
        latency = healthy.latency.total
        reference = separate_signal(model, torch.from_numpy(x)).numpy()
        assert np.abs(joined(got)[..., latency:] - reference[..., : 8000 - latency]).max() <= 1e-4
        stats = engine.stats()
        assert stats["sessions_closed"]["failed"] == 1 and stats["sessions"] == 1
    finally:
        engine.shutdown()


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UnknownModelError("x"), "NOT_FOUND"),
        (UnknownSessionError("x"), "NOT_FOUND"),
        (InvalidAudioError("x"), "INVALID_ARGUMENT"),
        (UnknownTargetError("x"), "INVALID_ARGUMENT"),
        (AdmissionError("x"), "RESOURCE_EXHAUSTED"),
        (NotReadyError("x"), "UNAVAILABLE"),
        (SessionFailedError("x"), "INTERNAL"),
        (ValueError("x"), "INVALID_ARGUMENT"),
        (RuntimeError("x"), "INTERNAL"),
    ],
)
def test_each_error_maps_to_a_grpc_status_at_the_edge(error: Exception, status: str) -> None:
    assert status_name(error) == status
