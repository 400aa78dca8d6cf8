"""Deadlines, admission and priority: real-time first, never silently behind.

* A new real-time session that would push the model's measured real-time load
  over its capacity is refused (AdmissionError, with the numbers); offline
  work is never refused, it fills spare capacity.
* A block whose result is ready after its deadline is still delivered, whole,
  and flagged ``late`` (and counted): audio is never dropped.
* In a batch, real-time windows go before offline ones; a whole-file job
  (``separate_file``) returns exactly the offline reference.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from stemserve.models.apply import file_plan, separate_signal
from stemserve.server.engine import AdmissionError
from stemserve.server.engine.batcher import WindowBatcher, WorkItem
from stemserve.server.engine.pool import LoadedModel
from stemserve.server.engine.work import ItemSpec
from tests.server.engine.helpers import TIMEOUT, make_engine
from tests.server.engine.tiny_models import Slow, TinySpecNet


class FiftyMs(Slow):
    delay = 0.05


def test_a_realtime_session_that_would_overload_the_model_is_refused_with_the_reason() -> None:
    # TinySpecNet's default plan makes 500 windows per second of audio; at 50 ms (up to
    # 74 ms on a busy machine) a window, one session needs 25x..37x the device, so a
    # capacity of 74 admits two and refuses the third.
    engine = make_engine(realtime_capacity=74.0)
    try:
        engine.load_model("m", model=FiftyMs())
        first = engine.open_session("m", 16000, 2)
        engine.open_session("m", 16000, 2)
        with pytest.raises(AdmissionError, match=r"real-time capacity of 7400\.0%") as refused:
            engine.open_session("m", 16000, 2)
        assert "2 real-time sessions" in str(refused.value)
        assert engine.stats()["realtime_sessions"] == 2
        # offline work is never refused: it runs on spare capacity
        offline = engine.open_session("m", 16000, 2, realtime=False)
        assert not offline.realtime
        # closing a real-time session frees its share at once, even while the blocks
        # submitted before the close are still being answered
        pending = engine.submit(first.id, 0, np.zeros((2, 4096), np.float32))
        assert engine.close(first.id)
        engine.open_session("m", 16000, 2)
        assert engine.stats()["models"]["m"]["realtime_sessions"] == 2
        assert pending.result(timeout=TIMEOUT).stems.shape[-1] == 4096  # the closing session's block still answered
    finally:
        engine.shutdown()


def test_max_sessions_caps_realtime_sessions() -> None:
    engine = make_engine(max_sessions=1)
    try:
        engine.load_model("m", model=TinySpecNet())
        engine.open_session("m", 16000, 2)
        with pytest.raises(AdmissionError, match="limit is 1"):
            engine.open_session("m", 16000, 2)
    finally:
        engine.shutdown()


def test_a_late_block_is_delivered_whole_and_flagged_never_dropped() -> None:
    class ThirtyMs(Slow):
        delay = 0.03

    engine = make_engine(deadline_ms=10.0)
    try:
        engine.load_model("m", model=ThirtyMs())
        info = engine.open_session("m", 16000, 2)
        x = np.ones((2, 512), np.float32)
        late = engine.submit(info.id, 0, x).result(timeout=TIMEOUT)  # 16 windows: 2 batches of 30 ms
        assert late.late and late.status == "late"
        assert (late.seq, late.output.shape) == (0, (2, 512))
        assert late.processing_ms > 10.0
        on_time = engine.submit(info.id, 1, x, deadline=time.monotonic() + 60).result(timeout=TIMEOUT)
        assert not on_time.late and on_time.position == 512
        stats = engine.stats()
        assert stats["blocks_late"] == 1 and stats["blocks_out"] == 2
    finally:
        engine.shutdown()


def test_realtime_windows_go_first_and_offline_ones_fill_the_batch() -> None:
    class Owner:
        closed = False
        epoch = 0

    batcher = WindowBatcher(LoadedModel("m", TinySpecNet(), torch.device("cpu")), (2, 33, 8), 4, None, lambda _: True)
    rt, off = Owner(), Owner()

    def item(owner: Owner, realtime: bool, key: int) -> WorkItem:
        return WorkItem(owner, 0, ItemSpec(torch.zeros(2, 33, 8), -1, key), realtime)

    batcher.put([item(off, False, k) for k in range(3)])
    batcher.put([item(rt, True, k) for k in range(2)])
    first = batcher.take()
    assert [(i.realtime, i.spec.key) for i in first] == [(True, 0), (True, 1), (False, 0), (False, 1)]
    assert [(i.realtime, i.spec.key) for i in batcher.take()] == [(False, 2)]
    outcome = batcher.run(first)
    assert len(outcome.outputs) == 4 and outcome.outputs[0].shape == (3, 2, 33, 8)  # type: ignore[union-attr]
    assert batcher.stats()["shared_batches"] == 1


def test_separate_file_is_the_offline_reference_and_runs_where_realtime_is_refused() -> None:
    model = TinySpecNet()
    engine = make_engine(realtime_capacity=0.0, file_chunk_s=0.1)
    try:
        engine.load_model("m", model=model)
        live = engine.open_session("m", 16000, 2)  # the first is always admitted
        with pytest.raises(AdmissionError):
            engine.open_session("m", 16000, 2)
        engine.close(live.id)
        x = np.random.default_rng(0).standard_normal((2, 5000)).astype(np.float32)
        progress: list[tuple[int, int]] = []
        chunks = list(engine.separate_file("m", x, 16000, ["bass", "vocals"], lambda d, t: progress.append((d, t))))
        assert [start for start, _ in chunks] == list(np.cumsum([0] + [c.shape[-1] for _, c in chunks[:-1]]))
        got = np.concatenate([c for _, c in chunks], axis=-1)
        plan = file_plan(model.describe())  # file jobs follow the throughput plan
        reference = separate_signal(model, torch.from_numpy(x), plan=plan).numpy()[[2, 0]]
        assert got.shape == (2, 2, 5000)
        np.testing.assert_allclose(got, reference, atol=1e-4)
        assert progress[-1] == (5000, 5000)
        assert engine.stats()["sessions"] == 0  # the file's session is closed
    finally:
        engine.shutdown()
