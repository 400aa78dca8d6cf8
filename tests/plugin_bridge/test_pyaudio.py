"""The PortAudio front (PyAudio) in real time, on PortAudio's JACK host API and a real ``jackd -d dummy``.

A player client plays an impulse every half second into the PortAudio stream's input ports, a recorder
takes its output ports: every impulse comes out exactly the bridge's reported latency plus one buffer
later. That buffer is PortAudio's own: its JACK host API hands the callback's output to the JACK ports one
cycle later (the JACK front adds nothing; see test_jack.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import jack
import numpy as np
import pytest

from plugin_bridge.bridge import Bridge, BridgeSettings
from plugin_bridge.pyaudio_front import PyAudioFront, find_device
from tests.plugin_bridge.test_jack import jack_client, wait_for

pytestmark = [pytest.mark.jack, pytest.mark.slow]

RATE = 48000
PERIOD = 256
IMPULSES = 8


def test_pyaudio_front_on_jack_delays_every_impulse_by_the_reported_latency(
    tmp_path: Path, server_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_name = f"stemserve-pa-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("JACK_DEFAULT_SERVER", server_name)  # PortAudio's JACK host API connects to it
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    log = open(tmp_path / "jackd.log", "wb")  # noqa: SIM115 (closed in finally)
    jackd = subprocess.Popen(
        ["jackd", "-n", server_name, "-d", "dummy", "-r", str(RATE), "-p", str(PERIOD)],
        env=dict(os.environ, JACK_NO_AUDIO_RESERVATION="1"),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    front = player = recorder = None
    try:
        clients: list[jack.Client] = []
        wait_for(lambda: clients.append(c) or True if (c := jack_client("player", server_name)) else False, 20, "jackd")
        player = clients[0]
        device = find_device(None, "JACK")
        settings = BridgeSettings(
            server_address, "ident", RATE, 2, target="speech", max_block=4 * PERIOD, margin_samples=2 * PERIOD
        )
        bridge = Bridge(settings)
        assert bridge.start(wait_s=30) is not None
        reported = bridge.latency_samples
        assert reported is not None
        front = PyAudioFront(bridge, device, PERIOD)
        front.start()
        ours = [p.name for p in player.get_ports(is_audio=True)]
        stream_inputs = [p for p in player.get_ports(is_audio=True, is_input=True) if not p.name.startswith("system:")]
        stream_outputs = [
            p for p in player.get_ports(is_audio=True, is_output=True) if not p.name.startswith("system:")
        ]
        assert len(stream_inputs) == 2 and len(stream_outputs) == 2, ours

        recorder = jack.Client("recorder", no_start_server=True, servername=server_name)
        play_port = player.outports.register("out")
        rec_port = recorder.inports.register("in")
        impulses: list[int] = []
        recorded: list[tuple[int, np.ndarray]] = []
        start = {"at": None}

        @player.set_process_callback
        def play(frames: int) -> None:
            t0 = player.last_frame_time
            if start["at"] is None:
                start["at"] = t0 + RATE // 2
            buf = play_port.get_array()
            buf[:] = 0.0
            k = (start["at"] - t0) % (RATE // 2)
            if k < frames and t0 + k >= start["at"] and len(impulses) < IMPULSES:
                buf[k] = 1.0
                impulses.append(t0 + k)

        @recorder.set_process_callback
        def record(frames: int) -> None:
            recorded.append((recorder.last_frame_time, rec_port.get_array().copy()))

        player.activate()
        recorder.activate()
        for port in stream_inputs:
            player.connect(play_port, port)
        recorder.connect(stream_outputs[0], rec_port)
        wait_for(lambda: len(impulses) >= IMPULSES, 30, "impulses played")
        time.sleep(reported / RATE + 0.3)
        player.deactivate()
        recorder.deactivate()
        assert front.active()
        counters = bridge.counters
        front.stop()
        front = None
        bridge.stop()
    finally:
        if front is not None:
            front.stop()
        for client in (player, recorder):
            if client is not None:
                client.close()
        jackd.send_signal(signal.SIGTERM)
        jackd.wait(20)
        log.close()

    times = np.concatenate([t + np.arange(len(b)) for t, b in recorded])
    out = np.concatenate([b for _, b in recorded])
    delays = []
    for t in impulses:
        window = (times >= t) & (times < t + RATE // 4)
        peak = int(np.argmax(np.abs(out[window])))
        delays.append((int(times[window][peak] - t), round(float(out[window][peak]), 5)))
    print(f"PyAudio front: reported latency {reported}, impulse delays {delays}, counters {counters}")
    assert delays == [(reported + PERIOD, 1.0)] * IMPULSES
    assert counters.callback_errors == 0 and counters.callbacks > 0
