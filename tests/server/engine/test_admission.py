"""Admission follows what passes really cost, and never locks out an empty model.

* A warm-up timed on a busy machine (injected here: 50x the real cost) does not
  refuse the first real-time session: it is admitted, and its real passes
  replace the warm-up estimate, after which a second session fits again.
* A refusal says what to do about it.
"""

from __future__ import annotations

import numpy as np
import pytest

from stemserve.server.engine import AdmissionError
from tests.server.engine.helpers import TIMEOUT, make_engine
from tests.server.engine.tiny_models import TinySpecNet


def test_an_inflated_warm_up_admits_the_first_session_and_real_passes_correct_it() -> None:
    engine = make_engine(realtime_capacity=1.0)
    try:
        engine.load_model("m", model=TinySpecNet())
        scheduler = engine._scheduler("m")
        measured = scheduler.seconds_per_item
        assert measured > 0
        # as if warm-up had run on a machine busy with other work: one session needs > 100 %
        scheduler.seconds_per_item = 2.0 / scheduler.streamer.items_per_second(4)
        first = engine.open_session("m", 16000, 2)  # never refused on an empty model
        with pytest.raises(AdmissionError) as refused:
            engine.open_session("m", 16000, 2)
        assert "1 real-time sessions use 200.0%" in str(refused.value)
        for word in ("Close a session", "cheaper model", "--threads", "GPU"):
            assert word in str(refused.value)
        # real passes replace the inflated estimate
        x = np.zeros((2, 1600), np.float32)
        for seq in range(10):
            engine.submit(first.id, seq, x).result(timeout=TIMEOUT)
        assert scheduler.real_batches >= 1
        assert scheduler.seconds_per_item < 0.2 * (2.0 / scheduler.streamer.items_per_second(4))
        assert scheduler.session_load(engine_session(engine, first.id)) < 0.5
        engine.open_session("m", 16000, 2)  # the corrected estimate has room for a second
        assert engine.stats()["models"]["m"]["realtime_sessions"] == 2
    finally:
        engine.shutdown()


def engine_session(engine: object, session_id: str) -> object:
    return engine._scheduler("m")._sessions[session_id]  # type: ignore[attr-defined]
