"""Real time on a real JACK server (``jackd -d dummy``, 48 kHz, 256-frame buffers) started by the test.

``stemserve bridge`` runs as a JACK client for more than 20 s of audio with a
passthrough model; a player client feeds it an impulse every second, a recorder
client takes its output. The measured delay of every impulse equals the latency
the bridge reported (and published to JACK); xruns and underruns are reported.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import jack  # JACK-Client (the bridge extra); jackd comes from scripts/install-deps
import pytest

from tests.plugin_bridge.impulses import ImpulseRig
from tests.plugin_bridge.servers import ROOT, free_port, start_process

pytestmark = [pytest.mark.jack, pytest.mark.slow]

RATE = 48000
PERIOD = 256
SECONDS = 22
# Network slack: generous, because CI shares its 2 cores with other work and the server and the bridge's
# network thread run at normal priority (only JACK's process threads are real-time).
MARGIN_MS = 150


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def jack_client(name: str, server: str) -> jack.Client | None:
    try:
        return jack.Client(name, no_start_server=True, servername=server)
    except jack.JackError:
        return None


def test_jack_bridge_impulse_latency_equals_reported_latency(tmp_path) -> None:
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    server_name = f"stemserve-test-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, JACK_NO_AUDIO_RESERVATION="1", JACK_DEFAULT_SERVER=server_name)
    jackd = subprocess.Popen(
        ["jackd", "-n", server_name, "-d", "dummy", "-r", str(RATE), "-p", str(PERIOD)],
        env=env,
        stdout=open(tmp_path / "jackd.log", "wb"),  # noqa: SIM115 (closed with the process)
        stderr=subprocess.STDOUT,
    )
    port = free_port()
    stemserver = None
    bridge = None
    player = recorder = None
    try:
        probe: list[jack.Client] = []
        wait_for(lambda: probe.append(c) or True if (c := jack_client("probe", server_name)) else False, 20, "jackd")
        probe[0].close()
        stemserver = start_process(port, tmp_path / "server.log")
        stats_path = tmp_path / "stats.json"
        bridge_log = tmp_path / "bridge.log"
        bridge = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stemserve.server.cli",
                "-v",
                "bridge",
                "--front",
                "jack",
                "--jack-server",
                server_name,
                "--name",
                "stembridge",
                "--server",
                f"127.0.0.1:{port}",
                "--model",
                "ident",
                "--target",
                "speech",
                "--margin-ms",
                str(MARGIN_MS),
                "--duration",
                str(SECONDS + 6),
                "--stats-json",
                str(stats_path),
            ],
            cwd=ROOT,
            env=env,
            stdout=open(bridge_log, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: "LATENCY " in bridge_log.read_text() or bridge.poll() is not None, 60, "bridge latency")
        assert bridge.poll() is None, bridge_log.read_text()
        reported = int(bridge_log.read_text().split("LATENCY ")[1].split()[0])

        player = jack.Client("impulse-player", no_start_server=True, servername=server_name)
        recorder = jack.Client("impulse-recorder", no_start_server=True, servername=server_name)
        rig = ImpulseRig(player, recorder, RATE, SECONDS)  # first impulse after a second of settling

        player.activate()
        recorder.activate()
        player.connect(rig.play_port, "stembridge:in_1")
        player.connect(rig.play_port, "stembridge:in_2")
        recorder.connect("stembridge:out_1", rig.rec_port)
        from stemserve.plugin_bridge.jack_front import CAPTURE_LATENCY, port_latency

        published = port_latency(recorder.get_port_by_name("stembridge:out_1"), CAPTURE_LATENCY)
        wait_for(lambda: len(rig.impulses) >= SECONDS, SECONDS + 20, "impulses played")
        time.sleep(reported / RATE + 0.5)
        player.deactivate()
        recorder.deactivate()
        bridge.wait(SECONDS + 30)
        assert bridge.returncode == 0, bridge_log.read_text()[-3000:]
        summary = json.loads(stats_path.read_text())
    finally:
        for client in (player, recorder):
            if client is not None:
                client.close()
        if bridge is not None and bridge.poll() is None:
            bridge.send_signal(signal.SIGTERM)
            bridge.wait(20)
        if stemserver is not None:
            stemserver.send_signal(signal.SIGTERM)
            stemserver.wait(20)
        jackd.send_signal(signal.SIGTERM)
        jackd.wait(20)

    counters = summary["counters"]
    print(f"JACK bridge: latency {reported}, published {published}, counters {counters}")
    assert summary["latency"] == reported
    assert published == (reported, reported)
    impulses = rig.impulses
    assert len(impulses) >= SECONDS - 1 and (impulses[-1] - impulses[0]) / RATE >= 20
    # Every impulse comes out exactly at the reported latency; an xrun (JACK skipping a cycle of the
    # bridge or of this test's own Python clients, which share the test process's GIL) may disturb
    # the measurement of the impulses in flight, never the bridge's alignment (ImpulseRig.assert_delays).
    rig.assert_delays(reported, PERIOD, RATE // 2, counters["xruns"])
    assert counters["callback_errors"] == 0
    assert counters["frames"] >= SECONDS * RATE
    # Reported, and zero for passthrough on an idle machine. On a busy one (CI shares 2 cores with
    # other work) JACK also notifies xruns caused by its dummy driver's timer or by late clients:
    # this test's own Python clients, or the bridge's callback waiting for Python's GIL while a
    # preempted normal-priority thread holds it. Those are counted, consistently with JACK's log.
    assert counters["underrun_frames"] == 0, counters
    jack_log = (tmp_path / "jackd.log").read_text(errors="replace")
    driver_xruns = jack_log.count("JackTimedDriver::Process XRun")
    late_clients = [line for line in jack_log.splitlines() if "was not finished" in line]
    print(
        f"xruns seen by the bridge {counters['xruns']}, by the recorder {len(rig.xruns)}; load {load:.2f} per core; "
        f"JACK log: driver {driver_xruns}, late clients {late_clients}"
    )
    # Whether the bridge's own callback is ever late (JACK's "stembridge was not finished, state =
    # Running") is printed, not asserted: the callback is Python at JACK's real-time priority, but it
    # takes the GIL from the bridge's normal-priority network thread, and on 2 shared cores that thread
    # can be preempted while holding it, even when the load average read at the start was low. What a
    # late cycle may never do is asserted above: lose alignment, play an underrun, or raise.
    bridge_late = [line for line in late_clients if "stembridge" in line and "Running" in line]
    print(f"bridge callback late in {len(bridge_late)} of {counters['callbacks']} cycles")


def test_jack_transport_stop_and_relocation_reset_the_session(tmp_path, server_address: str) -> None:  # type: ignore[no-untyped-def]
    """The JACK front follows JACK transport as a DAW drives it: rolling on is not a reset; a jump
    while rolling, a stop, and a locate while stopped each reset the session (latency unchanged)."""
    from stemserve.plugin_bridge.bridge import Bridge, BridgeSettings
    from stemserve.plugin_bridge.jack_front import JackFront

    server_name = f"stemserve-test-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, JACK_NO_AUDIO_RESERVATION="1")
    jack_log = open(tmp_path / "jackd.log", "wb")  # noqa: SIM115 (closed in finally)
    jackd = subprocess.Popen(
        ["jackd", "-n", server_name, "-d", "dummy", "-r", str(RATE), "-p", str(PERIOD)],
        env=env,
        stdout=jack_log,
        stderr=subprocess.STDOUT,
    )
    front = control = None
    try:
        clients: list[jack.Client] = []
        wait_for(
            lambda: clients.append(c) or True if (c := jack_client("control", server_name)) else False, 20, "jackd"
        )
        control = clients[0]
        front = JackFront("stembridge", 2, server_name)
        bridge = Bridge(BridgeSettings(server_address, "ident", RATE, 2, max_block=PERIOD, margin_samples=PERIOD))
        front.attach(bridge)
        assert bridge.start(wait_s=30) is not None
        total = bridge.latency_samples
        front.start()
        counters = bridge.counters

        def settle() -> None:
            time.sleep(0.25)  # dozens of JACK cycles

        control.transport_frame = 0
        settle()
        before = counters.transport_resets  # the initial locate may or may not reset: measure from here
        control.transport_start()
        settle()
        assert counters.transport_resets == before, "starting to roll is not a reset"
        control.transport_frame = 10 * RATE  # a seek while rolling
        settle()
        assert counters.transport_resets == before + 1
        control.transport_stop()
        settle()
        assert counters.transport_resets == before + 2
        settle()
        assert counters.transport_resets == before + 2, "standing still is not a reset"
        control.transport_frame = 3 * RATE  # a locate while stopped
        settle()
        assert counters.transport_resets == before + 3
        wait_for(lambda: bridge.timeline.reset_requested >= before + 3, 5, "resets requested")
        assert bridge.latency_samples == total and counters.callback_errors == 0
        bridge.stop()
    finally:
        if front is not None:
            front.stop()
        if control is not None:
            control.close()
        jackd.send_signal(signal.SIGTERM)
        jackd.wait(20)
        jack_log.close()
