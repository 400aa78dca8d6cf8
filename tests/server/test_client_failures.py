"""What a user sees when a job cannot run: a clear message, quickly, and nothing left behind.

* Nothing listening on the port: ``stemserve separate`` exits non-zero within 5 s with
  "cannot reach ADDR: connection refused" (not a 300 s wait).
* A server that is up but warming (health NOT_SERVING) is waited for, and the job then runs.
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


def test_a_warming_server_is_waited_for_and_then_separates(tmp_path: Path) -> None:
    """Up but NOT_SERVING (warming up): the client waits, then the job runs (no 'cannot reach')."""
    from tests.deploy.fleet import serving, start_server, stop_process
    from tests.plugin_bridge.servers import CHANNELS
    from tests.plugin_bridge.servers import RATE as SERVER_RATE

    port = closed_port()
    proc = start_server(port, tmp_path / "server.log", warm_up_delay=6.0)
    try:
        address = f"127.0.0.1:{port}"
        assert not serving(address), "the server should still be warming up"
        path = tmp_path / "take.wav"
        audio = (0.3 * np.random.default_rng(4).standard_normal((SERVER_RATE // 2, CHANNELS))).astype(np.float32)
        sf.write(path, audio, SERVER_RATE, subtype="FLOAT")
        out = tmp_path / "out"
        done = run_cli("separate", str(path), "--server", address, "-n", "ident", "--out", str(out), "--wait", "60")
        assert done.returncode == 0, done.stderr
        assert "cannot reach" not in done.stderr
        written = sorted(out.rglob("*.wav"))
        assert written, "no stems written"
        for stem in written:
            data, rate = sf.read(stem, dtype="float32")
            assert rate == SERVER_RATE and data.shape == audio.shape
    finally:
        stop_process(proc)
