"""JACK front: the bridge as a JACK client with named input and output ports.

A DAW routes a track through it (e.g. an Ardour port insert, or any JACK
patchbay): ``<name>:in_1 .. in_C`` take the track's audio, ``<name>:out_1 ..
out_C`` give the chosen stem back, ``latency`` samples later. The sample rate
and buffer size follow the JACK server.

The process callback copies the port buffers into the bridge's preallocated
block, calls :meth:`Bridge.callback` (ring copies only) and copies the result
out. The Python binding (JACK-Client) makes a small view object per port per
cycle; the bridge's own path allocates nothing.

The fixed latency is published to JACK's latency API (ports' capture /
playback latency ranges), so latency-aware hosts compensate for it, and the
JACK server's xrun notifications are counted in ``Counters.xruns``.

**Transport.** Unless told not to (``follow_transport=False``), the front
follows JACK transport, which DAWs on JACK (Ardour, Qtractor...) drive: a
thread polls it every ``TRANSPORT_POLL_S`` and a stop, a locate while
stopped, or a jump while rolling (the frame moved by more than a period
beyond what JACK's clock says a rolling transport advanced) resets the
bridge's session (:meth:`Bridge.reset`: the server's model state is cleared,
the latency kept), counted in ``Counters.transport_resets``. Starting to roll
is not a reset. The process callback is left alone: querying the transport
there, from Python, measurably caused xruns on the test machine.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from stemserve.plugin_bridge.bridge import Bridge

log = logging.getLogger(__name__)

# How often the transport is polled: a DAW's stop or seek resets the session within this.
TRANSPORT_POLL_S = 0.05
CAPTURE_LATENCY = 0  # jack_latency_callback_mode_t: JackCaptureLatency
PLAYBACK_LATENCY = 1  # JackPlaybackLatency


class _LatencyRange(ctypes.Structure):
    _fields_ = [("min", ctypes.c_uint32), ("max", ctypes.c_uint32)]


_LATENCY_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p)


def _libjack() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("jack") or "libjack.so.0"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.jack_port_get_latency_range.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_LatencyRange)]
    lib.jack_port_set_latency_range.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_LatencyRange)]
    lib.jack_set_latency_callback.argtypes = [ctypes.c_void_p, _LATENCY_CALLBACK, ctypes.c_void_p]
    lib.jack_set_latency_callback.restype = ctypes.c_int
    lib.jack_recompute_total_latencies.argtypes = [ctypes.c_void_p]
    lib.jack_recompute_total_latencies.restype = ctypes.c_int
    return lib


def _address(cffi_pointer: Any) -> int:
    import jack

    return int(jack._ffi.cast("uintptr_t", cffi_pointer))


def port_latency(port: Any, mode: int) -> tuple[int, int]:
    """A JACK port's ``(min, max)`` latency range for ``mode`` (CAPTURE_LATENCY / PLAYBACK_LATENCY)."""
    lib = _libjack()
    if lib is None:
        raise OSError("libjack not found")
    value = _LatencyRange()
    lib.jack_port_get_latency_range(_address(port._ptr), mode, ctypes.byref(value))
    return int(value.min), int(value.max)


class JackFront:
    """Runs a :class:`Bridge` as JACK client ``name``.

    Create it first (it opens the client, so the server's rate and buffer size
    are known), build the bridge with :meth:`settings_for`, then :meth:`start`.
    """

    def __init__(
        self,
        name: str = "stemserve",
        channels: int = 2,
        server_name: str | None = None,
        follow_transport: bool = True,
    ) -> None:
        import jack

        self._jack = jack
        self.client = jack.Client(name, no_start_server=True, servername=server_name)
        self.channels = channels
        self.sample_rate = int(self.client.samplerate)
        self.blocksize = int(self.client.blocksize)
        self.inports = [self.client.inports.register(f"in_{c + 1}") for c in range(channels)]
        self.outports = [self.client.outports.register(f"out_{c + 1}") for c in range(channels)]
        self.bridge: Bridge | None = None
        self._in = np.zeros((channels, 1), np.float32)
        self._out = np.zeros((channels, 1), np.float32)
        self._lib = _libjack()
        self._latency_cb: Any = None  # keep the ctypes callback alive
        self.shutdown = threading.Event()
        self.xrun_delays_us: list[float] = []
        self.follow_transport = follow_transport
        self._stop_polling = threading.Event()
        self._poller: threading.Thread | None = None

    @property
    def name(self) -> str:
        return str(self.client.name)

    def attach(self, bridge: Bridge) -> None:
        """Wire the bridge's callback, xrun counting and latency reporting (before :meth:`start`)."""
        if bridge.settings.sample_rate != self.sample_rate or bridge.settings.channels != self.channels:
            raise ValueError(
                f"bridge is {bridge.settings.sample_rate} Hz x {bridge.settings.channels}, "
                f"JACK is {self.sample_rate} Hz x {self.channels}"
            )
        self.bridge = bridge
        max_block = bridge.settings.max_block
        self._in = np.zeros((self.channels, max_block), np.float32)
        self._out = np.zeros((self.channels, max_block), np.float32)
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(self._xrun)
        self.client.set_shutdown_callback(self._on_shutdown)
        self.client.set_blocksize_callback(self._blocksize)
        self.client.set_samplerate_callback(self._samplerate)
        if self._lib is not None:
            self._latency_cb = _LATENCY_CALLBACK(self._latency)
            self._lib.jack_set_latency_callback(_address(self.client._ptr), self._latency_cb, None)
        else:
            log.warning("libjack not loadable through ctypes: the bridge's latency is not published to JACK")

    # -- JACK callbacks --------------------------------------------------------------------
    def _process(self, frames: int) -> None:
        bridge = self.bridge
        if bridge is None:
            return
        inp = self._in[:, :frames]
        out = self._out[:, :frames]
        for c, port in enumerate(self.inports):
            inp[c] = port.get_array()
        bridge.callback(inp, out)
        for c, port in enumerate(self.outports):
            port.get_array()[:] = out[c]

    def _follow_transport(self) -> None:
        """Poll JACK transport (its own thread, never the process callback) and reset the session on a
        stop, a locate while stopped, or a jump while rolling."""
        jack = self._jack
        last: tuple[Any, int, int] | None = None
        while not self._stop_polling.wait(TRANSPORT_POLL_S):
            bridge = self.bridge
            if bridge is None:
                continue
            state, position = self.client.transport_query_struct()
            frame, usecs = int(position.frame), int(position.usecs)
            if last is not None:
                last_state, last_frame, last_usecs = last
                # A rolling transport advances with JACK's clock; anything else holds its frame
                # (STARTING too: a locate while rolling passes through it at the new frame).
                elapsed = (usecs - last_usecs) * self.sample_rate / 1e6
                moved = frame - last_frame
                slack = max(self.blocksize, 1)
                if last_state == jack.ROLLING:
                    jumped = abs(moved - elapsed) > slack
                elif state == jack.ROLLING:  # started since the last poll: it may have rolled part of the time
                    jumped = not -slack <= moved <= elapsed + slack
                else:
                    jumped = moved != 0
                stopped = state == jack.STOPPED and last_state != jack.STOPPED
                if stopped or jumped:
                    bridge.counters.transport_resets += 1
                    bridge.reset()
            last = (state, frame, usecs)

    def _xrun(self, delayed_usecs: float) -> None:
        if self.bridge is not None:
            self.bridge.counters.xruns += 1
        self.xrun_delays_us.append(float(delayed_usecs))

    def _on_shutdown(self, status: Any, reason: str) -> None:
        log.error("JACK shut the client down: %s", reason)
        self.shutdown.set()

    def _blocksize(self, blocksize: int) -> None:
        self.blocksize = int(blocksize)
        if self.bridge is not None and blocksize > self.bridge.settings.max_block:
            log.warning("JACK buffer size %d > bridge max_block: blocks are split", blocksize)

    def _samplerate(self, samplerate: int) -> None:
        if samplerate != self.sample_rate:
            log.error(
                "JACK sample rate changed to %d Hz; the session is at %d Hz: restart the bridge",
                samplerate,
                self.sample_rate,
            )

    def _latency(self, mode: int, arg: Any) -> None:
        """Publish ``upstream/downstream latency + the bridge's total`` on our ports."""
        if self._lib is None or self.bridge is None:
            return
        total = self.bridge.latency_samples or 0
        lib = self._lib
        value = _LatencyRange()
        if mode == CAPTURE_LATENCY:
            lo, hi = 1 << 32, 0
            for port in self.inports:
                lib.jack_port_get_latency_range(_address(port._ptr), CAPTURE_LATENCY, ctypes.byref(value))
                lo, hi = min(lo, value.min), max(hi, value.max)
            lo = 0 if lo == 1 << 32 else lo
            value.min, value.max = lo + total, hi + total
            for port in self.outports:
                lib.jack_port_set_latency_range(_address(port._ptr), CAPTURE_LATENCY, ctypes.byref(value))
        else:
            lo, hi = 1 << 32, 0
            for port in self.outports:
                lib.jack_port_get_latency_range(_address(port._ptr), PLAYBACK_LATENCY, ctypes.byref(value))
                lo, hi = min(lo, value.min), max(hi, value.max)
            lo = 0 if lo == 1 << 32 else lo
            value.min, value.max = lo + total, hi + total
            for port in self.inports:
                lib.jack_port_set_latency_range(_address(port._ptr), PLAYBACK_LATENCY, ctypes.byref(value))

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, connect_inputs: Sequence[str] = (), connect_outputs: Sequence[str] = ()) -> None:
        """Activate and connect ``connect_inputs[i] -> in_(i+1)``, ``out_(i+1) -> connect_outputs[i]``."""
        if self.bridge is None:
            raise RuntimeError("attach a bridge first")
        self.client.activate()
        self.publish_latency()
        if self.follow_transport:
            self._poller = threading.Thread(target=self._follow_transport, name="stemserve-jack-transport", daemon=True)
            self._poller.start()
        for source, port in zip(connect_inputs, self.inports, strict=False):
            self.client.connect(source, port)
        for port, dest in zip(self.outports, connect_outputs, strict=False):
            self.client.connect(port, dest)

    def publish_latency(self) -> None:
        """Ask JACK to recompute latencies (call when the bridge's latency becomes known)."""
        if self._lib is not None:
            self._lib.jack_recompute_total_latencies(_address(self.client._ptr))

    def stop(self) -> None:
        self._stop_polling.set()
        if self._poller is not None:
            self._poller.join(1.0)
        try:
            self.client.deactivate()
        finally:
            self.client.close()
