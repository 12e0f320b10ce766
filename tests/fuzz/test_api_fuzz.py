"""Schema-driven fuzzing of the running controller, with a bounded budget: schemathesis over
its OpenAPI (no 5xx, errors in the documented shape) and hypothesis over realtime events (a
named error at most, never a dropped socket)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from services.common.errors import ErrorCode
from services.controller.protocol import CLIENT_EVENT_TYPES
from tests.helpers.redis import RedisServer
from tests.helpers.stack import Stack, running_stack

pytestmark = [pytest.mark.fuzz, pytest.mark.integration, pytest.mark.timeout(400)]
BUDGET = settings(
    max_examples=25,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
KNOWN_CODES = {str(code) for code in ErrorCode}


@pytest.fixture
async def stack(tiny_pack: Path, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Stack]:
    short = {"max_audio_tokens": 10}  # many syntheses: keep each short
    async with running_stack(tiny_pack, redis_server.url, tmp_path, tts=short) as running:
        yield running


def fuzz_openapi(raw_schema: dict[str, Any], base_url: str) -> tuple[list[str], set[str]]:
    """Every operation but /admin (it would drain the stack under test): the problems found
    and the operations called."""
    problems: list[str] = []
    called: set[str] = set()
    schema = schemathesis.openapi.from_dict(raw_schema).exclude(path_regex="^/admin")
    for result in schema.get_all_operations():
        operation = result.ok()

        @BUDGET
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            response = case.call(base_url=base_url, timeout=60)
            called.add(f"{case.method} {case.path}")
            where = f"{case.method} {case.formatted_path} -> {response.status_code}"
            if response.status_code >= 500:
                problems.append(f"{where}: {response.text[:200]}")
            elif response.status_code >= 400:
                body = response.json()
                if set(body) != {"error"} or body["error"].get("code") not in KNOWN_CODES:
                    problems.append(f"{where}: not the documented error shape: {body}")

        check()
    return problems, called


async def test_openapi_fuzz_finds_no_server_error_and_one_error_shape(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as http:
        raw = (await http.get("/openapi.json")).json()
    problems, called = await asyncio.to_thread(fuzz_openapi, raw, stack.url)
    assert not problems, "\n".join(problems[:20])
    assert {
        "POST /v1/audio/speech",
        "POST /v1/voices",
        "POST /v1/realtime/client_secrets",
    } <= called


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# response.create is left out: a reply would make every example slow, not the parser stronger
event_types = st.sampled_from(sorted(CLIENT_EVENT_TYPES - {"response.create"}) + ["nope", ""])
events = st.one_of(
    st.builds(
        lambda kind, fields: json.dumps({"type": kind, **fields}),
        event_types,
        st.dictionaries(
            st.sampled_from(["session", "audio", "item", "event_id", "x"]), json_values
        ),
    ),
    json_values.map(json.dumps),
    st.text(max_size=100),
    st.binary(max_size=600),
)
SENTINEL = json.dumps({"type": "session.update", "session": {"speculative": False}})


def fuzz_socket(url: str) -> tuple[list[str], int]:
    problems: list[str] = []
    sent = 0
    with connect(url, max_size=None) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"

        @BUDGET
        @given(message=events)
        def check(message: str | bytes) -> None:
            nonlocal sent
            sent += 1
            ws.send(message)
            ws.send(SENTINEL)  # answered in order: the socket is alive and reading
            while True:
                reply = ws.recv(timeout=30)
                if isinstance(reply, bytes):
                    continue
                event = json.loads(reply)
                if event["type"] == "error" and event["error"]["code"] not in KNOWN_CODES:
                    problems.append(f"{message!r:.80}: unnamed error {event}")
                if event["type"] == "session.updated":
                    return

        check()
    return problems, sent


async def test_realtime_event_fuzz_gets_named_errors_and_keeps_the_socket(stack: Stack) -> None:
    url = stack.url.replace("http", "ws") + "/v1/realtime"
    problems, sent = await asyncio.to_thread(fuzz_socket, url)
    assert not problems, "\n".join(problems[:20])
    assert sent >= 20
