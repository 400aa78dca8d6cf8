"""App wiring: engine + gRPC server (health, reflection, auth) + OSC control + metrics.

:func:`create_server` builds, binds and starts the gRPC server and returns it
with its bound port, so tests bind port 0. :class:`App` owns the lifecycle:

1. :meth:`App.bind` — gRPC (health NOT_SERVING), OSC and metrics listen;
2. :meth:`App.warm_up` — models load and warm up off the event loop, then health
   says SERVING (until then ``Stream`` / ``Separate`` answer UNAVAILABLE);
3. :meth:`App.stop` — health NOT_SERVING, OSC closes, in-flight calls get
   ``grace_seconds`` to finish, the engine stops its workers.

Wire limits (the bridge and the scripting client use the same numbers):

* keepalive: the server pings an idle connection every 30 s and drops it after
  10 s without an answer; clients may ping at most every 10 s (more often is a
  "ping strike"; after 2 the server closes the connection with ENHANCE_YOUR_CALM);
* messages: 16 MiB each way by default (``--max-message-mb``); a larger request
  fails with RESOURCE_EXHAUSTED before it reaches the servicer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from stemserve.protos import stemserve_pb2, stemserve_pb2_grpc
from stemserve.server.auth import BearerTokenInterceptor
from stemserve.server.engine.engine import Engine
from stemserve.server.grpc_service import SeparationServicer

log = logging.getLogger(__name__)

SERVICE_NAME: str = stemserve_pb2.DESCRIPTOR.services_by_name["Separation"].full_name
# grpcio-reflection ships only v1alpha; v1 has the same messages and field numbers under
# another package, so the v1alpha servicer answers v1 clients byte for byte (grpcurl and
# Postman ask v1 first).
REFLECTION_V1: str = "grpc.reflection.v1.ServerReflection"

# Keepalive contract shared with the bridge (plugin_bridge/client.py pings every
# 20 s, above the server's 10 s minimum).
KEEPALIVE_MIN_CLIENT_PING_MS = 10_000
KEEPALIVE_SERVER_PING_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
MAX_PING_STRIKES = 2
# 4096 frames x 8 channels x 4 bytes is 128 KiB; Separate chunks of 1 s with four
# stereo stems are ~1.4 MiB. 16 MiB leaves room and still refuses absurd messages.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass
class ServerConfig:
    """Everything ``stemserve serve`` sets about the transports (the engine has its own config)."""

    host: str = "127.0.0.1"
    port: int = 50051
    osc_port: int | None = None
    osc_host: str | None = None  # default: same as host
    osc_allow: tuple[str, ...] = ("127.0.0.1",)
    token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    metrics_port: int | None = None
    grace_seconds: float = 5.0
    # name -> checkpoint path (None: a registry preset), loaded by App.warm_up
    models: dict[str, str | None] = field(default_factory=dict)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals; False for wildcards and names."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(config: ServerConfig) -> None:
    """Refuse configurations that would expose the server unauthenticated (ValueError)."""
    if not is_loopback(config.host) and not config.token:
        raise ValueError(
            f"refusing to listen on {config.host} without --token (or STEMSERVE_TOKEN): "
            "a non-loopback server must authenticate its clients"
        )
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    if config.max_message_bytes < 64 * 1024:
        raise ValueError(f"max message size {config.max_message_bytes} bytes is too small for one audio block")


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_SERVER_PING_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MIN_CLIENT_PING_MS),
        ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def enable_reflection(server: grpc.aio.Server, names: tuple[str, ...]) -> None:
    """Serve gRPC reflection as ``grpc.reflection.v1`` and ``v1alpha``, listing ``names``."""
    servicer = reflection.aio.ReflectionServicer(names)
    method = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    for service in (reflection.SERVICE_NAME, REFLECTION_V1):
        handler = grpc.method_handlers_generic_handler(service, {"ServerReflectionInfo": method})
        server.add_generic_rpc_handlers((handler,))


async def create_server(
    config: ServerConfig, servicer: SeparationServicer
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Build, bind and start the gRPC server. Health starts NOT_SERVING."""
    check_exposure(config)
    interceptors = [BearerTokenInterceptor(config.token)] if config.token else []
    server = grpc.aio.server(interceptors=interceptors, options=server_options(config.max_message_bytes))
    stemserve_pb2_grpc.add_SeparationServicer_to_server(servicer, server)
    # The asyncio health servicer: the threaded one's Watch blocks an executor thread
    # that nothing wakes when an aio server stops, so the process could never exit.
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await set_serving(health_servicer, False)
    enable_reflection(server, (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1))
    address = f"{config.host}:{config.port}"
    if config.tls_cert is not None and config.tls_key is not None:
        credentials = grpc.ssl_server_credentials([(config.tls_key.read_bytes(), config.tls_cert.read_bytes())])
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    await server.start()
    return server, port, health_servicer


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    """Set the overall status ("") and the Separation service's."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)


class App:
    """The running server: engine, gRPC, optional OSC and metrics. See the module docstring."""

    def __init__(self, config: ServerConfig, engine: Engine) -> None:
        from stemserve.server.osc_control import OscControl

        self.config = config
        self.engine = engine
        self.port = 0
        self.osc_port: int | None = None
        self._osc: OscControl | None = None
        if config.osc_port is not None:
            self._osc = OscControl(engine, config.osc_host or config.host, config.osc_port, config.osc_allow)
        self.servicer = SeparationServicer(engine, self.extra_stats, config.max_message_bytes)
        if self._osc is not None:
            self.servicer.add_listener(self._osc.notify)
            self._osc.router.request_model = self.servicer.request_model
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._stopping = asyncio.Event()

    def extra_stats(self) -> dict[str, Any]:
        """Transport counters for GetStats' ``extra_json`` and the metrics endpoint."""
        out: dict[str, Any] = {}
        if self._osc is not None:
            out["osc"] = asdict(self._osc.router.counters)
        return out

    async def bind(self) -> int:
        """Listen (gRPC health NOT_SERVING, OSC, metrics); return the gRPC port."""
        self._server, self.port, self._health = await create_server(self.config, self.servicer)
        if self._osc is not None:
            self.osc_port = await self._osc.start()
        if self.config.metrics_port is not None:
            from stemserve.server.metrics import start_metrics

            start_metrics(self.engine, self.config.metrics_port, self.config.host, self.extra_stats)
        return self.port

    async def warm_up(self, models: Mapping[str, str | None] | None = None) -> None:
        """Load ``models`` (default ``config.models``) and warm every model, off the
        event loop (health stays NOT_SERVING meanwhile); then SERVING."""
        chosen = dict(self.config.models if models is None else models)

        def load() -> None:
            for name, path in chosen.items():
                self.engine.load_model(name, path, warm_up=False)
            self.engine.warm_up()

        await asyncio.to_thread(load)
        if self._health is not None and not self._stopping.is_set():
            await set_serving(self._health, self.engine.ready)
        log.info("serving on %s:%d (ready: %s)", self.config.host, self.port, self.engine.ready)

    async def start(self) -> int:
        """:meth:`bind` then :meth:`warm_up`; returns the gRPC port."""
        port = await self.bind()
        await self.warm_up()
        return port

    async def stop(self) -> None:
        """Drain: NOT_SERVING, stop OSC, give calls ``grace_seconds``, stop the engine."""
        self._stopping.set()
        if self._health is not None:
            await set_serving(self._health, False)
        if self._osc is not None:
            self._osc.stop()
        if self._server is not None:
            await self._server.stop(self.config.grace_seconds)
        await asyncio.to_thread(self.engine.shutdown)

    async def run_until_signal(self) -> None:
        """``stemserve serve``: bind, warm up, serve until SIGINT / SIGTERM, drain."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.bind()
        print(f"stemserve listening on {self.config.host}:{self.port} (warming up)", flush=True)
        if self.osc_port is not None:
            print(
                f"stemserve OSC control on udp {self.config.osc_host or self.config.host}:{self.osc_port}", flush=True
            )
        warm = asyncio.create_task(self.warm_up())
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([warm, stopped], return_when=asyncio.FIRST_COMPLETED)
            if warm.done():
                warm.result()  # a model that fails to load ends the server
                print(f"stemserve ready: {', '.join(m.name for m in self.engine.models())}", flush=True)
                await stopped
        finally:
            log.info("shutting down: draining for up to %.1f s", self.config.grace_seconds)
            await self.stop()
            stopped.cancel()
