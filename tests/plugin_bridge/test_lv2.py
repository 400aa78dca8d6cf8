"""The native LV2 plugin (``plugin_bridge/lv2``) in real hosts, against a real server with tiny models.

The module builds the plugin with CMake once (``build/lv2``, incremental) and then:

1. **Offline host** (``lv2file``, freewheeling): the rendered file equals the server's own offline
   separation shifted by the latency the plugin reported, for several host block sizes.
2. **Real-time host** (``jalv`` on ``jackd -d dummy``, 48 kHz, 256 frames): see ``test_lv2_jalv``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from stemserve.plugin_bridge.client import StemClient

from tests.plugin_bridge import lv2_hosts
from tests.plugin_bridge.servers import CHANNELS, RATE

pytestmark = [pytest.mark.slow]

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def lv2_path() -> Path:
    missing = lv2_hosts.missing_tools()
    assert not missing, f"missing {missing}: run scripts/install-deps"
    return lv2_hosts.build_bundle()


def noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal((CHANNELS, round(seconds * RATE)))).astype(np.float32)


@pytest.mark.parametrize(
    ("model", "target", "stem", "block"),
    [
        ("spec", 2, "drums", 256),
        ("spec", 2, "drums", 1000),  # not a power of two, not a divisor of anything
        ("causal", 1, "speech", 4096),
        ("causal", 0, None, 64),  # target 0: all stems by their gains (1.0 each)
    ],
)
def test_lv2file_render_equals_offline_separation_shifted_by_reported_latency(
    lv2_path: Path, server_address: str, tmp_path: Path, model: str, target: int, stem: str | None, block: int
) -> None:
    audio = noise(1.5, seed=block)
    with StemClient(server_address) as client:
        stems = client.separate_array(audio, RATE, model)
    expected = stems[stem] if stem is not None else sum(stems.values())

    rendered, log = lv2_hosts.run_lv2file(
        lv2_path, server_address, model, audio, RATE, tmp_path, block, {"target": target, "freewheel": 1}
    )
    total = lv2_hosts.reported_latency(log)
    frames = audio.shape[1]
    assert rendered.shape == audio.shape
    assert 0 < total < frames // 2
    # Output frame n is the estimate for input frame n - total; before that, the (silent) dry past.
    np.testing.assert_allclose(rendered[:, total:], expected[:, : frames - total], atol=TOLERANCE)
    assert np.all(rendered[:, :total] == 0.0)


def test_lv2file_mono_plugin_renders_the_mono_separation(lv2_path: Path, server_address: str, tmp_path: Path) -> None:
    audio = noise(1.0, seed=3)[:1]
    with StemClient(server_address) as client:
        expected = client.separate_array(audio, RATE, "causal")["noise"]
    rendered, log = lv2_hosts.run_lv2file(
        lv2_path,
        server_address,
        "causal",
        audio,
        RATE,
        tmp_path,
        512,
        {"target": 2, "freewheel": 1},
        plugin=lv2_hosts.MONO,
    )
    total = lv2_hosts.reported_latency(log)
    np.testing.assert_allclose(rendered[:, total:], expected[:, : audio.shape[1] - total], atol=TOLERANCE)


def test_lv2file_bypass_is_the_input_delayed_by_the_same_latency(
    lv2_path: Path, server_address: str, tmp_path: Path
) -> None:
    audio = noise(1.0, seed=4)
    rendered, log = lv2_hosts.run_lv2file(
        lv2_path, server_address, "spec", audio, RATE, tmp_path, 256, {"enabled": 0, "freewheel": 1}
    )
    total = lv2_hosts.reported_latency(log)
    np.testing.assert_array_equal(rendered[:, total:], audio[:, :-total])
    assert np.all(rendered[:, :total] == 0.0)


def test_lv2file_with_no_server_loads_and_passes_dry_audio_at_the_provisional_latency(
    lv2_path: Path, tmp_path: Path
) -> None:
    from tests.plugin_bridge.servers import free_port

    audio = noise(1.0, seed=5)
    rendered, log = lv2_hosts.run_lv2file(
        lv2_path, f"127.0.0.1:{free_port()}", "spec", audio, RATE, tmp_path, 512, {"target": 1, "freewheel": 1}
    )
    total = lv2_hosts.reported_latency(log)
    assert "provisional" in log
    np.testing.assert_array_equal(rendered[:, total:], audio[:, :-total])
