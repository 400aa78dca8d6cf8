"""Offline render through the bridge and a real server == the server's offline separation, shifted by the latency."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from stemserve.plugin_bridge.bridge import Bridge, BridgeSettings
from stemserve.plugin_bridge.client import StemClient
from tests.plugin_bridge.servers import CHANNELS, RATE

TOLERANCE = 1e-4


def random_sizes(total: int, rng: np.random.Generator) -> list[int]:
    """Host block sizes as a DAW varies them: tiny ones, powers of two, odd ones."""
    sizes, done = [], 0
    choices = [1, 7, 32, 64, 100, 128, 256, 333, 512, 1024, 2048, 4096]
    while done < total:
        n = int(rng.choice(choices)) if rng.random() < 0.7 else int(rng.integers(1, 3000))
        n = min(n, total - done)
        sizes.append(n)
        done += n
    return sizes


def render(bridge: Bridge, audio: np.ndarray, sizes: list[int]) -> np.ndarray:
    out, start = [], 0
    for n in sizes:
        out.append(bridge.process(audio[:, start : start + n]))
        start += n
    return np.concatenate(out, axis=1)


@pytest.mark.parametrize(
    ("model", "target", "margin"),
    [("causal", "speech", 0), ("spec", "drums", 300), ("causal", None, 128)],
)
def test_offline_render_equals_offline_separation_shifted_by_latency(
    server_address: str, model: str, target: str | None, margin: int
) -> None:
    rng = np.random.default_rng(7)
    audio = (0.3 * rng.standard_normal((CHANNELS, 3 * RATE // 2))).astype(np.float32)
    with StemClient(server_address) as client:
        stems = client.separate_array(audio, RATE, model)
    expected_wet = stems[target] if target is not None else sum(stems.values())
    settings = BridgeSettings(server_address, model, RATE, CHANNELS, target=target, margin_samples=margin)
    with Bridge(settings) as bridge:
        report = bridge.start(wait_s=30)
        assert report is not None, "the bridge did not connect"
        total = report.total
        assert total == report.server + margin
        rendered = render(bridge, audio, random_sizes(audio.shape[1], rng))
        stats = bridge.stats()
    assert rendered.shape == audio.shape
    # Output frame n is the estimate for input frame n - total; before that, the (silent) dry past.
    np.testing.assert_allclose(rendered[:, total:], expected_wet[:, : audio.shape[1] - total], atol=TOLERANCE)
    assert np.all(rendered[:, :total] == 0.0)
    assert stats["underrun_frames"] == 0
    assert stats["late_frames"] == 0
    assert stats["gap_frames"] == total  # the frames before the first stem frame, and only those


def test_render_cli_writes_the_stem_aligned_with_the_input(server_address: str, tmp_path) -> None:
    from stemserve.server.cli import main

    rng = np.random.default_rng(3)
    audio = (0.3 * rng.standard_normal((CHANNELS, RATE))).astype(np.float32)
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(src, audio.T, RATE, subtype="FLOAT")
    with StemClient(server_address) as client:
        expected = client.separate_array(audio, RATE, "causal")["noise"]
    code = main(
        [
            "bridge-render",
            str(src),
            str(dst),
            "--server",
            server_address,
            "--model",
            "causal",
            "--target",
            "noise",
            "--block-sizes",
            "64,1000,13,4096",
            "--seed",
            "1",
        ]
    )
    assert code == 0
    out, rate = sf.read(dst, dtype="float32", always_2d=True)
    assert rate == RATE
    assert out.shape == audio.T.shape  # latency compensated: same length, aligned
    np.testing.assert_allclose(out.T, expected, atol=TOLERANCE)
