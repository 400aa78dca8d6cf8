"""What a user sees when a job cannot run: a clear message, quickly, and nothing left behind.

* Nothing listening on the port: ``stemserve separate`` exits non-zero within 5 s with
  "cannot reach ADDR: connection refused" (not a 300 s wait).
* A refused job on FLAC and MP3 inputs (an unknown stem) never crashes the client
  (the request iterator owns the file), ends with the server's reason and exit code 2,
  and leaves no empty ``--out`` folder.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from stemserve.server.embedded import EmbeddedServer

from tests.server.conftest import RATE, noise

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stemserve.server.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the with ends: nothing listens there


def test_a_refused_port_fails_within_seconds_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "take.wav"
    sf.write(path, noise(0.2).T, RATE)
    address = f"127.0.0.1:{closed_port()}"
    started = time.monotonic()
    done = run_cli("separate", str(path), "--server", address, "--out", str(tmp_path / "out"), timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode != 0
    assert f"cannot reach {address}: connection refused" in done.stderr, done.stderr
    assert elapsed < 5.0 + 3.0, elapsed  # 3 s of connect attempts; the rest is Python start-up on a busy machine
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", [".flac", ".mp3"])
def test_a_refused_flac_or_mp3_job_never_crashes_the_client(
    server: EmbeddedServer, tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"take{suffix}"
    sf.write(path, (0.3 * noise(3.0, seed=2)).T.astype(np.float32), RATE)
    for run in range(10):
        out = tmp_path / f"out-{run}"
        done = run_cli("separate", str(path), "--server", server.address, "--model", "multi",
                       "--stems", "vocal", "--out", str(out))  # fmt: skip
        assert done.returncode == 2, (run, done.returncode, done.stderr[-2000:])  # a crash is -11 / -6
        assert "vocal" in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert not out.exists()
