"""Fixtures: one in-process server with tiny models for the whole bridge test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stemserve.server.embedded import EmbeddedServer
from tests.plugin_bridge.servers import tiny_engine


@pytest.fixture(scope="session")
def server_address() -> Iterator[str]:
    server = EmbeddedServer(tiny_engine())
    address = server.start()
    yield address
    server.stop()
