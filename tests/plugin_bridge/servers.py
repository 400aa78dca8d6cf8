"""Real stemserve servers for the bridge tests, serving tiny test models at 48 kHz.

The bridge itself never imports torch; the tests may (they build the server).

* :func:`tiny_engine`: an engine with ``ident`` (causal passthrough, every stem
  is the input), ``causal`` (a causal waveform model with random weights) and
  ``spec`` (a spectrogram model with random weights).
* ``python -m tests.plugin_bridge.servers --port P``: the same models served by a
  separate process (a server the tests can kill with SIGKILL and restart).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from stemserve.server.engine import Engine, EngineConfig
from tests.server.engine.tiny_models import TinyCausalConfig, TinyCausalNet, TinySpecConfig, TinySpecNet

RATE = 48000
CHANNELS = 2
ROOT = Path(__file__).resolve().parents[2]


def tiny_engine() -> Engine:
    # Admission is measured against this machine's speed, which other work skews: off for tests.
    # The bridge tests check a live session against a file job of the same audio, so file jobs here
    # follow the live plan (the same computation); the throughput plan has its own tests
    # (tests/server/engine/test_file_plan.py).
    config = EngineConfig(device="cpu", max_wait_ms=2.0, max_batch=8, realtime_capacity=float("inf"), file_plan="live")
    engine = Engine(config)
    engine.load_model(
        "ident", model=TinyCausalNet(TinyCausalConfig(sample_rate=RATE, channels=CHANNELS, identity=True))
    )
    engine.load_model("causal", model=TinyCausalNet(TinyCausalConfig(sample_rate=RATE, channels=CHANNELS)))
    engine.load_model("spec", model=TinySpecNet(TinySpecConfig(sample_rate=RATE, channels=CHANNELS)))
    return engine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_process(port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """Start the tiny server on ``port`` in a child process; returns once it listens."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.plugin_bridge.servers", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tiny server exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        if "stemserve listening" in log_path.read_text():
            return proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"tiny server did not start: {log_path.read_text()[-2000:]}")


def main() -> None:
    from stemserve.server.app import App, ServerConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(1)
    asyncio.run(
        App(ServerConfig(host="127.0.0.1", port=args.port, grace_seconds=0.5), tiny_engine()).run_until_signal()
    )


if __name__ == "__main__":
    main()
