"""Start and stop :mod:`bench.server_proc` from a benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from stemserve.bench.subjects import Subject

ROOT = Path(__file__).resolve().parents[1]


class ServerError(RuntimeError):
    """The benchmark server did not come up."""


class ServerProcess:
    """``with ServerProcess([...]) as server: server.address``; the process is ``server.pid``."""

    def __init__(
        self,
        subjects: Sequence[Subject] = (),
        *,
        passthrough: bool = False,
        threads: int = 2,
        device: str = "cpu",
        engine: Mapping[str, Any] | None = None,
        timeout: float = 600.0,
    ) -> None:
        self.command = [
            sys.executable,
            "-m",
            "stemserve.bench.server_proc",
            "--threads",
            str(threads),
            "--device",
            device,
        ]
        for s in subjects:
            self.command += ["--model", s.spec()]
        if passthrough:
            self.command.append("--passthrough")
        if engine:
            self.command += ["--engine", json.dumps(dict(engine))]
        self.timeout = timeout
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> str:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        self._proc = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        stdout: IO[str] | None = self._proc.stdout
        assert stdout is not None
        line = stdout.readline()  # blocks until warm (or the process dies)
        if not line.startswith("PORT "):
            self.stop()
            raise ServerError(f"benchmark server did not start ({' '.join(self.command)}): {line!r}")
        self.port = int(line.split()[1])
        return self.address

    def stop(self) -> None:
        if self._proc is None:
            return
        try:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        finally:
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
