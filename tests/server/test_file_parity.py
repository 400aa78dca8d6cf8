"""File jobs with official files give the peer tools' own stems, through the engine and the CLI.

``Engine.separate_file`` (the path of ``Separate`` and ``stemserve separate``) on a
published-layout file, written by the peer package with random weights, against the
peer's own file API on the same audio: equal within 1e-4 over the whole file and at
both edges. A file the engine must convert (rate, channels) still comes back whole.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import demucs.apply  # test-only oracle, installed by scripts/install-deps
import numpy as np
import pytest
import torch

from stemserve.server.engine import Engine, EngineConfig
from tests.models.official_peers import (
    clip,
    openunmix_package,
    package_demucs,
    sdr_db,
    write_demucs_file,
    write_umx_folder,
)

TOLERANCE = 1e-4
TIMEOUT_S = 120


def separate(engine: Engine, name: str, mix: np.ndarray, rate: int, stems: list[str] | None = None) -> np.ndarray:
    """The whole of ``Engine.separate_file``'s chunks, checked to tile the file in order."""
    chunks = list(engine.separate_file(name, mix, rate, stems))
    starts = [start for start, _ in chunks]
    assert starts == list(np.cumsum([0] + [c.shape[-1] for _, c in chunks[:-1]]))
    return np.concatenate([c for _, c in chunks], axis=-1)


def assert_same(ours: np.ndarray, peer: np.ndarray, rate: int) -> None:
    assert ours.shape == peer.shape
    for part in (slice(None), slice(0, rate), slice(-rate, None)):  # whole, first second, last second
        assert np.abs(ours[..., part] - peer[..., part]).max() <= TOLERANCE
    assert sdr_db(peer, ours) >= 80.0


@pytest.fixture
def engine() -> object:
    engine = Engine(EngineConfig(device="cpu", max_batch=1))  # warm-up runs one shape per model
    yield engine
    engine.shutdown()


def test_an_open_unmix_folder_separates_files_as_openunmix_separator(tmp_path: Path, engine: Engine) -> None:
    targets = ("vocals", "drums", "bass")
    with openunmix_package() as umx:
        folder = write_umx_folder(
            umx, tmp_path / "umx", targets, hidden_size=64, nb_channels=2, sample_rate=44100,
            n_fft=4096, n_hop=1024, max_bin=1487,
        )  # fmt: skip
        peer = umx.utils.load_separator(str(folder), targets=list(targets), niter=0).eval()
        mix = clip(2, 9.1, 44100, seed=3)
        with torch.no_grad():
            expected = peer(mix.unsqueeze(0))[0].numpy()  # (3, 2, T)
    engine.load_model("umx", folder)
    got = separate(engine, "umx", mix.numpy(), 44100, ["bass", "vocals"])
    assert_same(got, expected[[2, 0]], 44100)
    assert engine.stats()["sessions"] == 0  # the job's session is closed

    # Mono at 22.05 kHz into the stereo 44.1 kHz model: converted both ways, as long as the input.
    mono = clip(1, 3.0, 22050, seed=4).numpy()
    out = separate(engine, "umx", mono, 22050)
    assert out.shape == (3, 1, mono.shape[1]) and np.isfinite(out).all() and np.abs(out).max() > 1e-3


def test_a_demucs_file_separates_files_as_apply_model(tmp_path: Path, engine: Engine) -> None:
    reference = package_demucs(normalize=True, resample=False, segment=4)  # 25 s: 8 segments
    path = write_demucs_file(reference, tmp_path / "demucs.th")
    mix = clip(2, 25.0, 44100, seed=5)
    random.seed(0)  # the package's one random shift (its default), drawn as our file job draws it
    with torch.no_grad():
        expected = demucs.apply.apply_model(reference, mix.unsqueeze(0))[0].numpy()
    engine.load_model("demucs", path)
    assert_same(separate(engine, "demucs", mix.numpy(), 44100), expected, 44100)


def test_serve_refuses_an_unsupported_checkpoint_with_one_line_and_exit_2(tmp_path: Path) -> None:
    truncated = tmp_path / "htdemucs.th"
    good = write_demucs_file(package_demucs(), tmp_path / "good.th").read_bytes()
    truncated.write_bytes(good[: len(good) // 3])
    command = [sys.executable, "-m", "stemserve.server.cli", "serve", "--port", "0", "--model", f"x={truncated}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"stemserve serve: {truncated}: unsupported checkpoint")


def test_stemserve_separate_with_an_open_unmix_folder_writes_the_packages_stems(tmp_path: Path) -> None:
    """The user's comparison: ``stemserve separate song.wav --model umx=FOLDER`` against the package
    on the same file (float WAV in, float WAV stems out)."""
    import soundfile as sf

    targets = ("vocals", "drums")
    with openunmix_package() as umx:
        folder = write_umx_folder(
            umx, tmp_path / "umx", targets, hidden_size=32, nb_channels=2, sample_rate=44100,
            n_fft=4096, n_hop=1024, max_bin=1487,
        )  # fmt: skip
        peer = umx.utils.load_separator(str(folder), targets=list(targets), niter=0).eval()
        mix = clip(2, 6.0, 44100, seed=6)
        with torch.no_grad():
            expected = peer(mix.unsqueeze(0))[0].numpy()  # (2, 2, T)
    song = tmp_path / "song.wav"
    sf.write(song, mix.numpy().T, 44100, subtype="FLOAT")
    out = tmp_path / "stems"
    command = [sys.executable, "-m", "stemserve.server.cli", "separate", str(song), "--model", f"umx={folder}"]
    result = subprocess.run(
        [*command, "--out", str(out), "--max-batch", "1"], capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for i, target in enumerate(targets):
        written, rate = sf.read(out / "umx" / "song" / f"{target}.wav", dtype="float32", always_2d=True)
        assert rate == 44100
        assert_same(written.T, expected[i], 44100)
