"""An in-process server on an ephemeral loopback port, run on its own event-loop thread.

``stemserve separate`` without ``--server`` uses it, so a file goes through the
very same gRPC path as against a remote server.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping

from stemserve.server.app import App, ServerConfig
from stemserve.server.engine.engine import Engine


class EmbeddedServer:
    """``start()`` returns ``"127.0.0.1:<port>"`` once the models are warm; ``stop()`` drains.

    Args:
        engine: the engine to serve (models already loaded, or named in ``models``).
        models: ``{name: checkpoint path or None}`` to load at start.
        config: transport settings (default: loopback, an ephemeral port, no token).
    """

    def __init__(
        self, engine: Engine, models: Mapping[str, str | None] | None = None, config: ServerConfig | None = None
    ) -> None:
        self.config = config or ServerConfig(host="127.0.0.1", port=0)
        if models is not None:
            self.config.models = dict(models)
        self.app = App(self.config, engine)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stemserve-embedded", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.app.port}"

    def start(self, timeout: float = 300.0) -> str:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.app.start(), self._loop).result(timeout)
        except BaseException:
            self.stop()
            raise
        return self.address

    def stop(self, timeout: float = 30.0) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.app.stop(), self._loop).result(timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            self._loop.close()

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
