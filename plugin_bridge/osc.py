"""The bridge's OSC listener: plugin parameters from a DAW's OSC surface or a control app.

One UDP port per bridge, handled on one ordered asyncio loop (python-osc's
asyncio server) in its own thread. Messages are dispatched as they arrive (no
bundle time-tag waiting); accepted changes are forwarded in-band to the server
and applied at the next block boundary, ramped over that block. Bad values are
logged with the reason and ignored. Values are normalised floats 0..1 except
where a name is expected.

Own address space (``PREFIX`` defaults to ``/stemserve``)::

    PREFIX/target      s NAME  | f 0..1   target source, by name or as a choice over the model's sources
    PREFIX/mix         f 0..1             0 = dry (input delayed by the latency) .. 1 = stems only
    PREFIX/gain/STEM   f 0..1             linear gain of one stem
    PREFIX/model       s NAME             switch model (only if its latency fits the bridge's)
    PREFIX/param       i N  f 0..1        normalised plugin parameter N (numbers below)
    PREFIX/reset                          transport stop / seek: clear server state, keep latency
    PREFIX/latency                        reply PREFIX/latency i TOTAL i SAMPLE_RATE to the sender
    PREFIX/stats                          reply PREFIX/stats s JSON (counters, status, latest heads) to the sender
    PREFIX/subscribe                      send the sender PREFIX/activity for every block (and the latency now)

Sent to subscribers (``PREFIX/subscribe``, or :meth:`OscListener.subscribe`, the
CLI's ``--osc-notify``) as stem blocks of a model with heads (``multitask_unet``)
arrive, at most ``activity_hz`` times a second (default 30, a display's rate:
blocks come up to ~200 times a second; between sends only the latest block's
values are kept, and the last one is always sent), from the OSC loop, never the
audio thread::

    PREFIX/activity    f VOICING  f F0_HZ  f A_1 .. f A_K

``A_k``: probability (0..1) that the model's k-th source plays in the block, in
the model's source order (the names are in ``PREFIX/stats``' ``activity``);
``VOICING``: the lead's voicing probability (0..1); ``F0_HZ``: its fundamental
in Hz (0 when unvoiced); both -1 when the model has no pitch head.

Ardour's plugin-parameter shape is accepted too, so an Ardour OSC surface can
drive the bridge as if it were a plugin on a strip::

    /strip/plugin/parameter  i SSID  i PIID  i PARAM  f VALUE(0..1)

``PARAM`` uses the same numbers as ``PREFIX/param`` (1-based, as Ardour counts
plugin parameters): 1 = target (choice over the model's sources), 2 = mix,
3.. = gain of the model's first, second, ... source. ``SSID`` / ``PIID`` are
ignored unless the bridge was given ``ardour_strip`` / ``ardour_plugin``, in
which case other strips' and plugins' messages are ignored (silently: they are
meant for someone else).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, cast

from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_server import AsyncIOOSCUDPServer

from stemserve.plugin_bridge.activity import Activity
from stemserve.plugin_bridge.parameters import Parameters

log = logging.getLogger(__name__)

ARDOUR_PARAMETER = "/strip/plugin/parameter"
Address = tuple[str, int]


class OscListener:
    """Routes OSC messages to :class:`Parameters` and the bridge's controls.

    Args:
        params: the parameter state to set.
        reset: called for ``PREFIX/reset``.
        latency: returns ``(total, sample_rate)`` or None before the first session.
        stats: returns the bridge's counters, status and latest heads (``Bridge.report``).
        ardour_strip / ardour_plugin: accept only this strip / plugin id in Ardour messages.
        activity_hz: most ``PREFIX/activity`` sends per second (``inf``: one per block).
    """

    def __init__(
        self,
        params: Parameters,
        reset: Callable[[], None] | None = None,
        latency: Callable[[], tuple[int, int] | None] | None = None,
        stats: Callable[[], Mapping[str, Any]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        prefix: str = "/stemserve",
        ardour_strip: int | None = None,
        ardour_plugin: int | None = None,
        activity_hz: float = 30.0,
    ) -> None:
        if not activity_hz > 0:
            raise ValueError(f"activity_hz must be > 0, got {activity_hz}")
        self.params = params
        self._reset = reset
        self._latency = latency
        self._stats = stats
        self.host = host
        self.requested_port = port
        self.prefix = prefix.rstrip("/")
        self.ardour_strip = ardour_strip
        self.ardour_plugin = ardour_plugin
        self.port = 0
        # Where PREFIX/activity goes; the loop's thread only (subscribe() posts to it).
        self.subscribers: set[Address] = set()
        self.activity_interval = 1.0 / activity_hz
        self.activity_offered = 0  # activities handed to the loop (one per block)
        self.activity_sent = 0  # PREFIX/activity sends (each to every subscriber)
        self._pending_activity: tuple[float, ...] | None = None
        self._activity_timer: asyncio.TimerHandle | None = None
        self._last_activity_at = -float("inf")
        # Messages fully handled (accepted or refused); tests wait on it.
        self.handled = 0
        self.refused = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self.dispatcher = self._build_dispatcher()

    # -- dispatch (no sockets: tests feed datagrams to self.dispatcher directly) -------------------
    def _build_dispatcher(self) -> Dispatcher:
        d = Dispatcher()
        p = self.prefix
        d.map(f"{p}/target", self._counted(self._target))
        d.map(f"{p}/mix", self._counted(self._mix))
        d.map(f"{p}/gain/*", self._counted(self._gain))
        d.map(f"{p}/model", self._counted(self._model))
        d.map(f"{p}/param", self._counted(self._param))
        d.map(f"{p}/reset", self._counted(self._on_reset))
        d.map(f"{p}/latency", self._counted(self._reply_latency), needs_reply_address=True)
        d.map(f"{p}/stats", self._counted(self._reply_stats), needs_reply_address=True)
        d.map(f"{p}/subscribe", self._counted(self._subscribe), needs_reply_address=True)
        d.map(ARDOUR_PARAMETER, self._counted(self._ardour))
        d.set_default_handler(self._counted(self._unknown))
        return d

    def _counted(self, handler: Callable[..., bool]) -> Callable[..., None]:
        def run(*args: Any) -> None:
            try:
                ok = handler(*args)
            except Exception:  # a handler bug must not stop the listener
                log.exception("OSC handler failed for %r", args)
                ok = False
            if not ok:
                self.refused += 1
            self.handled += 1

        return run

    @staticmethod
    def _one(address: str, args: tuple[Any, ...]) -> Any:
        if len(args) != 1:
            log.warning("OSC %s ignored: expected one value, got %r", address, list(args))
            return None
        return args[0]

    def _target(self, address: str, *args: Any) -> bool:
        value = self._one(address, args)
        return value is not None and self.params.set_target(value)

    def _mix(self, address: str, *args: Any) -> bool:
        value = self._one(address, args)
        return value is not None and self.params.set_mix(value)

    def _gain(self, address: str, *args: Any) -> bool:
        value = self._one(address, args)
        stem = address[len(self.prefix) + len("/gain/") :]
        return value is not None and self.params.set_gain(stem, value)

    def _model(self, address: str, *args: Any) -> bool:
        value = self._one(address, args)
        return value is not None and self.params.set_model(value)

    def _param(self, address: str, *args: Any) -> bool:
        if len(args) != 2:
            log.warning("OSC %s ignored: expected (i number, f value), got %r", address, list(args))
            return False
        return self.params.set_normalized(args[0], args[1])

    def _on_reset(self, address: str, *args: Any) -> bool:
        if self._reset is None:
            return False
        self._reset()
        return True

    def _ardour(self, address: str, *args: Any) -> bool:
        if len(args) != 4:
            log.warning("OSC %s ignored: expected (ssid, piid, param, value), got %r", address, list(args))
            return False
        ssid, piid, param, value = args
        if self.ardour_strip is not None and ssid != self.ardour_strip:
            return True
        if self.ardour_plugin is not None and piid != self.ardour_plugin:
            return True
        return self.params.set_normalized(param, value)

    def _unknown(self, address: str, *args: Any) -> bool:
        log.warning("OSC %s ignored: unknown address (see plugin_bridge/osc.py for the address space)", address)
        return False

    def _send(self, to: Address, address: str, *values: Any) -> None:
        builder = OscMessageBuilder(address=address)
        for value in values:
            builder.add_arg(value)
        if self._transport is not None:
            self._transport.sendto(builder.build().dgram, to)

    def _reply_latency(self, client: Address, address: str, *args: Any) -> bool:
        known = self._latency() if self._latency is not None else None
        total, rate = known if known is not None else (-1, 0)
        self._send(client, f"{self.prefix}/latency", int(total), int(rate))
        return True

    def _reply_stats(self, client: Address, address: str, *args: Any) -> bool:
        stats = self._stats() if self._stats is not None else {}
        self._send(client, f"{self.prefix}/stats", json.dumps(stats))
        return True

    def _subscribe(self, client: Address, address: str, *args: Any) -> bool:
        self.subscribers.add(client)
        return self._reply_latency(client, address)

    def subscribe(self, to: Address) -> None:
        """Send ``PREFIX/activity`` to ``to`` from now on (any thread)."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self.subscribers.add, to)

    def send_activity(self, activity: Activity) -> None:
        """``PREFIX/activity`` to every subscriber; queues the datagrams on the OSC loop and returns
        (an :class:`~plugin_bridge.activity.ActivityBoard` listener, called on the network thread)."""
        loop = self._loop
        if loop is None:
            return
        voicing = -1.0 if activity.voicing is None else activity.voicing
        f0 = -1.0 if activity.f0_hz is None else activity.f0_hz
        values = (float(voicing), float(f0), *map(float, activity.activity))
        with contextlib.suppress(RuntimeError):  # the listener stopped (its loop closed): nobody to send to
            loop.call_soon_threadsafe(self._offer_activity, values)

    @property
    def activity_due(self) -> bool:
        """A ``PREFIX/activity`` send is scheduled (the rate limit holds back the latest values)."""
        return self._activity_timer is not None

    def _offer_activity(self, values: tuple[float, ...]) -> None:
        # The loop's thread: send now if the last send is an interval old, else once it is (latest values).
        assert self._loop is not None
        self.activity_offered += 1
        self._pending_activity = values
        if self._activity_timer is not None:
            return  # a send is due; it takes these values
        wait = self._last_activity_at + self.activity_interval - self._loop.time()
        if wait <= 0:
            self._send_activity()
        else:
            self._activity_timer = self._loop.call_later(wait, self._send_activity)

    def _send_activity(self) -> None:
        assert self._loop is not None
        self._activity_timer = None
        values, self._pending_activity = self._pending_activity, None
        if values is None:
            return
        self._last_activity_at = self._loop.time()
        for to in self.subscribers:
            self._send(to, f"{self.prefix}/activity", *values)
        self.activity_sent += 1

    def announce(self, to: Address) -> None:
        """Send ``PREFIX/latency i TOTAL i RATE`` to ``to`` (e.g. a control app, once connected)."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._reply_latency, to, "")

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, timeout: float = 5.0) -> int:
        """Bind and serve on a thread of its own; returns the bound port."""
        if self._thread is not None:
            raise RuntimeError("OSC listener already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            server = AsyncIOOSCUDPServer((self.host, self.requested_port), self.dispatcher, loop)  # type: ignore[arg-type]
            transport, _ = await server.create_serve_endpoint()
            # A datagram transport (asyncio's selector class does not subclass DatagramTransport).
            self._transport = cast(asyncio.DatagramTransport, transport)
            self.port = int(transport.get_extra_info("sockname")[1])

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(serve())
            except BaseException as err:  # reported to start() below
                failure.append(err)
                loop.close()
                ready.set()
                return
            ready.set()
            loop.run_forever()
            if self._transport is not None:
                self._transport.close()
            loop.close()

        self._thread = threading.Thread(target=run, name="stemserve-bridge-osc", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise OSError(f"OSC listener did not bind {self.host}:{self.requested_port} in {timeout} s")
        if failure:
            self._thread = None
            raise OSError(f"OSC listener cannot bind {self.host}:{self.requested_port}: {failure[0]!r}")
        log.info("OSC listening on %s:%d (prefix %s, and %s)", self.host, self.port, self.prefix, ARDOUR_PARAMETER)
        return self.port

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5.0)
        self._thread = None
