"""OSC control plane over UDP (python-osc parsing, one ordered asyncio loop).

Address space (``<session>`` is the id the session's Stream was opened with)::

    /stemserve/<session>/target  <name: str> | <choice: float 0..1>
    /stemserve/<session>/mix     <float 0..1>        dry (0) .. wet (1)
    /stemserve/<session>/gain/<stem> <float 0..1>    linear gain of one stem
    /stemserve/<session>/model   <name: str>         checked, then passed to the session's
                                                     Stream client as a MODEL_REQUESTED
                                                     status: a session's latency is fixed,
                                                     so the client (the bridge) opens a new
                                                     session on that model if it fits
    /stemserve/<session>/latency                     query -> /stemserve/<session>/latency <int samples>
    /stemserve/<session>/status                      query -> /stemserve/<session>/status
                                                     <model> <latency> <target> <mix>
    /stemserve/<session>/subscribe                   notifications for this session to the sender
    /stemserve/subscribe                             notifications for every session to the sender

A float target is a plugin-style normalised choice: ``index = floor(v * n)``
clamped to the last of the session's ``n`` stems; an empty string selects the
sum of all stems. Every accepted message is answered with
``/stemserve/<session>/ok <param>``, every refused one with
``/stemserve/error <reason>``, both to the sender. Subscribers receive
``/stemserve/<session>/opened <latency>``, ``/stemserve/<session>/status
<code> <message>`` (PARAMETERS_APPLIED, INVALID_SAMPLES, OVERLOADED) and
``/stemserve/<session>/closed``.

Packets from addresses outside the allow-list are dropped and counted;
undecodable packets and unknown addresses are logged, counted and never
raise. Messages are applied as they arrive (bundle time tags are not waited
for); the engine applies parameters at the next block boundary, ramped over
that block.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket, ParseError

from stemserve.server.engine import errors
from stemserve.server.engine.engine import Engine

log = logging.getLogger(__name__)

Address = tuple[str, int]


@dataclass
class OscCounters:
    """What the OSC endpoint has seen (GetStats ``extra_json["osc"]``)."""

    messages: int = 0  # decoded messages from allowed senders
    applied: int = 0  # parameter changes and queries answered
    refused: int = 0  # well-formed but refused (unknown session / target, bad value, model change)
    unknown: int = 0  # addresses outside the address space
    malformed: int = 0  # datagrams that are not OSC
    not_allowed: int = 0  # datagrams from senders outside the allow-list
    notifications: int = 0  # messages sent to subscribers


def _message(address: str, *args: Any) -> bytes:
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build().dgram


@dataclass
class _Subscribers:
    everything: set[Address] = field(default_factory=set)
    by_session: dict[str, set[Address]] = field(default_factory=dict)

    def of(self, session: str) -> set[Address]:
        return self.everything | self.by_session.get(session, set())


class OscRouter:
    """Turns OSC datagrams into engine parameter calls and replies. Knows nothing of sockets."""

    def __init__(self, engine: Engine, allow: Sequence[str] = ("127.0.0.1",)) -> None:
        self.engine = engine
        self.allow = frozenset(allow)
        self.counters = OscCounters()
        self.subscribers = _Subscribers()
        # Set by the server: asks a session's Stream client to move to a model (False: no Stream).
        self.request_model: Callable[[str, str], bool] | None = None

    def handle_datagram(self, data: bytes, sender: Address) -> list[bytes]:
        """Apply every message in ``data``; return the replies to send to ``sender``."""
        if self.allow and sender[0] not in self.allow:
            self.counters.not_allowed += 1
            log.warning("OSC packet from %s dropped: not in the allow-list", sender[0])
            return []
        try:
            packet = OscPacket(data)
            messages = [(timed.message.address, list(timed.message.params)) for timed in packet.messages]
        except (ParseError, ValueError, IndexError, TypeError, UnicodeDecodeError) as err:
            self.counters.malformed += 1
            log.warning("malformed OSC packet from %s (%d bytes): %s", sender[0], len(data), err)
            return []
        replies = []
        for address, args in messages:
            self.counters.messages += 1
            replies.append(self._handle(address, args, sender))
        return replies

    def _refuse(self, reason: str) -> bytes:
        self.counters.refused += 1
        log.warning("OSC refused: %s", reason)
        return _message("/stemserve/error", reason)

    def _unknown(self, address: str) -> bytes:
        self.counters.unknown += 1
        log.warning("OSC: unknown address %s", address)
        return _message("/stemserve/error", f"unknown address {address}")

    def _handle(self, address: str, args: list[Any], sender: Address) -> bytes:
        parts = address.split("/")
        if address == "/stemserve/subscribe":
            self.subscribers.everything.add(sender)
            self.counters.applied += 1
            return _message("/stemserve/ok", "subscribe")
        if len(parts) < 4 or parts[0] != "" or parts[1] != "stemserve" or not parts[2]:
            return self._unknown(address)
        session, param = parts[2], parts[3]
        if (param == "gain") != (len(parts) == 5) or len(parts) > 5:
            return self._unknown(address)
        try:
            if param in ("latency", "status", "subscribe"):
                if args:
                    return self._refuse(f"{address} takes no arguments, got {len(args)}")
                reply = self._query(session, param, sender)
                self.counters.applied += 1
                return reply
            if param not in ("target", "mix", "gain", "model"):
                return self._unknown(address)
            if len(args) != 1:
                return self._refuse(f"{address} takes exactly one argument, got {len(args)}")
            value = args[0]
            if param == "model":
                return self._model(session, value)
            if param == "target":
                self.engine.set_parameters(session, target=self._target_name(session, value))
            elif param == "mix":
                self.engine.set_parameters(session, mix=_unit_float(value, "mix"))
            else:
                self.engine.set_parameters(session, gains={parts[4]: _unit_float(value, "gain")})
        except (errors.EngineError, ValueError) as err:
            return self._refuse(str(err))
        self.counters.applied += 1
        return _message(f"/stemserve/{session}/ok", param)

    def _query(self, session: str, what: str, sender: Address) -> bytes:
        latency = self.engine.session_latency(session).total  # UnknownSessionError if not open
        if what == "subscribe":
            self.subscribers.by_session.setdefault(session, set()).add(sender)
            return _message(f"/stemserve/{session}/latency", int(latency))
        if what == "latency":
            return _message(f"/stemserve/{session}/latency", int(latency))
        info = self.engine.session_info(session)
        # The engine has no read-only parameter getter: an empty update returns them unchanged.
        params = self.engine.set_parameters(session)
        return _message(
            f"/stemserve/{session}/status", info.model, int(latency), params.target or "", float(params.mix)
        )

    def _model(self, session: str, value: Any) -> bytes:
        if not isinstance(value, str) or not value:
            return self._refuse(f"model must be a model name, got {value!r}")
        current = self.engine.session_info(session).model
        known = [m.name for m in self.engine.models()]
        if value not in known:
            return self._refuse(f"unknown model {value!r}; loaded: {', '.join(known)}")
        if value != current and (self.request_model is None or not self.request_model(session, value)):
            return self._refuse(
                f"session {session} runs {current} and has no Stream client to switch it: a session's latency "
                f"is fixed, so open a new session with {value}"
            )
        self.counters.applied += 1
        return _message(f"/stemserve/{session}/ok", "model")

    def _target_name(self, session: str, value: Any) -> str | None:
        if isinstance(value, str):
            return value or None
        sources = self.engine.session_sources(session)
        v = _unit_float(value, "target")
        return sources[min(int(v * len(sources)), len(sources) - 1)]

    def notifications(self, session: str, event: str, values: Mapping[str, Any]) -> list[tuple[bytes, Address]]:
        """Messages for the subscribers of ``session`` about ``event`` (see the module docstring)."""
        targets = self.subscribers.of(session)
        if event == "closed":
            self.subscribers.by_session.pop(session, None)
        if not targets:
            return []
        if event == "opened":
            data = _message(f"/stemserve/{session}/opened", int(values.get("latency", 0)))
        elif event == "status":
            data = _message(f"/stemserve/{session}/status", str(values.get("code", "")), str(values.get("message", "")))
        elif event == "closed":
            data = _message(f"/stemserve/{session}/closed")
        else:
            return []
        self.counters.notifications += len(targets)
        return [(data, target) for target in targets]


def _unit_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {v}")
    return v


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, router: OscRouter) -> None:
        self.router = router
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A datagram endpoint's transport (the selector transport does not subclass DatagramTransport).
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            replies = self.router.handle_datagram(data, addr)
        except Exception:  # one bad packet must never stop the control plane
            self.router.counters.malformed += 1
            log.exception("OSC handler failed")
            return
        if self.transport is not None:
            for reply in replies:
                self.transport.sendto(reply, addr)


class OscControl:
    """The UDP endpoint feeding an :class:`OscRouter`."""

    def __init__(self, engine: Engine, host: str, port: int, allow: Sequence[str]) -> None:
        self.router = OscRouter(engine, allow)
        self.host, self.port = host, port
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self.router), local_addr=(self.host, self.port)
        )
        self._transport = transport
        port: int = transport.get_extra_info("sockname")[1]
        log.info("OSC control on udp %s:%d", self.host, port)
        return port

    def notify(self, session: str, event: str, values: Mapping[str, Any]) -> None:
        """Send a session event to its subscribers (called on the event loop)."""
        if self._transport is None:
            return
        for data, target in self.router.notifications(session, event, values):
            self._transport.sendto(data, target)

    def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
