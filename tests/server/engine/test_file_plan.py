"""File jobs follow their own plan: few centred windows, all stems of a conditioned model in shared passes.

Each plan has its own offline reference (``separate_signal`` with that plan) and the engine's
streams reproduce it: a file job the throughput plan's, a real-time session the live plan's,
even when both run on one model at the same time.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from stemserve.models.apply import WindowPlan, file_plan, plan_for, separate_signal
from stemserve.server.engine import EngineConfig
from tests.server.engine.helpers import TIMEOUT, block_sizes, joined, make_engine, stream
from tests.server.engine.tiny_models import TinySpecConfig, TinySpecNet

RATE = 16000


def signal(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal((2, int(seconds * RATE)))).astype(np.float32)


def covering_windows(plan: WindowPlan, units: int) -> np.ndarray:
    """How many windows of ``plan`` give each of ``units`` units a non-zero weight."""
    weights = plan.weights().numpy() > 0
    count = np.zeros(units, int)
    for j in range(plan.windows_for(units) + 1):
        for i in np.flatnonzero(weights):
            if 0 <= plan.start(j) + i < units:
                count[plan.start(j) + i] += 1
    return count


def test_the_throughput_plan_uses_the_centre_half_of_windows_half_a_window_apart() -> None:
    d = TinySpecNet().describe()  # window_frames 8
    plan = file_plan(d)
    assert (plan.size, plan.hop, plan.lookahead, plan.weighting) == (8, 4, 2, "hard")
    assert plan.first == plan.lookahead == 2  # as much context before the used frames as after
    live = plan_for(d)
    # Every frame's estimate comes from one window (the live plan cross-fades several); the
    # model computes each frame twice, against size / live.hop times live.
    assert set(covering_windows(plan, 200)) == {1}
    assert live.hop < plan.hop
    causal = file_plan(dataclasses.replace(d, causal=True))
    assert (causal.hop, causal.lookahead) == (4, 0)  # a causal model's frames keep only left context


@pytest.mark.parametrize("conditioned", [False, True])
def test_a_file_job_equals_the_throughput_plans_offline_reference(conditioned: bool) -> None:
    model = TinySpecNet(TinySpecConfig(conditioned=conditioned))
    engine = make_engine(file_chunk_s=0.137)
    try:
        info = engine.load_model("m", model=model)
        assert info.file_plan == file_plan(model.describe()).describe()
        assert info.plan == plan_for(model.describe()).describe()  # real-time sessions keep the live plan
        x = signal(1.3)
        chunks = list(engine.separate_file("m", x, RATE))
        got = np.concatenate([c for _, c in chunks], axis=-1)
        reference = separate_signal(model, torch.from_numpy(x), plan=file_plan(model.describe())).numpy()
        assert got.shape == reference.shape == (3, 2, x.shape[1])
        np.testing.assert_allclose(got, reference, atol=1e-5)
        # the live plan's reference is a different separation: the file job did follow its own plan
        live = separate_signal(model, torch.from_numpy(x)).numpy()
        assert np.abs(live - reference).max() > 1e-3
        if conditioned:
            # the stems of a window share forward passes (one item per stem, batched together)
            sizes = engine.stats()["models"]["m"]["batch_sizes"]
            assert max(int(s) for s in sizes) >= 3
    finally:
        engine.shutdown()


def test_live_and_file_plans_run_side_by_side_on_one_model() -> None:
    model = TinySpecNet(TinySpecConfig(conditioned=True))
    engine = make_engine()
    try:
        engine.load_model("m", model=model)
        live = engine.open_session("m", RATE, 2, {"stems": ["drums"]})
        offline = engine.open_session("m", RATE, 2, {"stems": ["drums"]}, realtime=False)
        assert live.plan == plan_for(model.describe()).describe()
        assert offline.plan == file_plan(model.describe()).describe()
        x = signal(0.9, seed=3)
        rng = np.random.default_rng(1)
        sizes = block_sizes(x.shape[1], rng)
        results = stream(engine, [live.id, offline.id], [x, x], [sizes, sizes])
        refs = {
            "live": separate_signal(model, torch.from_numpy(x), target=1).numpy(),
            "file": separate_signal(model, torch.from_numpy(x), target=1, plan=file_plan(model.describe())).numpy(),
        }
        for name, info, got in (("live", live, results[0]), ("file", offline, results[1])):
            stems = joined(got)  # delayed by the session's latency
            lag = info.latency.total
            np.testing.assert_allclose(stems[..., lag:], refs[name][..., : x.shape[1] - lag], atol=1e-5)
        engine.flush(live.id).result(timeout=TIMEOUT)
    finally:
        engine.shutdown()


def test_the_live_plan_for_files_is_one_setting_away() -> None:
    model = TinySpecNet()
    engine = make_engine(file_plan="live")
    try:
        engine.load_model("m", model=model)
        x = signal(0.6, seed=2)
        got = np.concatenate([c for _, c in engine.separate_file("m", x, RATE)], axis=-1)
        np.testing.assert_allclose(got, separate_signal(model, torch.from_numpy(x)).numpy(), atol=1e-5)
    finally:
        engine.shutdown()
    with pytest.raises(ValueError, match="file_plan must be one of throughput, live"):
        EngineConfig(file_plan="fast")
