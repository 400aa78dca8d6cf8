"""A live session that asks for one stem (``OpenSession.stems``) gets only that stem, computed alone.

For the target-conditioned U-Net one stem is one conditioned pass (a quarter of a
four-stem session's work). Without joint normalisation its estimate is exactly
the four-stem session's estimate of that stem; with ``joint_stems`` the four-stem
session shares the mixture out among its stems, so its vocals differ from the
one-stem session's plain estimate (which is what a one-stem session is: unshared).
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch

from stemserve.models import registry
from stemserve.plugin_bridge.bridge import Bridge, BridgeSettings
from stemserve.protos import stemserve_pb2 as pb
from stemserve.protos import stemserve_pb2_grpc as pb_grpc
from stemserve.server.embedded import EmbeddedServer
from stemserve.server.engine import Engine, EngineConfig
from tests.server.engine.tiny_models import TINY_UNET_CONFIG

TINY = TINY_UNET_CONFIG
RATE, CHANNELS, BLOCK = 16000, 2, 256


@pytest.fixture(scope="module")
def unet_server() -> Iterator[str]:
    engine = Engine(EngineConfig(device="cpu", max_wait_ms=2.0, max_batch=8, realtime_capacity=float("inf")))
    for name, extra in (("plain", {}), ("joint", {"joint_stems": True})):
        torch.manual_seed(1)
        engine.load_model(name, model=registry.build("conditioned_unet", {**TINY, **extra}).eval())
    server = EmbeddedServer(engine)
    address = server.start()
    yield address
    server.stop()


def render(address: str, model: str, stems: tuple[str, ...], audio: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    settings = BridgeSettings(address, model, RATE, CHANNELS, target="vocals", margin_samples=0, stems=stems)
    with Bridge(settings) as bridge:
        report = bridge.start(wait_s=30)
        assert report is not None, bridge.status()
        out = np.concatenate([bridge.process(audio[:, s : s + BLOCK]) for s in range(0, audio.shape[1], BLOCK)], axis=1)
        sources = bridge.params.sources
        stats = bridge.stats()
    assert stats["underrun_frames"] == 0
    return out[:, report.total :], sources


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    return (0.3 * np.random.default_rng(5).standard_normal((CHANNELS, RATE))).astype(np.float32)


def windows_run(address: str, model: str) -> int:
    """Work items (one per conditioned pass per window) the server has run for ``model``."""
    with grpc.insecure_channel(address) as channel:
        stats = pb_grpc.SeparationStub(channel).GetStats(pb.GetStatsRequest())
    return next(int(m.windows) for m in stats.models if m.name == model)


def test_a_one_stem_session_gets_only_that_stem_and_equals_the_four_stem_target(
    unet_server: str, audio: np.ndarray
) -> None:
    start = windows_run(unet_server, "plain")
    one, one_sources = render(unet_server, "plain", ("vocals",), audio)
    middle = windows_run(unet_server, "plain")
    four, four_sources = render(unet_server, "plain", (), audio)
    end = windows_run(unet_server, "plain")
    # One stem of four: a quarter of the conditioned passes.
    assert (end - middle) == 4 * (middle - start) > 0, (start, middle, end)
    assert one_sources == ("vocals",)
    assert len(four_sources) == 4 and "vocals" in four_sources
    assert np.max(np.abs(four)) > 1e-3  # the model says something: the comparison is not of silences
    np.testing.assert_allclose(one, four, atol=1e-4)


def test_with_joint_stems_one_stem_is_the_plain_estimate_not_the_shared_one(
    unet_server: str, audio: np.ndarray
) -> None:
    one, _ = render(unet_server, "joint", ("vocals",), audio)
    plain_one, _ = render(unet_server, "plain", ("vocals",), audio)
    shared, _ = render(unet_server, "joint", (), audio)
    np.testing.assert_allclose(one, plain_one, atol=1e-4)  # same weights, nothing shared
    assert np.max(np.abs(one - shared)) > 1e-3
