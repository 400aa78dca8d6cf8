"""A real fleet on loopback for the deploy tests: tiny stemserve servers, nginx with the
documented config (docs/deploy/nginx-stemserve.conf), and the health watcher.

Everything is a child process, stopped by its pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from stemserve.server.fleet import check_serving

ROOT = Path(__file__).resolve().parents[2]
NGINX_SITE = ROOT / "docs" / "deploy" / "nginx-stemserve.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_available() -> bool:
    return Path(NGINX).is_file()


def wait_for(predicate, timeout: float, what: str, poll: float = 0.05) -> float:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until true; returns the seconds it took (AssertionError after ``timeout``)."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(poll)
    return time.monotonic() - started


class Nginx:
    """nginx in the foreground with the documented site config, its paths under ``folder``."""

    def __init__(self, folder: Path, port: int, upstream_file: Path) -> None:
        self.folder = folder
        self.port = port
        self.pid_file = folder / "nginx.pid"
        self.log = folder / "nginx-error.log"
        site = NGINX_SITE.read_text()
        site = site.replace("/etc/nginx/stemserve-upstream.conf", str(upstream_file))
        site = site.replace("listen 127.0.0.1:50050 http2;", f"listen 127.0.0.1:{port} http2;")
        (folder / "site.conf").write_text(site)
        temp = folder / "temp"
        temp.mkdir(exist_ok=True)
        (folder / "nginx.conf").write_text(
            f"""worker_processes 1;
pid {self.pid_file};
error_log {self.log} info;
events {{ worker_connections 1024; }}
http {{
    access_log {folder / "access.log"};
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {folder / "site.conf"};
}}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        conf = str(self.folder / "nginx.conf")
        # -e: the startup error log too (the compiled-in /var/log/nginx may not be writable).
        base = [NGINX, "-p", str(self.folder), "-e", str(self.log), "-c", conf]
        check = subprocess.run([*base, "-t"], capture_output=True, timeout=10)
        assert check.returncode == 0, check.stderr.decode()
        self.proc = subprocess.Popen(
            [*base, "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=open(self.folder / "nginx-stderr.log", "wb"),  # noqa: SIM115 (the child holds it)
        )
        wait_for(self.pid_file.is_file, 10, "nginx pid file")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fast shutdown: the test is over
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_server(
    port: int, log: Path, max_sessions: int | None = None, warm_up_delay: float = 0.0
) -> subprocess.Popen[bytes]:
    """``tests.deploy.fleet_server`` on ``port``; returns once it listens (it may still be warming up)."""
    command = [sys.executable, "-m", "tests.deploy.fleet_server", "--port", str(port)]
    command += ["--warm-up-delay", str(warm_up_delay)]
    if max_sessions is not None:
        command += ["--max-sessions", str(max_sessions)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    try:
        wait_for(lambda: proc.poll() is not None or "stemserve listening" in log.read_text(), 120, "server start")
    except AssertionError:
        stop_process(proc, signal.SIGKILL)
        raise
    if proc.poll() is not None:
        raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
    return proc


def start_watcher(servers: list[str], upstream_file: Path, pid_file: Path, log: Path) -> subprocess.Popen[bytes]:
    """``python -m stemserve.server.fleet`` for ``servers``; returns once it has written the upstream file."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "stemserve.server.fleet", "--upstream-file", str(upstream_file),
         "--nginx-pid", str(pid_file), "--interval", "0.25", *[a for s in servers for a in ("--server", s)]],
        cwd=ROOT, env=dict(os.environ), stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )  # fmt: skip
    wait_for(upstream_file.is_file, 30, "the watcher's upstream file")
    return proc


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def serving(address: str) -> bool:
    return check_serving(address, timeout=0.5)
