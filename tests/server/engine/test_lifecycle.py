"""Engine and session life: warm-up of every batch shape, readiness, idle expiry, shutdown."""

from __future__ import annotations

import time

import numpy as np
import pytest

from stemserve.server.engine import NotReadyError, UnknownSessionError
from tests.server.engine.helpers import TIMEOUT, block_sizes, make_engine, stream
from tests.server.engine.tiny_models import Recording, TinySpecNet


@pytest.mark.parametrize(
    ("batch_sizes", "shapes"),
    [(None, {1, 2, 3, 4, 5, 6}), ((1, 2, 4, 8), {1, 2, 4, 8})],
    ids=["exact sizes (CPU default)", "static sizes (CUDA default)"],
)
def test_warm_up_runs_every_batch_shape_the_batcher_will_use(
    batch_sizes: tuple[int, ...] | None, shapes: set[int]
) -> None:
    model = Recording()
    engine = make_engine(max_batch=6, batch_sizes=batch_sizes)
    try:
        engine.load_model("m", model=model)
        assert set(model.batch_sizes) == shapes
        warm = len(model.batch_sizes)
        infos = [engine.open_session("m", 16000, 2) for _ in range(4)]
        rng = np.random.default_rng(0)
        signals = [rng.standard_normal((2, 6000)).astype(np.float32) for _ in infos]
        stream(engine, [i.id for i in infos], signals, [block_sizes(6000, rng) for _ in infos])
        used = set(model.batch_sizes[warm:])
        assert used and used <= shapes, "every shape a real batch had was warmed up first"
    finally:
        engine.shutdown()


def test_not_ready_before_warm_up_and_after_shutdown() -> None:
    engine = make_engine()
    assert not engine.ready  # no model yet
    engine.load_model("m", model=TinySpecNet(), warm_up=False)
    assert not engine.ready
    assert not engine.model_info("m").ready
    with pytest.raises(NotReadyError, match="warming up"):
        engine.open_session("m", 16000, 2)
    engine.warm_up()
    assert engine.ready and engine.stats()["ready"]
    info = engine.open_session("m", 16000, 2)
    engine.shutdown()
    assert not engine.ready
    with pytest.raises(NotReadyError):
        engine.open_session("m", 16000, 2)
    with pytest.raises(NotReadyError):
        engine.load_model("n", model=TinySpecNet())
    with pytest.raises((NotReadyError, UnknownSessionError)):
        engine.submit(info.id, 0, np.zeros((2, 16), np.float32))


def test_idle_sessions_expire_after_the_configured_time_and_busy_ones_do_not() -> None:
    assert make_engine().config.idle_timeout_s >= 10, "the default is tens of seconds, not 1 s"
    engine = make_engine(idle_timeout_s=0.3)
    try:
        engine.load_model("m", model=TinySpecNet())
        idle = engine.open_session("m", 16000, 2)
        busy = engine.open_session("m", 16000, 2)
        block = np.zeros((2, 64), np.float32)
        for seq in range(12):  # 1.2 s, a block every 0.1 s
            engine.submit(busy.id, seq, block).result(timeout=TIMEOUT)
            time.sleep(0.1)
        with pytest.raises(UnknownSessionError):
            engine.submit(idle.id, 0, block)
        engine.submit(busy.id, 12, block).result(timeout=TIMEOUT)
        assert engine.stats()["sessions_closed"]["expired"] == 1
    finally:
        engine.shutdown()


def test_close_answers_the_blocks_already_submitted() -> None:
    engine = make_engine()
    try:
        engine.load_model("m", model=TinySpecNet())
        info = engine.open_session("m", 16000, 2)
        futures = [engine.submit(info.id, k, np.ones((2, 700), np.float32)) for k in range(5)]
        assert engine.close(info.id)
        assert [f.result(timeout=TIMEOUT).seq for f in futures] == list(range(5))
        assert engine.close(info.id) is False
        with pytest.raises(UnknownSessionError):
            engine.submit(info.id, 5, np.ones((2, 700), np.float32))
    finally:
        engine.shutdown()
