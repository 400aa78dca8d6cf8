"""Health-driven upstreams for nginx in front of several ``stemserve serve`` processes.

Open-source nginx has no active health checks (``health_check`` is NGINX Plus only),
and to its passive checks a gRPC refusal is a success: ``UNAVAILABLE`` while a
server warms up or drains travels as HTTP 200 with a ``grpc-status`` trailer. So
nginx alone would keep sending new sessions to a server that is warming up. This
watcher asks every server's standard gRPC health service (``grpc.health.v1``,
overall status ``""``) every ``interval`` seconds, writes the nginx ``upstream``
block with the servers that are not SERVING marked ``down``, and reloads nginx
(SIGHUP) when that set changes. A reload keeps every open connection, so sessions
already streaming stay where they are; only new ones follow the new upstream list.

Run it beside nginx::

    python -m stemserve.server.fleet --upstream-file /etc/nginx/stemserve-upstream.conf \\
        --nginx-pid /run/nginx.pid --server 10.0.0.11:50051 --server 10.0.0.12:50051

(``--token`` when the servers need one: health is behind the same interceptor.)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_UPSTREAM = "stemserve"
# Health checks in a row without an answer (1 s each) before a SERVING server is marked down.
MISSES_TO_DOWN = 3


def upstream_block(name: str, servers: Sequence[str], serving: set[str]) -> str:
    """The nginx ``upstream`` block of ``servers``; those not in ``serving`` are marked ``down``.

    Round robin (nginx's default), not ``least_conn``: a full server refuses a session
    at once, so its connection closes and ``least_conn`` would see it as the least
    loaded and hand it every retry; round robin hands the retry to the next server.
    ``max_fails=1 fail_timeout=5s``: a server that refuses connections (stopped, or
    draining: its listener closes at once) is skipped for 5 s and the call goes to the
    next one (``grpc_next_upstream error``), before the watcher's next look.
    """
    lines = [f"upstream {name} {{"]
    for address in servers:
        down = "" if address in serving else " down"
        lines.append(f"    server {address} max_fails=1 fail_timeout=5s{down};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def check_health(address: str, timeout: float = 1.0, token: str | None = None) -> bool | None:
    """True: ``address``'s health says SERVING. False: it says otherwise, or refuses the connection.
    None: no answer within ``timeout`` (a busy server on a loaded machine, or a network hiccup)."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout, metadata=metadata
            )
        except grpc.RpcError as err:
            if isinstance(err, grpc.Call) and err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return None
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def check_serving(address: str, timeout: float = 1.0, token: str | None = None) -> bool:
    """True when ``address``'s health says SERVING within ``timeout``."""
    return bool(check_health(address, timeout, token))


class UpstreamWatcher:
    """Polls the servers' health and keeps ``upstream_file`` (and nginx) in step with it.

    Args:
        servers: ``host:port`` of every server, in the order written.
        upstream_file: the file nginx's ``http`` block ``include``s.
        nginx_pid_file: nginx's pid file (SIGHUP reloads it); None: write only.
        name: the upstream's name (``grpc_pass grpc://<name>``).
        interval: seconds between polls.
        token: bearer token for the health calls.
    """

    def __init__(
        self,
        servers: Sequence[str],
        upstream_file: Path,
        nginx_pid_file: Path | None = None,
        name: str = DEFAULT_UPSTREAM,
        interval: float = 0.5,
        token: str | None = None,
    ) -> None:
        if not servers:
            raise ValueError("the fleet needs at least one server")
        self.servers = list(servers)
        self.upstream_file = Path(upstream_file)
        self.nginx_pid_file = nginx_pid_file
        self.name = name
        self.interval = interval
        self.token = token
        self.serving: set[str] | None = None  # None until the first poll
        self.reloads = 0
        self.timeout = 1.0
        self._misses: dict[str, int] = {}
        self._reload_pending = False
        self._stop = threading.Event()

    def poll(self) -> bool:
        """Check every server once; rewrite and reload when the serving set changed. True if it did."""
        serving = set()
        for address in self.servers:
            answer = check_health(address, self.timeout, self.token)
            # An explicit NOT_SERVING or a refused connection counts at once; a server that
            # only answered late keeps its state for MISSES_TO_DOWN polls (no flapping under load).
            self._misses[address] = self._misses.get(address, 0) + 1 if answer is None else 0
            was_serving = self.serving is not None and address in self.serving
            if answer or (answer is None and was_serving and self._misses[address] < MISSES_TO_DOWN):
                serving.add(address)
        if serving == self.serving:
            if self._reload_pending:
                self.reload()
            return False
        self.write(serving)
        self._reload_pending = True
        self.reload()
        log.info("serving: %s (down: %s)", sorted(serving) or "none", sorted(set(self.servers) - serving) or "none")
        self.serving = serving
        return True

    def write(self, serving: set[str]) -> None:
        tmp = self.upstream_file.with_name(self.upstream_file.name + ".tmp")
        tmp.write_text(upstream_block(self.name, self.servers, serving))
        tmp.replace(self.upstream_file)  # nginx never reads half a file

    def reload(self) -> None:
        """SIGHUP nginx; when it cannot be signalled yet (starting, restarting), the next poll tries again."""
        if self.nginx_pid_file is None:
            self._reload_pending = False
            return
        try:
            pid = int(self.nginx_pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError, IndexError) as err:  # no pid file yet, half written, nginx gone
            log.warning("cannot reload nginx (%s); trying again at the next poll", err)
            return
        self._reload_pending = False
        self.reloads += 1

    def run(self) -> None:
        """Poll until :meth:`stop` (or SIGTERM / SIGINT in :func:`main`)."""
        while not self._stop.is_set():
            started = time.monotonic()
            self.poll()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stemserve.server.fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", action="append", required=True, metavar="HOST:PORT", help="a server (repeat)")
    parser.add_argument("--upstream-file", type=Path, required=True, help="the upstream block nginx includes")
    parser.add_argument("--nginx-pid", type=Path, default=None, help="nginx's pid file (reloaded on change)")
    parser.add_argument("--name", default=DEFAULT_UPSTREAM, help=f"upstream name (default {DEFAULT_UPSTREAM})")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between health polls (default 0.5)")
    parser.add_argument("--token", default=os.environ.get("STEMSERVE_TOKEN"), help="bearer token for health calls")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        watcher = UpstreamWatcher(args.server, args.upstream_file, args.nginx_pid, args.name, args.interval, args.token)
    except ValueError as err:
        print(f"fleet: {err}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: watcher.stop())
    watcher.write(set())  # nothing is known to serve yet: nginx starts with every server down
    print(f"fleet: watching {len(args.server)} servers, upstream in {args.upstream_file}", flush=True)
    watcher.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
