"""The native LV2 plugin (``plugin_bridge/lv2``) in real hosts, against a real server with tiny models.

The module builds the plugin with CMake once (``build/lv2``, incremental) and then:

1. **Offline host** (``lv2file``, freewheeling): the rendered file equals the server's own offline
   separation shifted by the latency the plugin reported, for several host block sizes.
2. **Real-time host** (``jalv`` on ``jackd -d dummy``, 48 kHz, 256 frames): see ``test_jalv_...``.
3. **A DAW** (Ardour 7.3 headless: ``ardour7-lua`` builds the session, ``ardour7-export`` exports it
   freewheeling): one recorded take, copied per test; see ``test_ardour_...``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stemserve.plugin_bridge.client import StemClient
from tests.plugin_bridge import lv2_hosts
from tests.plugin_bridge.servers import CHANNELS, RATE

pytestmark = [pytest.mark.slow]

TOLERANCE = 1e-4
RAMP_FRAMES = 256  # core.hpp kRampFrames: a control change ramps linearly over this many output frames
PLUGIN_CHUNK = 4096  # core.hpp kChunk: host blocks are processed in pieces of at most this


@pytest.fixture(scope="module")
def lv2_path() -> Path:
    missing = lv2_hosts.missing_tools()
    assert not missing, f"missing {missing}: run scripts/install-deps"
    return lv2_hosts.build_bundle()


def noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal((CHANNELS, round(seconds * RATE)))).astype(np.float32)


@pytest.mark.parametrize(
    ("model", "target", "stem", "block"),
    [
        ("causal", 1, "speech", 256),
        ("causal", 2, "noise", 1000),  # not a power of two, not a divisor of anything
        ("causal", 1, "speech", 4096),
        ("causal", 0, None, 64),  # target 0: all stems by their gains (1.0 each)
    ],
)
def test_lv2file_render_equals_offline_separation_shifted_by_reported_latency(
    lv2_path: Path, server_address: str, tmp_path: Path, model: str, target: int, stem: str | None, block: int
) -> None:
    audio = noise(1.5, seed=block)
    with StemClient(server_address) as client:
        stems = client.separate_array(audio, RATE, model)
    expected = stems[stem] if stem is not None else sum(stems.values())

    rendered, log = lv2_hosts.run_lv2file(
        lv2_path, server_address, model, audio, RATE, tmp_path, block, {"target": target, "freewheel": 1}
    )
    total = lv2_hosts.reported_latency(log)
    frames = audio.shape[1]
    assert rendered.shape == audio.shape
    assert 0 < total < frames // 2
    # Output frame n is the estimate for input frame n - total; before that, the (silent) dry past.
    np.testing.assert_allclose(rendered[:, total:], expected[:, : frames - total], atol=TOLERANCE)
    assert np.all(rendered[:, :total] == 0.0)


def test_lv2file_gains_and_mix_are_mixed_by_the_plugin_as_the_server_would(
    lv2_path: Path, server_address: str, tmp_path: Path
) -> None:
    """``target`` 0 with gains 0.5 / 0.25 and ``mix`` 0.7: the plugin mixes the returned stems by the
    server's rule, 0.7 x (0.5 speech + 0.25 noise) + 0.3 x the dry input, aligned to the latency."""
    audio = noise(1.5, seed=21)
    with StemClient(server_address) as client:
        stems = client.separate_array(audio, RATE, "causal")
    rendered, log = lv2_hosts.run_lv2file(
        lv2_path,
        server_address,
        "causal",
        audio,
        RATE,
        tmp_path,
        512,
        {"target": 0, "gain_1": 0.5, "gain_2": 0.25, "mix": 0.7, "freewheel": 1},
    )
    total = lv2_hosts.reported_latency(log)
    frames = audio.shape[1]
    wet = 0.5 * stems["speech"] + 0.25 * stems["noise"]
    expected = 0.7 * wet[:, : frames - total] + 0.3 * audio[:, : frames - total]
    np.testing.assert_allclose(rendered[:, total:], expected, atol=TOLERANCE)
    assert np.abs(rendered[:, total:] - wet[:, : frames - total]).max() > 0.01  # the dry part is there


@pytest.mark.parametrize("block", [256, 1000])
def test_lv2file_spectrogram_render_equals_the_python_bridge_render(
    lv2_path: Path, server_address: str, tmp_path: Path, block: int
) -> None:
    """For a spectrogram model the oracle is a real-time session's own output (the Python bridge's
    exact offline render): since the file path follows a throughput plan (models.apply.file_plan),
    the server's whole-file Separate differs from a real-time session by up to ~5e-3 on ``spec``."""
    from stemserve.plugin_bridge.bridge import Bridge, BridgeSettings

    audio = noise(1.5, seed=block)
    with Bridge(BridgeSettings(server_address, "spec", RATE, CHANNELS, target="drums", margin_samples=0)) as bridge:
        report = bridge.start(wait_s=30)
        assert report is not None, "the Python bridge did not connect"
        reference = np.concatenate(
            [bridge.process(audio[:, i : i + 512]) for i in range(0, audio.shape[1], 512)], axis=1
        )
        assert bridge.stats()["underrun_frames"] == 0
    rendered, log = lv2_hosts.run_lv2file(
        lv2_path, server_address, "spec", audio, RATE, tmp_path, block, {"target": 2, "freewheel": 1}
    )
    total = lv2_hosts.reported_latency(log)
    frames = audio.shape[1] - total
    # Both are aligned to their own latency: shifted back, they are the same estimates.
    np.testing.assert_allclose(rendered[:, total:], reference[:, report.total : report.total + frames], atol=TOLERANCE)
    assert np.abs(rendered[:, total:]).max() > 0.1


def test_lv2file_mono_plugin_renders_the_mono_separation(lv2_path: Path, server_address: str, tmp_path: Path) -> None:
    audio = noise(1.0, seed=3)[:1]
    with StemClient(server_address) as client:
        expected = client.separate_array(audio, RATE, "causal")["noise"]
    rendered, log = lv2_hosts.run_lv2file(
        lv2_path,
        server_address,
        "causal",
        audio,
        RATE,
        tmp_path,
        512,
        {"target": 2, "freewheel": 1},
        plugin=lv2_hosts.MONO,
    )
    total = lv2_hosts.reported_latency(log)
    np.testing.assert_allclose(rendered[:, total:], expected[:, : audio.shape[1] - total], atol=TOLERANCE)


def test_lv2file_bypass_is_the_input_delayed_by_the_same_latency(
    lv2_path: Path, server_address: str, tmp_path: Path
) -> None:
    audio = noise(1.0, seed=4)
    rendered, log = lv2_hosts.run_lv2file(
        lv2_path, server_address, "spec", audio, RATE, tmp_path, 256, {"enabled": 0, "freewheel": 1}
    )
    total = lv2_hosts.reported_latency(log)
    np.testing.assert_array_equal(rendered[:, total:], audio[:, :-total])
    assert np.all(rendered[:, :total] == 0.0)


def test_lv2file_with_no_server_loads_and_passes_dry_audio_at_the_provisional_latency(
    lv2_path: Path, tmp_path: Path
) -> None:
    from tests.plugin_bridge.servers import free_port

    audio = noise(1.0, seed=5)
    rendered, log = lv2_hosts.run_lv2file(
        lv2_path, f"127.0.0.1:{free_port()}", "spec", audio, RATE, tmp_path, 512, {"target": 1, "freewheel": 1}
    )
    total = lv2_hosts.reported_latency(log)
    assert "provisional" in log
    np.testing.assert_array_equal(rendered[:, total:], audio[:, :-total])


def test_the_provisional_latency_fits_every_bundled_model_so_a_server_started_later_is_played(
    lv2_path: Path, tmp_path: Path
) -> None:
    """With no server at activation the plugin fixes a provisional latency; a server that starts
    later is played only if its session latency fits in it. Every bundled model's does, at 44.1, 48
    and 96 kHz (a session at the host's rate, resampled by the server)."""
    import glob

    from stemserve.server.engine import Engine, EngineConfig
    from tests.plugin_bridge.servers import free_port

    engine = Engine(EngineConfig(device="cpu", realtime_capacity=float("inf")))
    weights = sorted(glob.glob(str(lv2_hosts.ROOT / "models" / "weights" / "*.safetensors")))
    assert len(weights) >= 4
    try:
        for path in weights:
            engine.load_model(Path(path).name.split(".")[0], path)
        for rate in (44100, 48000, 96000):
            audio = noise(0.3, seed=6)
            _, log = lv2_hosts.run_lv2file(
                lv2_path, f"127.0.0.1:{free_port()}", "", audio, rate, tmp_path, 512, {"freewheel": 1}
            )
            assert "provisional" in log
            provisional = lv2_hosts.reported_latency(log)
            for name in [m.name for m in engine.models()]:
                info = engine.open_session(name, rate, CHANNELS)
                engine.close(info.id)
                print(f"{rate} Hz: {name} {info.latency.total} <= provisional {provisional}")
                assert info.latency.total <= provisional, (rate, name)
            assert provisional <= 0.3 * rate + 512 + 0.02 * rate  # 250 ms + the margin, not more
    finally:
        engine.shutdown()


# -- real time: jalv on jackd -d dummy ------------------------------------------------------------

JACK_PERIOD = 256
# One impulse every quarter second; the window after each impulse that is searched for its echo
# must not reach the next one.
INTERVAL = RATE // 4
# Network slack for a real-time host on CI's 2 shared cores (as in test_jack.py).
MARGIN_MS = 150
STEADY = 0.25  # the right channel's constant input


class Jalv:
    """``jalv`` (console host) running the plugin as the JACK client ``name``; commands go to its stdin."""

    def __init__(self, lv2_path: Path, address: str, model: str, jack_server: str, name: str, log: Path) -> None:
        import subprocess

        env = lv2_hosts.plugin_env(
            lv2_path, address, model, JACK_DEFAULT_SERVER=jack_server, STEMSERVE_LV2_MARGIN_MS=str(MARGIN_MS)
        )
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                ["stdbuf", "-oL", "jalv", "-x", "-n", name, "-c", "target=1", lv2_hosts.STEREO],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def wait_for(self, what: str, count: int = 1, timeout: float = 60) -> None:
        import time

        deadline = time.monotonic() + timeout
        while self.text().count(what) < count:
            assert self.proc.poll() is None, f"jalv exited:\n{self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {what!r} ({count}) from jalv:\n{self.text()[-3000:]}"
            time.sleep(0.05)


def test_jalv_impulse_at_reported_latency_target_change_and_server_restart(lv2_path: Path, tmp_path: Path) -> None:
    """On a real-time host: every impulse comes out exactly at the reported latency; ``target`` set
    from the host switches the output at the block the host sets it in (the plugin mixes the stems
    itself), not a latency later; with the server killed, audio keeps flowing (dry, aligned); when
    it returns the plugin reconnects and stems resume, aligned; bypass (``enabled`` 0) ramps to the
    dry input the same way.

    The model is ``ident`` (every stem is the input), so the output tells what it is: target 1
    (one stem) gives an impulse of 1.0, target 0 (all stems: two) gives 2.0, dry gives 1.0. The
    left channel carries the impulses, the right one a constant STEADY, which times the switch to
    the frame: STEADY, a linear ramp over RAMP_FRAMES from the first frame of a JACK cycle, 2 STEADY.
    """
    import os
    import signal
    import time

    import jack

    from tests.plugin_bridge.impulses import ImpulseRig
    from tests.plugin_bridge.servers import free_port, start_process

    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    port = free_port()
    address = f"127.0.0.1:{port}"
    jackd, jack_server = lv2_hosts.start_jackd(tmp_path, RATE, JACK_PERIOD)
    server = host = None
    player = recorder = None
    marks: dict[str, int] = {}
    try:
        server = start_process(port, tmp_path / "server.log")
        host = Jalv(lv2_path, address, "ident", jack_server, "stemlv2", tmp_path / "jalv.log")
        host.wait_for("LATENCY")
        total = lv2_hosts.reported_latency(host.text())

        player = jack.Client("impulse-player", no_start_server=True, servername=jack_server)
        recorder = jack.Client("impulse-recorder", no_start_server=True, servername=jack_server)
        rig = ImpulseRig(player, recorder, INTERVAL, 10_000, steady=STEADY)
        player.activate()
        recorder.activate()
        player.connect(rig.play_port, "stemlv2:in_l")
        player.connect(rig.steady_port, "stemlv2:in_r")
        recorder.connect("stemlv2:out_l", rig.rec_port)
        recorder.connect("stemlv2:out_r", rig.rec_steady_port)
        from stemserve.plugin_bridge.jack_front import CAPTURE_LATENCY, port_latency

        # The host reads the plugin's latency port and publishes it to JACK. Where: on the outputs'
        # capture range; jalv 1.6.6's latency callback puts it on the ports it read instead (the
        # inputs' capture range, here fed by a port of latency 0), the outputs' stays 0.
        # JACK runs the host's latency callback after the connections are made, in its own time: read
        # until it has (a few seconds at most), not at once.
        def published_now() -> dict[str, tuple[int, int]]:
            return {
                port: port_latency(recorder.get_port_by_name(f"stemlv2:{port}"), CAPTURE_LATENCY)
                for port in ("in_l", "out_l")
            }

        read_by = time.monotonic() + 5
        while (total, total) not in (published := published_now()).values() and time.monotonic() < read_by:
            time.sleep(0.05)

        def mark(name: str) -> None:
            marks[name] = recorder.frame_time  # JACK frame time: the clock the impulses are stamped with

        time.sleep(3.0)
        mark("all stems")
        host.command("set target 0")
        mark("command sent")
        time.sleep(3.0)
        mark("killed")
        opens = host.text().count("open: model ident")
        lv2_hosts.stop(server, signal.SIGKILL)
        time.sleep(2.0)
        server = start_process(port, tmp_path / "server2.log")
        host.wait_for("open: model ident", count=opens + 1, timeout=30)
        mark("back")
        time.sleep(3.0)
        mark("end")
        host.command("set enabled 0")  # bypass: the steady channel ramps back to the dry input
        time.sleep(1.5)
        mark("bypassed")
        player.deactivate()
        recorder.deactivate()
        lv2_hosts.stop(host.proc, signal.SIGTERM)
        host.wait_for("COUNTERS", timeout=20)
    finally:
        for client in (player, recorder):
            if client is not None:
                client.close()
        if host is not None:
            lv2_hosts.stop(host.proc, signal.SIGKILL)
        lv2_hosts.stop(server)
        lv2_hosts.stop(jackd)

    log = host.text()
    counters = dict(item.split("=") for item in log.split("COUNTERS ")[1].split("\n")[0].split())
    jack_log = (tmp_path / "jackd.log").read_text(errors="replace")
    xruns = jack_log.count("XRun") + jack_log.count("was not finished")
    print(f"jalv: latency {total}, published to JACK {published}, counters {counters}, JACK xrun lines {xruns}")
    print(f"load {load:.2f} per core")
    assert reported_once(log, total)
    assert (total, total) in published.values(), published
    # The output ring is sized for the fixed latency (1.2 MB here), not for the largest one the
    # plugin accepts (2.7 s: 19 MB per instance): power of two >= latency + two chunks (core.hpp kChunk).
    ring = int(log.split("output ring: ")[1].split()[0])
    assert ring == 1 << (total + 2 * PLUGIN_CHUNK - 1).bit_length(), (ring, total)

    # The impulses whose output had time to be recorded: the player plays until it is deactivated,
    # so the last ones (played less than the latency before the recorder stopped) never came out.
    impulses = [t for t in rig.impulses if t + total < rig.recorded_until]
    assert len(rig.impulses) - len(impulses) <= total // INTERVAL + 2
    peaks = rig.peaks(INTERVAL - 1, impulses)
    delays = [delay for delay, _ in peaks]
    # Every impulse comes out, at exactly the reported latency, whatever it is made of (stems or dry).
    if xruns == 0:
        assert delays == [total] * len(impulses), delays
    else:
        assert delays.count(total) >= len(delays) * 3 // 4, (delays, total, xruns)

    def phase(lo: int, hi: int, output: bool = False) -> list[float]:
        """Peak values of the impulses played in [lo, hi) of JACK frame time (``output``: whose echo
        came out in it), at the reported latency."""
        at = total if output else 0
        return [round(v, 4) for t, (d, v) in zip(impulses, peaks, strict=True) if lo <= t + at < hi and d == total]

    # The target switches the output when set (output time); a dead server, the input it could not take.
    phases = {
        "target 1 (one stem)": (phase(0, marks["all stems"], output=True), 1.0),
        # Played half a second before the kill at the latest: answered before the server died.
        "target 0 (both stems)": (phase(marks["command sent"] - total, marks["killed"] - RATE // 2), 2.0),
        "server killed (dry)": (phase(marks["killed"], marks["back"]), 1.0),
        # Played before "end" less the latency: came out before the bypass that follows "end".
        "reconnected (stems, target kept)": (phase(marks["back"], marks["end"] - total), 2.0),
    }
    print({name: vals for name, (vals, _) in phases.items()})
    for name, (vals, expected) in phases.items():
        # After at most two transition impulses (the switch and its ramp, the kill, the reconnect), one value.
        assert len(vals) >= 6, (name, vals)
        # The dry phase ends when the plugin reconnected, a moment before the test saw it: impulses
        # played in that moment already come back as stems.
        settled = vals[2:-1] if name == "server killed (dry)" else vals[2:]
        assert all(abs(v - expected) < 1e-4 for v in settled), (name, vals)
    assert int(counters["sessions_opened"]) >= 2
    assert int(counters["gap_frames"]) > 0  # the frames the dead server could not deliver, counted

    # The switches, to the frame, on the right channel: target 0, then bypass.
    cycle_starts = np.array([start for start, _ in rig.recorded])
    times, steady = rig.steady_output()
    for name, lo, hi, before, after in (
        ("target 0", "all stems", "killed", STEADY, 2.0 * STEADY),
        ("bypass", "end", "bypassed", 2.0 * STEADY, STEADY),
    ):
        inside = (times >= marks[lo]) & (times < marks[hi])
        t, v = times[inside], steady[inside]
        off = np.abs(v - before) > 1e-4
        assert off.any(), f"{name} never reached the right channel"
        # The switch: the ramp (RAMP_FRAMES = JACK_PERIOD, so it fills the switch's cycle), exact, from
        # the first frame of a JACK cycle: the block the host set the control in.
        ramp = before + (after - before) * np.arange(1, RAMP_FRAMES + 1) / RAMP_FRAMES
        candidates = np.flatnonzero(off & np.isin(t, cycle_starts))  # cycles that start off the old value
        k = next((k for k in candidates if np.allclose(v[k : k + RAMP_FRAMES], ramp, rtol=0, atol=1e-5)), None)
        assert k is not None, f"{name}: no cycle starts with the {RAMP_FRAMES}-frame ramp"
        switch = int(t[k])
        print(f"{name} sent at JACK frame {marks[lo]}, output switched at {switch} (+{switch - marks[lo]} frames)")
        # Within the host's own hand-over of the control (jalv's console thread, a cycle or a few), far
        # before the latency a change mixed by the server would take.
        assert 0 <= switch - marks[lo] < total // 2
        # Before the ramp the old value, after it the new one. An xrun can leave a cycle of the
        # recording stale (the recorder ran before jalv wrote it): with xruns, nearly every frame after
        # the ramp is asked, and the cycle or two before it (which the impulses cover) is not.
        if xruns == 0:
            assert not off[:k].any(), (name, np.flatnonzero(off[:k])[:5])
        settled = np.abs(v[k + RAMP_FRAMES :] - after) < 1e-5
        assert settled.mean() >= (1.0 if xruns == 0 else 0.95), (name, settled.mean(), xruns)


def reported_once(log: str, total: int) -> bool:
    return lv2_hosts.reported_latency(log) == total


def test_stemserve_plugin_install_puts_a_bundle_hosts_find(lv2_path: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.plugin_bridge.servers import ROOT

    prefix = tmp_path / "lv2"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stemserve.server.cli",
            "plugin",
            "install",
            "--prefix",
            str(prefix),
            "--build-dir",
            str(lv2_hosts.BUILD),  # the module's build: installing needs no rebuild
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    bundle = prefix / "stemserve.lv2"
    assert sorted(p.name for p in bundle.iterdir()) == ["manifest.ttl", "stemserve.so", "stemserve.ttl"]
    listed = subprocess.run(
        ["lv2file", "-l"], env={"LV2_PATH": str(prefix), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True
    )
    assert lv2_hosts.STEREO in listed.stdout and lv2_hosts.MONO in listed.stdout, listed.stdout + listed.stderr


def test_instances_created_activated_and_freed_in_cycles_free_nothing_twice(
    lv2_path: Path, server_address: str, tmp_path: Path
) -> None:
    """Lifetimes (issue 17): three instances at once, each created and freed 6 times, with state
    save/restore while its network threads run, freewheel toggled, a second activate; the host is
    built with AddressSanitizer, which checks every free in the process (the plugin's too) and
    aborts on a double or invalid one."""
    import subprocess

    from tests.plugin_bridge.servers import ROOT

    host = tmp_path / "host_cycles"
    source = ROOT / "plugin_bridge" / "lv2" / "tests" / "host_cycles.cpp"
    lv2_flags = subprocess.run(["pkg-config", "--cflags", "lv2"], capture_output=True, text=True).stdout.split()
    compile_cmd = ["g++", "-std=c++17", "-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer", *lv2_flags]
    built = subprocess.run(
        [*compile_cmd, str(source), "-o", str(host), "-ldl", "-lpthread"], capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stderr[-3000:]
    env = lv2_hosts.plugin_env(
        lv2_path, server_address, "causal", STEMSERVE_LV2_CONNECT_WAIT_S="10", ASAN_OPTIONS="detect_leaks=0"
    )
    done = subprocess.run(
        [str(host), str(lv2_path / "stemserve.lv2" / "stemserve.so"), "6", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0 and "CYCLES DONE 6 x 3" in log, log[-4000:]
    assert "AddressSanitizer" not in log, log[-4000:]
    assert log.count("COUNTERS ") == 18  # every instance was freed (its destructor logs once)
    assert log.count(" open: model ") >= 9  # and most of them streamed (a loaded machine may be slow)


# -- a real DAW: Ardour 7 headless -------------------------------------------------------------

# The song starts this far into the session, as in a real one (a lead-in before the first sound).
# Ardour 7.3 plays a track silent for the first 256 frames of an export range plus the latency it
# pre-rolls (measured: test_ardour_export_of_a_range_that_starts_on_the_sound_...), so the lead-in
# must be longer than latency + 256 frames: 0.5 s is, for every latency these models give.
LEAD_IN = RATE // 2
# Ardour's own artifacts at the start of every export (256 silent frames, then its ~3000-frame
# transport fade-in) shape the model's response to the silent lead-in: compared from here on.
ARDOUR_SETTLED = RATE // 4


def ardour_env(work: Path, session: Path, **extra: str) -> dict[str, str]:
    """Ardour's config and caches stay in the test's folder."""
    env = dict(
        extra,
        ARDOUR_TEST_SESSION=str(session),
        ARDOUR_TEST_SECONDS="2",
        HOME=str(work),
        XDG_CONFIG_HOME=str(work / "config"),
    )
    return env


@pytest.fixture(scope="module")
def ardour_take(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session with a recorded stereo take on one track, made once; each test works on a copy."""
    import os

    work = tmp_path_factory.mktemp("ardour-take")
    session = work / "session"
    lv2_hosts.ardour_lua(
        lv2_hosts.ARDOUR_CREATE, work, dict(os.environ, **ardour_env(work, session)), "create", "REGIONS 1"
    )
    return session


class ArdourExport:
    """One export: ``timeline`` (channels, frames) is what the track plays (zeros, then the region
    at ``region_at``), ``exported`` what ardour7-export wrote, ``latency`` what the plugin reported."""

    def __init__(self, timeline: np.ndarray, exported: np.ndarray, region_at: int, latency: int) -> None:
        self.timeline, self.exported, self.region_at, self.latency = timeline, exported, region_at, latency


def ardour_export(
    lv2_path: Path,
    take: Path,
    server_address: str,
    model: str,
    target: int,
    tmp_path: Path,
    region_at: int = 0,
    automation: tuple[tuple[int, int], ...] = (),
) -> ArdourExport:
    """The take's files replaced by test audio, the region placed at ``region_at`` (the session
    range then starts at 0), the plugin inserted with ``target`` (and its automation points, played
    back), the session range exported by ``ardour7-export`` (freewheeling, delay compensation on)."""
    import shutil

    import soundfile as sf

    session = tmp_path / "session"
    shutil.copytree(take, session)
    env = lv2_hosts.plugin_env(
        lv2_path,
        server_address,
        model,
        # Each Ardour process activates its own instance: let it find the server on a loaded machine.
        STEMSERVE_LV2_CONNECT_WAIT_S="10",
        ARDOUR_TEST_TARGET=str(target),
        ARDOUR_TEST_REGION_AT=str(region_at),
        ARDOUR_TEST_AUTOMATION=" ".join(f"{frame}:{value}" for frame, value in automation),
        **ardour_env(tmp_path, session),
    )
    left, right = lv2_hosts.ardour_take_files(session)
    frames = sf.info(left).frames
    audio = noise(frames / RATE, seed=11)[:, :frames]
    # Silent ends: Ardour's default region fades (64 samples) then change nothing.
    audio[:, : RATE // 100] = 0.0
    audio[:, -RATE // 100 :] = 0.0
    for path, channel in ((left, audio[0]), (right, audio[1])):
        sf.write(path, channel, RATE, subtype="FLOAT")
    lv2_hosts.ardour_lua(lv2_hosts.ARDOUR_INSERT, tmp_path, env, "insert", f"REGION {region_at} {frames}")
    exported = tmp_path / "export.wav"
    log = subprocess_run(
        ["ardour7-export", "-b", "float", "-o", str(exported), str(session), "t"], env, retries_on_abort=1
    )
    out, rate = sf.read(exported, dtype="float32", always_2d=True)
    assert rate == RATE
    timeline = np.zeros((audio.shape[0], region_at + frames), dtype=np.float32)
    timeline[:, region_at:] = audio
    return ArdourExport(timeline, out.T.copy(), region_at, lv2_hosts.reported_latency(log))


def subprocess_run(command: list[str], env: dict[str, str], retries_on_abort: int = 0) -> str:
    """Run a host tool; it must exit 0. ``retries_on_abort``: ardour7-export (7.3) sometimes dies
    of a glibc heap abort ("double free or corruption") after writing the file: Ardour's own bug,
    in its ``PortExportChannel`` destructor, and it happens the same with no plugin in the session
    (issue 17, see plugin_bridge/lv2/README.md). The export is run again, and the crash is
    printed, never hidden in a pass without a trace."""
    import subprocess

    for attempt in range(retries_on_abort + 1):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        out = done.stdout + done.stderr
        if done.returncode >= 0 or attempt == retries_on_abort:
            break
        print(f"{command[0]} died of signal {-done.returncode} (attempt {attempt + 1}):\n{out[-1500:]}")
    assert done.returncode == 0, f"{command[0]} failed ({done.returncode}):\n{out[-3000:]}"
    return out


def test_ardour_export_with_the_plugin_is_the_stem_with_no_shift_left_over(
    lv2_path: Path, ardour_take: Path, server_address: str, tmp_path: Path
) -> None:
    """Ardour exports the session (a lead-in, then the song) through the plugin (target 0 of
    ``ident``: both stems, so twice the input) exactly in place, every frame of it, head included:
    its delay compensation takes the reported latency out and no shift is left."""
    export = ardour_export(lv2_path, ardour_take, server_address, "ident", 0, tmp_path, region_at=LEAD_IN)
    expected = 2.0 * export.timeline
    assert export.exported.shape == expected.shape
    assert export.latency + 256 < LEAD_IN
    np.testing.assert_allclose(export.exported, expected, atol=TOLERANCE)
    song = slice(LEAD_IN, expected.shape[1] - 1)
    assert np.abs(export.exported[:, song]).max() > 0.5
    # No other alignment fits: a shift by one frame either way is far off.
    for shift in (-1, 1):
        moved = slice(song.start + shift, song.stop + shift)
        assert np.abs(export.exported[:, song] - expected[:, moved]).max() > 0.1


def test_ardour_export_of_a_range_that_starts_on_the_sound_loses_its_first_latency_plus_256_frames(
    lv2_path: Path, ardour_take: Path, server_address: str, tmp_path: Path
) -> None:
    """What Ardour 7.3 does (not the plugin): when an export starts, the track plays silence for
    256 frames plus the latency its delay compensation pre-rolls, so sound in the first
    ``latency + 256`` frames of the export range never reaches the plugin (its input stays zero
    there; it counts no underrun) and the export is silent there, exact after. The same happens
    with no plugin at all: the first 256 frames of a plain track's export are silent, then faded
    in; a processor that declares latency L without having it leaves 256 silent frames after the L
    pre-rolled ones. Hence the lead-in of the test above."""
    export = ardour_export(lv2_path, ardour_take, server_address, "ident", 1, tmp_path)
    head = export.latency + 256
    assert export.exported.shape == export.timeline.shape
    assert np.abs(export.timeline[:, RATE // 100 : head]).max() > 0.5  # there is sound to lose
    assert np.all(export.exported[:, :head] == 0.0)
    np.testing.assert_allclose(export.exported[:, head:], export.timeline[:, head:], atol=TOLERANCE)


ARDOUR_CYCLE = 1024  # Ardour's process cycle in an export (the Dummy backend's period)
# Ardour 7.3 keeps plugin automation in musical time: a point lands on the nearest tick (1920 per
# beat, 12.5 frames at the default 120 bpm and 48 kHz), up to 6.25 frames from the frame asked for.
TICK_FRAMES = 7


def target_switch_gain(frames: int, switch: int) -> np.ndarray:
    """Gain of ``ident``'s output over the input when ``target`` goes 1 -> 0 at ``switch``: one stem,
    then the plugin's linear ramp over RAMP_FRAMES (the new value reached at the ramp's last frame),
    then both stems."""
    gain = np.ones(frames, dtype=np.float32)
    gain[switch : switch + RAMP_FRAMES] += np.arange(1, RAMP_FRAMES + 1, dtype=np.float32) / RAMP_FRAMES
    gain[switch + RAMP_FRAMES :] = 2.0
    return gain


def test_ardour_automation_of_target_switches_the_export_at_the_first_cycle_from_the_automated_position(
    lv2_path: Path, ardour_take: Path, server_address: str, tmp_path: Path
) -> None:
    """``target`` automated (Play) from 1 (one stem of ``ident``: the input) to 0 (both stems: twice
    the input) mid-song, at two positions on no block boundary, one export each. The plugin mixes
    the stems itself, so a change acts on the block it is set in, and Ardour's delay compensation
    leaves no latency in it (a change mixed by the server landed one latency, 9663 frames, late).
    Where exactly is Ardour 7.3's choice, and it varies with the recorded take (its length varies
    by a cycle): in some sessions it splits the process cycle at the automation point (measured:
    points at 71227 and 74799 switched at 71225 and 74800, the point give or take its tick
    rounding), in others it evaluates the automation at cycle starts only (points at 71739 and
    75311 switched at 71936 and 76032, the next cycle starts); either way within one cycle from
    the point. Asserted: the whole export
    equals the model, the plugin's ramp included, for one switch frame in that cycle, and for no
    other."""
    import soundfile as sf

    take_frames = sf.info(lv2_hosts.ardour_take_files(ardour_take)[0]).frames
    for n, offset in enumerate((123, 123 + 3 * ARDOUR_CYCLE + 500)):
        automated = LEAD_IN + take_frames // 2 + offset
        (tmp_path / f"export{n}").mkdir()
        export = ardour_export(
            lv2_path,
            ardour_take,
            server_address,
            "ident",
            1,
            tmp_path / f"export{n}",
            region_at=LEAD_IN,
            automation=((0, 1), (automated, 0)),
        )
        x, got = export.timeline, export.exported
        assert got.shape == x.shape
        window = range(automated - 2 * ARDOUR_CYCLE, automated + export.latency + 2 * ARDOUR_CYCLE)
        errors = {s: float(np.abs(got - target_switch_gain(x.shape[1], s) * x).max()) for s in window}
        switch = min(errors, key=errors.__getitem__)
        print(f"automated at {automated}, switched at {switch} (+{switch - automated}), latency {export.latency}")
        assert errors[switch] < TOLERANCE
        assert -TICK_FRAMES <= switch - automated < ARDOUR_CYCLE + TICK_FRAMES
        assert sorted(errors.values())[1] > 1e-3  # exactly one switch frame fits
