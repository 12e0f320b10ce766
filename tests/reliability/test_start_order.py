"""Scenario 22: the controller starts before the services it needs (Kubernetes starts pods in
any order; models load slowly). /readyz stays false, naming what is missing, until every
service's own health says SERVING; the controller does not crash or restart meanwhile; the
first session after ready succeeds and stores what its client was sent."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.cli.realtime_client import RealtimeClient
from services.cli.stack import LocalStack, free_port
from tests.reliability.conftest import TEXT_SESSION, ask, assert_nothing_lost, stored_turns

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.timeout(300)]

START_DEADLINE_S = 180.0  # four model loads on a loaded 2-core machine


async def readiness(http: httpx.AsyncClient) -> tuple[int, dict[str, Any]] | None:
    try:
        reply = await http.get("/readyz", timeout=5)
    except httpx.HTTPError:
        return None  # the controller is not listening yet
    return reply.status_code, reply.json()


async def serving(port: int) -> bool:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        reply = await stub.Check(request, timeout=10)  # type: ignore[attr-defined]
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def test_22_controller_before_services_is_unready_until_all_serve(
    tiny_pack: Path, tmp_path: Path
) -> None:
    stack = LocalStack(
        model_dir=tiny_pack,
        workdir=tmp_path,
        controller_port=free_port(),
        log_level="WARNING",
        extra_env={"CONTROLLER_TURN__MAX_REPLY_TOKENS": "16", "CONTROLLER_TURN__SEED": "7"},
    )
    try:
        names = await asyncio.to_thread(stack.start_controller_first)
        controller = stack.processes["controller"]
        deadline = time.monotonic() + START_DEADLINE_S
        async with httpx.AsyncClient(base_url=stack.url) as http:
            while (first := await readiness(http)) is None:
                assert time.monotonic() < deadline, "the controller never answered /readyz"
                await asyncio.sleep(0.25)
            status, body = first
            assert status == 503 and body["ready"] is False and body["redis"] is True
            assert set(body["services"]) == set(names)
            assert not any(body["services"].values()), body  # nothing is running yet

            loading = asyncio.create_task(asyncio.to_thread(stack.start_services))
            replies: list[tuple[int, dict[str, Any]]] = []
            while True:
                reply = await readiness(http)
                assert reply is not None, "the controller stopped answering while services loaded"
                replies.append(reply)
                if reply[0] == 200:
                    break
                assert time.monotonic() < deadline, f"never ready: {reply}"
                await asyncio.sleep(0.25)
            await loading
        for status, body in replies[:-1]:  # every "not ready" named a service not yet SERVING
            assert status == 503 and not all(body["services"].values()), body
        for name in names:  # ready means every service itself says SERVING
            assert await serving(stack.ports[name]), name
        assert controller.poll() is None and stack.processes["controller"] is controller

        async with RealtimeClient(stack.url) as client:  # the first session after ready
            await client.configure(**TEXT_SESSION)
            await ask(client, "Are you all up?")
            done = (await client.wait_for("response.done", 120))["response"]
            assert done["status"] == "completed"
            stored = await stored_turns(str(stack.redis_url), client.result.session_id)
        assert_nothing_lost(client.result, stored)
        assert [t.role for t in stored] == ["user", "assistant"]
    finally:
        await asyncio.to_thread(stack.stop)
