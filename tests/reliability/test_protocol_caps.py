"""Scenarios 16 and 17 at the socket's limits: a message over the WebSocket protocol cap is
closed 1009; K protocol errors in a row close 1008. Both write nothing for the session."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets

from services.cli.realtime_client import RealtimeClient
from tests.helpers.redis import RedisServer
from tests.helpers.stack import Stack, running_stack
from tests.reliability.conftest import stored_turns

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.timeout(240)]

WS_MAX_BYTES = 8192
MAX_PROTOCOL_ERRORS = 3


@pytest.fixture
async def stack(tiny_pack: Path, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Stack]:
    limits = {"ws_max_message_bytes": WS_MAX_BYTES, "max_protocol_errors": MAX_PROTOCOL_ERRORS}
    async with running_stack(
        tiny_pack, redis_server.url, tmp_path, controller={"limits": limits}
    ) as running:
        yield running


async def closed_with(client: RealtimeClient) -> websockets.frames.Close:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await client.next_event(60)
    assert closed.value.rcvd is not None, "closed without a close frame"
    return closed.value.rcvd


async def test_16_a_message_over_the_protocol_cap_is_closed_1009(
    stack: Stack, redis_server: RedisServer
) -> None:
    async with RealtimeClient(stack.url) as client:
        await client.ws.send(b"\x00" * (WS_MAX_BYTES + 2))
        assert (await closed_with(client)).code == 1009
    assert await stored_turns(redis_server.url, client.result.session_id) == []


async def test_17_protocol_errors_in_a_row_close_1008(
    stack: Stack, redis_server: RedisServer
) -> None:
    async with RealtimeClient(stack.url) as client:
        for _ in range(MAX_PROTOCOL_ERRORS + 1):
            await client.ws.send("{not json")
        close = await closed_with(client)
        codes = [e["error"]["code"] for e in client.result.of_type("error")]
    assert close.code == 1008 and close.reason == "too many protocol errors"
    # the last error may still be queued when the socket closes
    assert set(codes) == {"invalid_json"} and len(codes) >= MAX_PROTOCOL_ERRORS
    assert await stored_turns(redis_server.url, client.result.session_id) == []


async def test_17_a_good_event_resets_the_count(stack: Stack) -> None:
    async with RealtimeClient(stack.url) as client:
        for _ in range(3):  # errors up to the limit, each run broken by a valid event
            for _ in range(MAX_PROTOCOL_ERRORS):
                await client.ws.send(json.dumps({"type": "no.such.event"}))
                assert (await client.wait_for("error"))["error"]["code"] == "unknown_event"
            await client.configure(voice="Tingting")
