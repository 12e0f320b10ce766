"""The server interceptor on a real grpc.aio server: latency by method and code, SERVING gauge."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.grpc_client import create_channel
from services.common.grpc_server import serve
from services.common.settings import GrpcClientSettings
from tests.unit.common.test_grpc_server import StubService, stub_settings


def sample(service: StubService, name: str, **labels: str) -> float | None:
    return service.registry.get_sample_value(name, labels or None)


async def test_rpc_seconds_by_method_and_code_and_serving_gauge() -> None:
    service = StubService()
    service.loaded.set()
    async with serve(service, stub_settings()) as handle:
        assert sample(service, "stepaudio_stub_serving") == 1.0
        channel = create_channel(GrpcClientSettings(target=handle.address))
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            with pytest.raises(grpc.aio.AioRpcError):  # an unknown service: NOT_FOUND
                await stub.Check(health_pb2.HealthCheckRequest(service="no.such"), timeout=2)
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
            await watch.read()  # the streaming shape: the client goes away mid-stream
            assert sample(service, "stepaudio_stub_rpcs_in_flight", method="Watch") == 1.0
            watch.cancel()
            deadline = asyncio.get_running_loop().time() + 5
            while sample(service, "stepaudio_stub_rpcs_in_flight", method="Watch") != 0.0:
                assert asyncio.get_running_loop().time() < deadline, "Watch never finished"
                await asyncio.sleep(0.02)
        finally:
            await channel.close()
        await handle.shutdown()
        assert sample(service, "stepaudio_stub_serving") == 0.0
    count = "stepaudio_stub_rpc_seconds_count"
    assert sample(service, count, method="Check", code="OK") == 1.0
    assert sample(service, count, method="Check", code="NOT_FOUND") == 1.0
    assert sample(service, count, method="Watch", code="CANCELLED") == 1.0
