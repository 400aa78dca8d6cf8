"""Two servers behind nginx (grpc_pass, the documented config) and the health watcher, on loopback.

Eight bridges (offline ``process`` API, paced at real time) and two ``stemserve separate`` jobs
go through the one proxy address and spread over both servers. The server holding a file job is
stopped gracefully (SIGTERM) mid-stream: its sessions end with UNAVAILABLE, their bridges
reconnect through the proxy to the other server, output stays aligned at the same latency
(dry while reconnecting, counted), and the file jobs finish with exact stems (the interrupted
one retried by ``stemserve separate``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf

from stemserve.plugin_bridge.bridge import Bridge, BridgeSettings
from stemserve.protos import stemserve_pb2 as pb
from stemserve.protos import stemserve_pb2_grpc as pb_grpc
from tests.deploy.fleet import ROOT, Nginx, serving, start_server, start_watcher, stop_process, wait_for
from tests.plugin_bridge.servers import CHANNELS, RATE, free_port

BRIDGES = 8
BLOCK = 1024
PERIOD = BLOCK / RATE
MAX_SECONDS = 60  # audio per bridge, at most (the host loop stops once the checks have what they need)
FILE_SECONDS = 180
# Stop -> every moved session open again on the other server: the server's grace (0.5 s) plus the
# bridge's first backoff (0.1 s) and an open, with room for this shared 2-core machine.
RECONNECT_WITHIN_S = 5.0
GAIN = 0.5  # the `ident` model's stem is the input: wet = GAIN x dry, so every frame says which it is


@dataclass
class Fleet:
    servers: list[subprocess.Popen[bytes]]
    addresses: list[str]
    proxy: str
    upstream_file: Path


@contextlib.contextmanager
def running_fleet(
    folder: Path, max_sessions: list[int | None], warm_up_delays: list[float] | None = None, wait_all: bool = True
) -> Iterator[Fleet]:
    """One tiny server per entry of ``max_sessions`` (its real-time session limit), nginx and the watcher.

    ``wait_all``: yield once every server is SERVING and in the upstream (else once the first one is).
    """
    ports = [free_port() for _ in max_sessions]
    delays = warm_up_delays or [0.0] * len(ports)
    servers: list[subprocess.Popen[bytes]] = []
    watcher = nginx = None
    try:
        for port, limit, delay in zip(ports, max_sessions, delays, strict=True):
            servers.append(start_server(port, folder / f"server-{port}.log", limit, delay))
        addresses = [f"127.0.0.1:{p}" for p in ports]
        upstream = folder / "upstream.conf"
        nginx = Nginx(folder, free_port(), upstream)
        watcher = start_watcher(addresses, upstream, nginx.pid_file, folder / "watcher.log")
        nginx.start()
        if wait_all:
            wait_for(lambda: all(serving(a) for a in addresses), 60, "every server SERVING")
            wait_for(lambda: " down;" not in upstream.read_text(), 10, "every server in the upstream")
        wait_for(lambda: serving(f"127.0.0.1:{nginx.port}"), 60, "health through the proxy")
        yield Fleet(servers, addresses, f"127.0.0.1:{nginx.port}", upstream)
    finally:
        for server in servers:
            stop_process(server)
        if watcher is not None:
            stop_process(watcher)
        if nginx is not None:
            nginx.stop()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with running_fleet(tmp_path, [None, None]) as running:
        yield running


def get_stats(address: str) -> pb.GetStatsResponse:
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.SeparationStub(channel).GetStats(pb.GetStatsRequest(), timeout=5)


def offline_sessions_of(stats: pb.GetStatsResponse) -> int:
    return stats.sessions - int(json.loads(stats.extra_json)["realtime_sessions"])


class PacedHost:
    """Renders through ``bridge.process`` one block per block period, like a host bouncing in real time."""

    def __init__(self, bridge: Bridge, audio: np.ndarray, stop: threading.Event) -> None:
        self.bridge = bridge
        self.audio = audio
        self.out = np.zeros_like(audio)
        self.frames = 0
        self.errors: list[BaseException] = []
        self._stop = stop
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        next_time = time.monotonic()
        try:
            while not self._stop.is_set() and self.frames + BLOCK <= self.audio.shape[1]:
                s = self.frames
                self.out[:, s : s + BLOCK] = self.bridge.process(self.audio[:, s : s + BLOCK])
                self.frames += BLOCK
                next_time += PERIOD
                time.sleep(max(0.0, next_time - time.monotonic()))
        except BaseException as err:  # recorded: the test asserts none
            self.errors.append(err)


def classify(host: PacedHost, total: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output frame: (is the aligned stem, is the aligned dry input), at latency ``total``."""
    n = host.frames
    dry = np.concatenate([np.zeros((CHANNELS, total), np.float32), host.audio[:, : n - total]], axis=1)
    out = host.out[:, :n]
    return np.all(np.abs(out - GAIN * dry) < 1e-5, axis=0), np.all(np.abs(out - dry) < 1e-5, axis=0)


def separate_job(path: Path, out: Path, proxy: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "stemserve.server.cli", "separate", str(path), "--server", proxy, "--model", "ident",
         "--out", str(out), "--wait", "30"],
        cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip


@pytest.mark.slow
def test_graceful_stop_moves_sessions_and_file_jobs_to_the_other_server(
    fleet: Fleet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="stemserve.plugin_bridge.stream")
    rng = np.random.default_rng(19)
    stop_hosts = threading.Event()
    bridges: list[Bridge] = []
    hosts: list[PacedHost] = []
    jobs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(BRIDGES):
            settings = BridgeSettings(
                fleet.proxy, "ident", RATE, CHANNELS, target="speech", gains={"speech": GAIN},
                client_name=f"track-{i}", block_frames=BLOCK, margin_ms=40.0, backoff_max_s=0.5,
            )  # fmt: skip
            bridge = Bridge(settings)
            bridges.append(bridge)
            assert bridge.start(wait_s=30) is not None, f"bridge {i} did not connect through the proxy"
        per_server = [get_stats(a).sessions for a in fleet.addresses]
        assert sorted(per_server) == [BRIDGES // 2, BRIDGES // 2], per_server  # round robin spreads

        for bridge in bridges:
            audio = (0.3 * rng.standard_normal((CHANNELS, RATE * MAX_SECONDS))).astype(np.float32)
            hosts.append(PacedHost(bridge, audio, stop_hosts))
        for host in hosts:
            host.thread.start()

        files = []
        for j in range(2):
            path = tmp_path / f"song-{j}.wav"
            audio = (0.2 * rng.standard_normal((RATE * FILE_SECONDS, CHANNELS))).astype(np.float32)
            sf.write(path, audio, RATE, subtype="PCM_16")
            files.append(path)
            jobs.append(separate_job(path, tmp_path / f"stems-{j}", fleet.proxy, tmp_path / f"job-{j}.log"))

        # Stop the server that holds a file job, while it runs.
        holder: list[int] = []

        def a_job_is_running() -> bool:
            holder[:] = [k for k, a in enumerate(fleet.addresses) if offline_sessions_of(get_stats(a)) > 0]
            return bool(holder)

        wait_for(a_job_is_running, 60, "a file job on a server", poll=0.02)
        victim, survivor = holder[0], 1 - holder[0]
        before = [get_stats(a) for a in fleet.addresses]
        assert all(s.blocks_in > 0 for s in before), "both servers got work"
        moved = before[victim].sessions - offline_sessions_of(before[victim])  # its bridges' sessions
        fleet.servers[victim].send_signal(signal.SIGTERM)

        def all_moved() -> bool:
            return sum(b.stats()["reconnects"] for b in bridges) >= moved

        reconnect_s = wait_for(all_moved, 30, f"{moved} sessions reopened on the other server")
        assert fleet.servers[victim].wait(20) == 0, "the stopped server exited cleanly"
        marked_down = f"{fleet.addresses[victim]} max_fails=1 fail_timeout=5s down;"
        wait_for(lambda: marked_down in fleet.upstream_file.read_text(), 10, "the stopped server marked down")
        # Two more seconds of stems on the survivor, then the hosts stop.
        settled = min(h.frames for h in hosts)
        wait_for(lambda: min(h.frames for h in hosts) >= settled + 2 * RATE, 30, "two more seconds rendered")
        stop_hosts.set()
        for host in hosts:
            host.thread.join(10)
        after = get_stats(fleet.addresses[survivor])
        assert after.sessions - offline_sessions_of(after) == BRIDGES, "every bridge now streams to the survivor"

        codes = [job.wait(90) for job in jobs]
    finally:
        stop_hosts.set()
        for bridge in bridges:
            bridge.stop()
        for job in jobs:
            stop_process(job)

    print(f"fleet: {per_server} sessions per server; {moved} moved; all reopened {reconnect_s:.2f} s after SIGTERM")
    assert reconnect_s < RECONNECT_WITHIN_S

    for i, (bridge, host) in enumerate(zip(bridges, hosts, strict=True)):
        stats = bridge.stats()
        assert host.errors == [] and stats["callback_errors"] == 0
        assert stats["frames"] == host.frames  # frames out == frames in
        total = bridge.latency_samples
        assert total is not None
        is_wet, is_dry = classify(host, total)
        # Every frame is the aligned stem or the aligned dry input: never shifted, never lost.
        assert np.all(is_wet | is_dry), f"bridge {i}: frames neither stem nor dry at latency {total}"
        dry_frames = int(np.sum(is_dry & ~is_wet))
        # The bridge counts every dry frame: its first `total` (no estimate can exist yet; silent
        # input there, so both wet and dry above) and each one while its session moved.
        assert dry_frames + total == stats["gap_frames"] + stats["underrun_frames"], (i, dry_frames, stats)
        assert np.mean(is_wet[-RATE:]) == 1.0, f"bridge {i}: not all stems in its last second"
        if stats["reconnects"]:
            assert stats["sessions_opened"] == 2 and dry_frames > 0
            print(f"fleet: bridge {i} moved: {dry_frames} dry frames ({1000 * dry_frames / RATE:.0f} ms)")
        else:
            assert dry_frames == 0
    assert sum(b.stats()["reconnects"] for b in bridges) == moved
    # The moved sessions ended with a status that says why (and that retrying is right).
    lost = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stream lost")]
    assert len(lost) == moved and all(m.startswith("stream lost (UNAVAILABLE") for m in lost), lost

    logs = [(tmp_path / f"job-{j}.log").read_text(errors="replace") for j in range(2)]
    assert codes == [0, 0], logs
    assert any("retrying" in text for text in logs), "the interrupted file job was not retried"
    for j, path in enumerate(files):
        source, _ = sf.read(path, dtype="int16")
        for stem in ("speech", "noise"):
            got, _ = sf.read(tmp_path / f"stems-{j}" / "ident" / path.stem / f"{stem}.wav", dtype="int16")
            assert np.array_equal(got, source), f"job {j} stem {stem} is not the input"


@pytest.mark.slow
def test_a_full_server_refuses_and_the_retry_through_the_proxy_lands_on_another(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stemserve.plugin_bridge.stream")
    limit, count = 2, 6
    bridges: list[Bridge] = []
    with running_fleet(tmp_path, [limit, None]) as fleet:
        try:
            for i in range(count):
                settings = BridgeSettings(
                    fleet.proxy, "ident", RATE, CHANNELS, client_name=f"track-{i}", backoff_max_s=0.5
                )
                bridges.append(Bridge(settings))
                started = time.monotonic()
                assert bridges[-1].start(wait_s=10) is not None, f"bridge {i} found no server with room"
                assert time.monotonic() - started < 5.0
            per_server = [get_stats(a).sessions for a in fleet.addresses]
            # Round robin offers the full server every other open; its refusals were retried elsewhere.
            assert per_server == [limit, count - limit], per_server
            refused = [r.getMessage() for r in caplog.records if "RESOURCE_EXHAUSTED" in r.getMessage()]
            assert refused, "no open was refused: the full server was never offered one"
            assert sum(b.stats()["connect_failures"] for b in bridges) >= len(refused)
            audio = np.ones((CHANNELS, 4096), np.float32)
            for bridge in bridges:  # every session streams
                bridge.process(audio)
                assert bridge.stats()["blocks_received"] > 0
        finally:
            for bridge in bridges:
                bridge.stop()
    print(f"fleet admission: sessions {per_server}, {len(refused)} refused opens retried: {refused[0]}")


@pytest.mark.slow
def test_a_server_warming_up_gets_no_sessions_until_its_health_says_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stemserve.plugin_bridge.stream")
    bridges: list[Bridge] = []

    def open_bridge(i: int) -> Bridge:
        bridge = Bridge(BridgeSettings(fleet.proxy, "ident", RATE, CHANNELS, client_name=f"track-{i}"))
        bridges.append(bridge)
        assert bridge.start(wait_s=10) is not None
        return bridge

    # The second server is NOT_SERVING for its first 15 s (a slow warm-up).
    with running_fleet(tmp_path, [None, None], warm_up_delays=[0.0, 15.0], wait_all=False) as fleet:
        try:
            warm, cold = fleet.addresses
            assert serving(warm) and not serving(cold)
            assert f"{cold} max_fails=1 fail_timeout=5s down;" in fleet.upstream_file.read_text()
            for i in range(4):
                open_bridge(i)
                assert not serving(cold), "the slow server finished warming up before the test was done with it"
            # Every open went to the warm server at once: the cold one was never offered one.
            assert [get_stats(a).sessions for a in fleet.addresses] == [4, 0]
            assert sum(b.stats()["connect_failures"] for b in bridges) == 0
            ready_s = wait_for(lambda: serving(cold), 60, "the slow server SERVING")
            # Once SERVING, new sessions reach it within a few polls and an nginx reload.
            up_s = wait_for(
                lambda: " down;" not in fleet.upstream_file.read_text(), 10, "the slow server in the upstream"
            )
            opened = len(bridges)
            routed_s = wait_for(
                lambda: bool(open_bridge(len(bridges))) and get_stats(cold).sessions > 0, 10, "a new session there"
            )
            tries = len(bridges) - opened  # opens until one landed there (while nginx reloads, a few more)
            assert sum(b.stats()["connect_failures"] for b in bridges) == 0
        finally:
            for bridge in bridges:
                bridge.stop()
    print(
        f"fleet warm-up: cold server SERVING after {ready_s:.1f} s more; in the upstream {up_s:.2f} s later; "
        f"a new session there {routed_s:.2f} s after that ({tries} opens)"
    )
