"""``stemserve batch`` on a local 2-CPU Ray instance: a folder of 12 files (stereo, mono, wav, flac,
ogg, nested; one corrupt, one empty) gives every good file the stems ``stemserve separate`` gives it,
reports the two bad ones without stopping, and a second run does no work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from stemserve.models import registry
from stemserve.models.checkpoint import save_checkpoint
from stemserve.server import cli
from tests.deploy.fleet import ROOT
from tests.models.test_train import TINY_UNET

pytest.importorskip("ray", reason="the batch extra (pip install -e '.[batch]'; scripts/install-deps installs it)")

# relative path -> (format subtype, channels, sample rate, seconds)
GOOD: dict[str, tuple[str, int, int, float]] = {
    "a.wav": ("PCM_16", 2, 44100, 1.0),
    "b.wav": ("FLOAT", 1, 44100, 0.7),
    "c.flac": ("PCM_24", 2, 44100, 1.2),
    "d.flac": ("PCM_16", 1, 44100, 0.5),
    "e.ogg": ("VORBIS", 2, 44100, 0.8),
    "album/f.wav": ("PCM_16", 2, 48000, 0.6),  # resampled by the server
    "album/g.flac": ("PCM_16", 1, 22050, 0.9),
    "album/h.WAV": ("PCM_16", 2, 44100, 0.4),
    "album/disc 2/i.ogg": ("VORBIS", 1, 44100, 0.6),
    "album/disc 2/j.wav": ("PCM_16", 2, 44100, 1.5),
}
CORRUPT = "album/broken.wav"
EMPTY = "empty.wav"  # a valid header, no frames


@pytest.fixture
def ray_temp() -> Iterator[Path]:
    # Short: Ray's unix sockets live under it (their paths are limited to ~107 bytes).
    folder = Path(tempfile.mkdtemp(prefix="rb-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def make_catalogue(root: Path) -> None:
    rng = np.random.default_rng(7)
    for relative, (subtype, channels, rate, seconds) in GOOD.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        audio = (0.3 * rng.standard_normal((int(rate * seconds), channels))).astype(np.float32)
        sf.write(path, audio, rate, subtype=subtype)
    (root / CORRUPT).write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really a wave file" + bytes(range(256)))
    sf.write(root / EMPTY, np.zeros((0, 2), np.float32), 44100, subtype="PCM_16")
    (root / "notes.txt").write_text("not audio: ignored")


def batch(folder: Path, out: Path, checkpoint: Path, ray_temp: Path) -> tuple[int, str, dict[str, object]]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "stemserve.server.cli", "batch", str(folder), "--out", str(out),
         "--model", f"tiny={checkpoint}", "--device", "cpu", "--threads", "1", "--num-cpus", "2",
         "--ray-temp-dir", str(ray_temp), "--no-progress"],
        capture_output=True, text=True, timeout=240, cwd=ROOT, env=env,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr, json.loads((out / "batch-summary.json").read_text())


def separate(path: Path, out: Path, checkpoint: Path) -> None:
    """``stemserve separate FILE`` with the same model and settings (in this process: no Ray)."""
    # Batch's layout (out/<stem>.<ext>) and its unscaled samples.
    argv = ["separate", str(path), "--model", f"tiny={checkpoint}", "--out", str(out), "--device", "cpu",
            "--threads", "1", "--filename", "{stem}.{ext}", "--clip", "none"]  # fmt: skip
    assert cli.main(argv) == 0


@pytest.mark.slow
def test_batch_separates_a_catalogue_like_separate_reports_bad_files_and_resumes(
    tmp_path: Path, ray_temp: Path
) -> None:
    folder, out = tmp_path / "catalogue", tmp_path / "stems"
    make_catalogue(folder)
    torch.manual_seed(3)
    checkpoint = save_checkpoint(registry.build("unet", TINY_UNET), tmp_path / "tiny.pt")

    code, output, summary = batch(folder, out, checkpoint, ray_temp)
    assert code == 1, output  # finished, with failures to report
    assert summary["files"] == 12 and summary["separated"] == 10 and summary["already_done"] == 0, output
    assert summary["actors"] == 1
    assert summary["failed"] == 2 and set(summary["failures"]) == {CORRUPT, EMPTY}, output  # type: ignore[arg-type]
    failures: dict[str, str] = summary["failures"]  # type: ignore[assignment]
    assert failures[EMPTY].startswith("empty") and failures[CORRUPT].startswith("unreadable"), failures
    hours = sum(seconds for *_, seconds in GOOD.values()) / 3600
    assert abs(float(summary["audio_hours"]) - hours) < 1e-3 / 3600, summary  # type: ignore[arg-type]
    assert f"failed: {CORRUPT}: unreadable" in output and "10 separated" in output

    for relative in GOOD:
        reference = tmp_path / "reference" / relative
        separate(folder / relative, reference, checkpoint)
        expected = sorted(p.name for p in reference.iterdir())
        assert expected == [f"vocals{Path(relative).suffix}"]
        assert sorted(p.name for p in (out / relative).iterdir()) == expected
        for name in expected:
            ours, rate = sf.read(out / relative / name, dtype="float32", always_2d=True)
            theirs, their_rate = sf.read(reference / name, dtype="float32", always_2d=True)
            info = sf.info(folder / relative)
            assert rate == their_rate == info.samplerate and ours.shape == (info.frames, info.channels)
            assert np.array_equal(ours, theirs), f"{relative}: batch stems differ from stemserve separate's"

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "batch-summary.json"}
    code, output, summary = batch(folder, out, checkpoint, ray_temp)
    assert code == 1, output  # the two bad files are still reported
    assert summary["separated"] == 0 and summary["already_done"] == 10 and summary["failed"] == 2, output
    assert "unchanged since" in failures_text(summary)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes, "the second run rewrote something"
    assert summary["actors"] == 0  # nothing to do: Ray was not even started


def failures_text(summary: dict[str, object]) -> str:
    return " ".join(summary["failures"].values())  # type: ignore[attr-defined]
