"""The bridge: one DAW track's audio through a stemserve session, with a fixed latency.

A :class:`Bridge` owns the preallocated rings, the fixed-latency timeline, the
parameters and the network thread (:class:`plugin_bridge.stream.StreamLink`).
Audio reaches it one of two ways:

* **Real time** (:meth:`Bridge.callback`): the audio front calls it from the
  audio thread with the host's input block and an output block to fill. It
  copies the input into the input ring, copies the due output frames out of the
  output ring (dry input or silence where a stem frame has not arrived, as set
  by ``underrun``), counts, and returns. No network, no locks, no logging, no
  allocation in steady state.
* **Offline** (:meth:`Bridge.process`): ``process(block) -> block`` renders as a
  host would call a plugin, but waits (up to ``offline_timeout_s``) for the
  block's stem frames, so a render is exact whatever the machine's speed.

Host output frame ``n`` is always the estimate for host input frame
``n - latency.total``. The total is the first session's server latency plus
``margin`` (the bridge's network slack) unless fixed up front with
``latency_samples``; it never changes while the bridge lives (reconnects and
model changes are placed to fit it, or refused).

For a model with heads, :attr:`Bridge.activity` holds the latest block's
stem activity and lead pitch (written by the network thread only; in
:meth:`Bridge.report` and, through :class:`plugin_bridge.osc.OscListener`,
sent as OSC ``/stemserve/activity``).

Example::

    bridge = Bridge(BridgeSettings("127.0.0.1:50051", "conditioned_unet", 48000, 2, target="vocals"))
    bridge.start()                      # connects; the latency is known after this
    print(bridge.latency.describe())
    out = bridge.process(block)         # block: (2, n) float32; out: (2, n)
    bridge.stop()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from stemserve.plugin_bridge.activity import ActivityBoard
from stemserve.plugin_bridge.parameters import Parameters
from stemserve.plugin_bridge.ring import InputRing, OutputRing
from stemserve.plugin_bridge.stream import LinkSettings, StreamLink
from stemserve.plugin_bridge.timeline import NEVER, Counters, LatencyReport, Timeline

log = logging.getLogger(__name__)

UnderrunPolicy = Literal["dry", "silence"]


class BridgeError(RuntimeError):
    """The bridge could not do what was asked (not connected in time, bad block shape)."""


@dataclass
class BridgeSettings:
    """Everything a bridge needs; the fronts and the CLI fill it in.

    Attributes:
        address: the server, ``host:port``.
        model: the model to open a session on.
        sample_rate / channels: the host's (the server resamples if the model differs).
        target / mix / gains: initial parameters (see :mod:`plugin_bridge.parameters`).
        block_frames: the host's usual block size; added to the margin (one block
            must be in flight while the next is recorded). 0 for offline use.
        margin_ms / margin_samples: network slack on top of the server's latency;
            ``margin_samples`` wins when set. The margin is ``block_frames`` plus this.
        latency_samples: fix the total latency up front instead (must be >= the server's L).
        underrun: what a missing stem frame becomes: the latency-aligned ``"dry"`` input or ``"silence"``.
        max_block: the largest host block handled in one piece (larger ones are split).
        max_latency: the largest total latency the preallocated rings can hold.
        offline_timeout_s: how long :meth:`Bridge.process` waits for a block's stems.
        stems: the stems the server computes (empty: all). A conditioned model computes
            only these, so one stem of four costs the server about a quarter.
    """

    address: str
    model: str
    sample_rate: int
    channels: int
    target: str | None = None
    mix: float = 1.0
    gains: Mapping[str, float] = field(default_factory=dict)
    token: str | None = None
    tls_root: bytes | None = None
    client_name: str = "stemserve-bridge"
    block_frames: int = 0
    margin_ms: float = 20.0
    margin_samples: int | None = None
    latency_samples: int | None = None
    underrun: UnderrunPolicy = "dry"
    max_block: int = 8192
    max_latency: int = 1 << 17
    offline_timeout_s: float = 30.0
    stall_timeout_s: float = 5.0
    backoff_max_s: float = 2.0
    stems: tuple[str, ...] = ()

    def margin(self) -> int:
        extra = self.margin_samples
        if extra is None:
            extra = round(self.margin_ms * self.sample_rate / 1000.0)
        if extra < 0 or self.block_frames < 0:
            raise ValueError(f"margin and block size must be >= 0, got {extra} and {self.block_frames}")
        return self.block_frames + extra


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class Bridge:
    """One track: rings, timeline, parameters, network thread. See the module docstring."""

    def __init__(self, settings: BridgeSettings) -> None:
        if settings.underrun not in ("dry", "silence"):
            raise ValueError(f"underrun must be 'dry' or 'silence', got {settings.underrun!r}")
        if settings.channels < 1 or settings.sample_rate < 1:
            raise ValueError(
                f"channels and sample_rate must be positive, got {settings.channels}, {settings.sample_rate}"
            )
        if settings.max_block < 1:
            raise ValueError(f"max_block must be >= 1, got {settings.max_block}")
        self.settings = settings
        channels, max_block = settings.channels, settings.max_block
        # Input history must reach back `total` frames behind a whole block (the dry signal);
        # output must hold everything from the frame due now to `total` frames ahead of the input.
        capacity = _pow2_at_least(settings.max_latency + 2 * max_block)
        self.in_ring = InputRing(channels, capacity)
        self.out_ring = OutputRing(channels, capacity, max_block)
        self.counters = Counters()
        self.timeline = Timeline(
            settings.sample_rate, settings.margin(), settings.max_latency, settings.latency_samples
        )
        self.params = Parameters(settings.model, settings.target, settings.mix, settings.gains)
        self.params.set_model_hook(self._change_model)
        self._data_ready = threading.Event()
        self._arrived = threading.Event()
        # Which stems play (models with heads); the network thread writes it, never the audio callback.
        self.activity = ActivityBoard()
        self.link = StreamLink(
            LinkSettings(
                address=settings.address,
                sample_rate=settings.sample_rate,
                channels=channels,
                token=settings.token,
                tls_root=settings.tls_root,
                client_name=settings.client_name,
                max_network_frames=max(4096, max_block),
                stall_timeout_s=settings.stall_timeout_s,
                backoff_max_s=settings.backoff_max_s,
                stems=tuple(settings.stems),
            ),
            settings.model,
            self.params,
            self.in_ring,
            self.out_ring,
            self.timeline,
            self.counters,
            self._data_ready,
            self._arrived,
            self.activity,
        )
        # Audio-thread scratch, allocated once.
        self._dry = np.zeros((channels, max_block), dtype=np.float32)
        self._valid = np.zeros(max_block, dtype=bool)
        self._missing = np.zeros(max_block, dtype=bool)
        self._silence_mask = np.zeros(max_block, dtype=bool)
        self._dry_policy = settings.underrun == "dry"
        # Audio thread: host frames handled so far; frames muted up to here after a reset.
        self.position = 0
        self._mute_until = 0
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, wait_s: float | None = 10.0) -> LatencyReport | None:
        """Start the network thread; wait up to ``wait_s`` for the first session (None: don't wait).

        Returns the latency report, or None if it is not known yet (the audio
        front may start anyway: frames before the first session are gaps).
        """
        if self._started:
            raise BridgeError("bridge already started")
        self._started = True
        self.link.start()
        if wait_s is not None:
            self.link.connected.wait(wait_s)
        return self.timeline.report

    def stop(self) -> None:
        self.link.stop()
        self._started = False

    def __enter__(self) -> Bridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def latency(self) -> LatencyReport | None:
        """The fixed latency by part (None until the first session opened, unless preset)."""
        return self.timeline.report

    @property
    def latency_samples(self) -> int | None:
        return self.timeline.total

    @property
    def connected(self) -> bool:
        return self.link.connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self.link.connected.wait(timeout)

    def stats(self) -> dict[str, int]:
        return self.counters.snapshot()

    def status(self) -> dict[str, str]:
        """``{"status": ..., "status_message": ...}``: connecting / streaming / refused / behind / lost, and why."""
        return {"status": self.link.status, "status_message": self.link.status_message}

    def activity_report(self) -> dict[str, Any]:
        """The latest block's heads (``activity`` by source, ``lead_voicing``, ``lead_f0_hz``,
        ``activity_frame``); empty until a model with heads sent some."""
        latest = self.activity.latest
        return latest.to_dict() if latest is not None else {}

    def report(self) -> dict[str, Any]:
        """Counters, status and the latest heads together (STATS, OSC ``/stats``)."""
        return {**self.stats(), **self.status(), **self.activity_report()}

    # -- control (any thread but the audio thread) ---------------------------------------
    def reset(self) -> None:
        """Transport stop / seek: the server's state is cleared, output realigned, latency kept.

        Output frames whose estimates belong to audio from before the reset (the
        next ``total`` frames) are muted.
        """
        self.timeline.reset_requested += 1
        self._data_ready.set()

    def _change_model(self, name: str) -> bool:
        """Accept a model change when the model's reported latency fits the bridge's fixed one."""
        total = self.timeline.total
        try:
            models = {m.name: m for m in self.link.list_models()}
        except Exception as err:  # grpc errors, timeouts: refuse, keep the current model
            log.warning("model change to %r ignored: cannot list the server's models (%s)", name, err)
            return False
        info = models.get(name)
        if info is None:
            log.warning("model change to %r ignored: the server has %s", name, sorted(models))
            return False
        # The model's latency at its own rate, scaled to the host's (the trial session checks exactly).
        rate = info.latency.sample_rate or info.sample_rate or self.settings.sample_rate
        needed = int(np.ceil(info.latency.total * self.settings.sample_rate / rate))
        if total is not None and needed > total:
            self.counters.model_refused += 1
            log.warning(
                "model change to %r ignored: its latency %d exceeds the bridge's fixed latency %d", name, needed, total
            )
            return False
        target = self.params.target
        if target is not None and target not in info.sources:
            target = info.sources[0] if info.sources else None
        # A trial session beside the running one: a refusal leaves the running session as it is.
        why = self.link.probe(name, target)
        if why is not None:
            self.counters.model_refused += 1
            log.warning("model change to %r refused, staying with %r: %s", name, self.link.model, why)
            return False
        self.link.request_model(name, target)
        return True

    # -- audio thread ------------------------------------------------------------------------
    def callback(self, inp: np.ndarray, out: np.ndarray) -> None:
        """Real-time entry: copy ``inp (channels, n)`` in and fill ``out (channels, n)``; never raises.

        Any error is counted (``callback_errors``; the network thread logs it) and
        that block's output is silenced.
        """
        try:
            n = inp.shape[1]
            max_block = self.settings.max_block
            start = 0
            while start < n:
                stop = min(n, start + max_block)
                self._push(inp[:, start:stop])
                self._pull(out[:, start:stop])
                start = stop
            self._data_ready.set()
        except Exception:
            self.counters.callback_errors += 1
            out[...] = 0.0

    def _push(self, inp: np.ndarray) -> None:
        timeline = self.timeline
        if timeline.reset_requested != timeline.reset_taken:
            # Publish the position before `taken`: the sender reads `taken` then `reset_pos`.
            timeline.reset_pos = self.position
            timeline.reset_taken = timeline.reset_requested
            if timeline.total is not None:
                self._mute_until = self.position + timeline.total
        self.in_ring.write(inp)

    def _pull(self, out: np.ndarray) -> None:
        """Fill ``out`` with output frames ``[position, position + n)`` and advance (input already pushed)."""
        n = out.shape[1]
        pos = self.position
        counters = self.counters
        total = self.timeline.total
        counters.callbacks += 1
        counters.frames += n
        if total is None:
            # No latency yet (never connected): nothing can be aligned, so silence.
            out[...] = 0.0
            counters.gap_frames += n
            self.position = pos + n
            self.out_ring.read_pos = pos + n
            return
        valid = self._valid[:n]
        got = self.out_ring.read(pos, out, valid)
        self.out_ring.read_pos = pos + n  # publish: frames before this are late now
        if got < n:
            # Frames before the live session's first stem frame are gaps (not connected); after, underruns.
            first = self.timeline.session_first_out
            k = n if first >= NEVER else min(n, max(0, first - pos))
            gap = k - int(np.count_nonzero(valid[:k]))
            under = (n - k) - int(np.count_nonzero(valid[k:]))
            counters.gap_frames += gap
            if under:
                counters.underrun_blocks += 1
                counters.underrun_frames += under
            missing = self._missing[:n]
            np.logical_not(valid, out=missing)
            if self._dry_policy:
                dry = self._dry[:, :n]
                self.in_ring.read_history(pos - total, dry)
                np.copyto(out, dry, where=missing)
            else:
                np.copyto(out, 0.0, where=missing)
        if self._mute_until > pos:
            m = min(n, self._mute_until - pos)
            out[:, :m] = 0.0
            counters.muted_frames += m
        self.position = pos + n

    # -- offline ----------------------------------------------------------------------------
    def process(self, block: np.ndarray) -> np.ndarray:
        """Offline entry: ``block (channels, n)`` in, ``(channels, n)`` out, as a host's process call.

        Waits until the block's stem frames have arrived (or the session is down,
        or ``offline_timeout_s`` passed: then the underrun policy fills in, counted).
        """
        block = np.asarray(block, dtype=np.float32)
        if block.ndim != 2 or block.shape[0] != self.settings.channels:
            raise BridgeError(f"block must be ({self.settings.channels}, n), got shape {block.shape}")
        n = block.shape[1]
        out = np.empty_like(block)
        max_block = self.settings.max_block
        for start in range(0, n, max_block):
            stop = min(n, start + max_block)
            self._push(block[:, start:stop])
            self._data_ready.set()
            self._wait_for(self.position, stop - start)
            self._pull(out[:, start:stop])
        return out

    def _wait_for(self, pos: int, n: int) -> None:
        deadline = time.monotonic() + self.settings.offline_timeout_s
        while True:
            self._arrived.clear()  # before the check: an arrival after it wakes the wait below
            first = self.timeline.session_first_out
            if first >= NEVER or self.timeline.total is None:
                return  # not connected: nothing is coming
            begin = max(pos, first)
            if begin >= pos + n or self.out_ring.count_ready(begin, pos + n - begin) == pos + n - begin:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.wait(min(remaining, 0.05))
