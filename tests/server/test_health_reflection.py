"""Standard health (NOT_SERVING until warm, and again while shutting down) and reflection."""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from stemserve.protos import stemserve_pb2 as pb
from stemserve.protos import stemserve_pb2_grpc as pb_grpc
from stemserve.server.app import SERVICE_NAME, App, ServerConfig
from stemserve.server.embedded import EmbeddedServer
from tests.server.conftest import RATE, TIMEOUT, make_engine, running_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_goes_serving_after_warm_up_and_not_serving_on_shutdown(checkpoints: dict[str, str]) -> None:
    app = App(ServerConfig(host="127.0.0.1", port=0, models={"multi": checkpoints["multi"]}), make_engine())
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(app.bind(), loop).result(TIMEOUT)
        with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = pb_grpc.SeparationStub(channel)
            for service in ("", SERVICE_NAME):
                assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == NOT_SERVING
            # Sessions are refused until the models are warm.
            opening = pb.StreamRequest(open=pb.OpenSession(model="multi", sample_rate=RATE, channels=1))
            with pytest.raises(grpc.RpcError) as caught:
                list(stub.Stream(iter([opening])))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

            asyncio.run_coroutine_threadsafe(app.warm_up(), loop).result(TIMEOUT * 4)
            assert health.Check(health_pb2.HealthCheckRequest()).status == SERVING
            assert [m.name for m in stub.ListModels(pb.ListModelsRequest()).models] == ["multi"]

            watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            assert next(watch).status == SERVING
            stopping = asyncio.run_coroutine_threadsafe(app.stop(), loop)
            assert next(watch).status == NOT_SERVING  # said before the server stops taking calls
            stopping.result(TIMEOUT)
            watch.cancel()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(TIMEOUT)


def test_reflection_lists_the_services(server: EmbeddedServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(stub.ServerReflectionInfo(iter([request])))
        names = {s.name for s in reply.list_services_response.service}
        assert {"stemserve.v1.Separation", "grpc.health.v1.Health"} <= names
        # ...and describes the contract, so grpcurl needs no .proto file.
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="stemserve.v1.Separation")
        reply = next(stub.ServerReflectionInfo(iter([request])))
        assert reply.file_descriptor_response.file_descriptor_proto


def test_get_stats_reports_engine_counters(server: EmbeddedServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stats = pb_grpc.SeparationStub(channel).GetStats(pb.GetStatsRequest())
    assert stats.sessions == 0
    assert {m.name for m in stats.models} == {"multi", "conditioned"}
    assert '"ready": true' in stats.extra_json


def test_metrics_endpoint_exports_engine_counters(checkpoints: dict[str, str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with running_server({"multi": checkpoints["multi"]}, metrics_port=port, osc_port=0):
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT).read().decode()
    for name in ("stemserve_sessions", "stemserve_blocks_in_total", "stemserve_block_ms", "stemserve_osc_malformed"):
        assert name in text
