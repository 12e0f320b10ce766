"""The common server and client on a stub service: health during load/drain, signals, budgets."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from pydantic_settings import SettingsConfigDict

from services.common.grpc_client import (
    Deadline,
    DeadlineExhausted,
    call_timeout,
    channel_options,
    check_health,
    create_channel,
    wait_until_serving,
)
from services.common.grpc_server import run_service, serve, server_options, start_server
from services.common.settings import BaseServiceSettings, GrpcClientSettings
from tests.helpers.grpc import TEST_SERVER_SETTINGS
from tests.helpers.waits import eventually

SERVICE = "test.v1.Stub"
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class StubSettings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="STUBSVC_")


class StubService:
    """A service with no RPCs of its own whose loading waits for the test."""

    name = "stub"
    service_names = (SERVICE,)

    def __init__(self, fail_start: bool = False) -> None:
        self.registry = CollectorRegistry()
        self.loaded = asyncio.Event()
        self.started = asyncio.Event()
        self.stopped = False
        self.fail_start = fail_start

    def register(self, server: grpc.aio.Server) -> None:
        pass

    async def start(self) -> None:
        self.started.set()
        if self.fail_start:
            raise RuntimeError("weights missing")
        await self.loaded.wait()

    async def stop(self) -> None:
        self.stopped = True


def stub_settings(**overrides: object) -> StubSettings:
    return StubSettings(**{**TEST_SERVER_SETTINGS, **overrides})


async def health_status(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    return int(reply.status)


async def test_not_serving_while_loading_then_serving() -> None:
    service = StubService()
    handle = await start_server(service, stub_settings())
    channel = create_channel(GrpcClientSettings(target=handle.address))
    try:
        assert handle.port > 0
        assert await health_status(channel, "") == NOT_SERVING
        loading = asyncio.ensure_future(handle.start_service())
        await service.started.wait()
        assert not await check_health(channel, SERVICE)
        service.loaded.set()
        await loading
        assert await check_health(channel, "")
        assert await check_health(channel, SERVICE)
        assert not await check_health(channel, "no.such.Service")  # NOT_FOUND
    finally:
        await channel.close()
        await handle.shutdown()
    assert service.stopped


async def test_drain_reports_not_serving_before_stopping() -> None:
    service = StubService()
    service.loaded.set()
    async with serve(service, stub_settings(drain_delay_s=2.0)) as handle:
        channel = create_channel(GrpcClientSettings(target=handle.address))
        try:
            assert await check_health(channel, SERVICE)
            shutdown = asyncio.ensure_future(handle.shutdown())
            await eventually(
                lambda: _is_not_serving(channel), timeout_s=1.5, what="NOT_SERVING while draining"
            )
            assert not service.stopped  # still draining
            await shutdown
            assert service.stopped
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_status(channel, "")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await channel.close()


async def test_failed_start_stops_the_server() -> None:
    service = StubService(fail_start=True)
    with pytest.raises(RuntimeError, match="weights missing"):
        async with serve(service, stub_settings()):
            pytest.fail("serve must not yield after a failed start")
    assert service.stopped


async def test_sigterm_drains_and_stops_run_service() -> None:
    service = StubService()
    service.loaded.set()
    running = asyncio.ensure_future(run_service(service, stub_settings()))
    await service.started.wait()
    await asyncio.sleep(0.05)  # let it install its signal handlers
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(running, timeout=10)
    assert service.stopped


def test_options_are_finite_and_keepalive_compatible() -> None:
    server = dict(server_options(stub_settings()))
    client = dict(channel_options(GrpcClientSettings()))
    assert 0 < server["grpc.max_receive_message_length"] < 2**31
    assert 0 < client["grpc.max_receive_message_length"] < 2**31
    # Clients ping no more often than the server accepts, or they get GOAWAY too_many_pings.
    assert (
        server["grpc.http2.min_ping_interval_without_data_ms"] <= (client["grpc.keepalive_time_ms"])
    )
    config = json.loads(client["grpc.service_config"])
    (method_config,) = config["methodConfig"]
    assert method_config["name"] == [{"service": "grpc.health.v1.Health", "method": "Check"}]
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


async def test_check_health_is_false_when_nothing_listens() -> None:
    channel = create_channel(GrpcClientSettings(target="127.0.0.1:1"))
    try:
        assert not await check_health(channel, timeout_s=0.5)
        assert not await wait_until_serving(channel, timeout_s=0.3)
    finally:
        await channel.close()


def test_call_timeout_from_budget() -> None:
    assert call_timeout(2.0, margin_s=0.5) == pytest.approx(1.5)
    assert call_timeout(10.0, cap_s=3.0) == 3.0
    with pytest.raises(DeadlineExhausted) as exhausted:
        call_timeout(0.2, margin_s=0.5)
    assert exhausted.value.code == "deadline_exceeded"


def test_deadline_counts_down() -> None:
    now = [100.0]
    deadline = Deadline(5.0, clock=lambda: now[0])
    assert deadline.timeout() == pytest.approx(5.0)
    now[0] += 4.0
    assert deadline.timeout(margin_s=0.5) == pytest.approx(0.5)
    now[0] += 1.0
    assert deadline.expired
    with pytest.raises(DeadlineExhausted):
        deadline.timeout()


async def _is_not_serving(channel: grpc.aio.Channel) -> bool:
    return await health_status(channel, SERVICE) == NOT_SERVING
