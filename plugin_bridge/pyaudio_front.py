"""PortAudio front (PyAudio): full-duplex real-time I/O on any PortAudio device or host API.

On Linux PortAudio can also talk to JACK (host API "JACK Audio Connection
Kit"), but :mod:`plugin_bridge.jack_front` is the better JACK client (named
ports, latency published to JACK, transport followed, no added buffer); this
front is for ALSA / CoreAudio / WASAPI devices and for machines without the
``jack`` Python package. Through PortAudio's JACK host API an impulse comes
out after the bridge's latency plus one buffer (``frames_per_buffer``), which
PortAudio adds between the JACK ports and the callback
(``tests/plugin_bridge/test_pyaudio.py`` measures it); device latency of other
host APIs is the host's to compensate, as for any audio interface.

PyAudio hands the callback ``bytes`` and wants ``bytes`` back, so this front
makes one input view and one output ``bytes`` object per callback (the
binding's price); the bridge's own work is ring copies into preallocated
arrays. PortAudio's input-overflow / output-underflow flags count as xruns.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from stemserve.plugin_bridge.bridge import Bridge

log = logging.getLogger(__name__)

PA_INPUT_OVERFLOW = 0x2
PA_OUTPUT_UNDERFLOW = 0x4
PA_INPUT_UNDERFLOW = 0x1
PA_OUTPUT_OVERFLOW = 0x8


def list_devices() -> list[dict[str, Any]]:
    """Every PortAudio device with its host API name (for ``--list-devices``)."""
    import pyaudio

    pa = pyaudio.PyAudio()
    try:
        out = []
        for i in range(pa.get_device_count()):
            info = dict(pa.get_device_info_by_index(i))
            info["host_api_name"] = pa.get_host_api_info_by_index(int(info["hostApi"]))["name"]
            out.append(info)
        return out
    finally:
        pa.terminate()


def find_device(name: str | None, host_api: str | None) -> int | None:
    """Index of the first device whose name (and host API name) contain the given text; None: default."""
    if name is None and host_api is None:
        return None
    for info in list_devices():
        if name is not None and name.lower() not in str(info["name"]).lower():
            continue
        if host_api is not None and host_api.lower() not in str(info["host_api_name"]).lower():
            continue
        if int(info["maxInputChannels"]) > 0 and int(info["maxOutputChannels"]) > 0:
            return int(info["index"])
    raise ValueError(f"no full-duplex PortAudio device matches name={name!r} host_api={host_api!r}")


class PyAudioFront:
    """Runs a :class:`Bridge` on a PortAudio full-duplex stream."""

    def __init__(self, bridge: Bridge, device: int | None = None, frames_per_buffer: int = 256) -> None:
        import pyaudio

        self._pyaudio = pyaudio
        self.bridge = bridge
        self.device = device
        self.frames_per_buffer = frames_per_buffer
        channels = bridge.settings.channels
        self._out = np.zeros((bridge.settings.max_block, channels), np.float32)  # interleaved frames
        self._pa: Any = None
        self._stream: Any = None

    def _callback(self, in_data: bytes | None, frame_count: int, time_info: Any, status: int) -> tuple[bytes, int]:
        bridge = self.bridge
        if status & (PA_INPUT_OVERFLOW | PA_OUTPUT_UNDERFLOW | PA_INPUT_UNDERFLOW | PA_OUTPUT_OVERFLOW):
            bridge.counters.xruns += 1
        channels = bridge.settings.channels
        out = self._out[:frame_count]
        if in_data is None:
            inp = np.zeros((frame_count, channels), np.float32)
        else:
            inp = np.frombuffer(in_data, dtype=np.float32).reshape(frame_count, channels)
        bridge.callback(inp.T, out.T)  # (channels, n) views of the interleaved buffers
        return out.tobytes(), self._pyaudio.paContinue

    def start(self) -> None:
        pa = self._pyaudio.PyAudio()
        self._pa = pa
        settings = self.bridge.settings
        self._stream = pa.open(
            format=self._pyaudio.paFloat32,
            channels=settings.channels,
            rate=settings.sample_rate,
            input=True,
            output=True,
            input_device_index=self.device,
            output_device_index=self.device,
            frames_per_buffer=self.frames_per_buffer,
            stream_callback=self._callback,
        )
        self._stream.start_stream()
        log.info(
            "PortAudio stream: %d Hz x %d, %d frames per buffer, reported output latency %.1f ms",
            settings.sample_rate,
            settings.channels,
            self.frames_per_buffer,
            1000 * self._stream.get_output_latency(),
        )

    def active(self) -> bool:
        return self._stream is not None and bool(self._stream.is_active())

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.stop_stream()
            self._stream.close()
            self._stream = None
        if self._pa is not None:
            self._pa.terminate()
            self._pa = None
