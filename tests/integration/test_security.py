"""Keys, roles, Origins, quotas and admission on the in-process stack with auth on."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import websockets

from services.cli.realtime_client import RealtimeClient
from services.controller.auth import key_entry, new_api_key
from services.controller.store import create_redis
from tests.helpers.redis import RedisServer
from tests.helpers.stack import Stack, running_stack

pytestmark = pytest.mark.integration

USER, ADMIN, METRICS, OTHER = new_api_key(), new_api_key(), new_api_key(), new_api_key()
EVIL = "https://evil.example"
APP = "https://app.example"  # the allow-listed browser app


def keys(**user_limits: Any) -> str:
    user = key_entry("alice", USER) | user_limits
    others = [key_entry("ops", ADMIN, "admin"), key_entry("prom", METRICS, "metrics")]
    return json.dumps([user, *others, key_entry("bob", OTHER)])


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def secure(
    tiny_pack: Path, own_redis: RedisServer, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Stack]:
    limits = getattr(request, "param", {})
    auth_settings = {"enabled": True, "keys": keys(**limits), "metrics_key": True}
    settings = {"auth": auth_settings | {"allowed_origins": APP}}
    async with running_stack(tiny_pack, own_redis.url, tmp_path, controller=settings) as s:
        yield s


def ws_url(stack: Stack) -> str:
    return stack.url.replace("http", "ws") + "/v1/realtime"


async def session_keys(redis_url: str) -> set[bytes]:
    client = create_redis(redis_url)
    try:
        return set(await client.keys("sa:{*}:meta"))
    finally:
        await client.aclose()


async def test_every_endpoint_needs_the_right_key(secure: Stack) -> None:
    async with httpx.AsyncClient(base_url=secure.url, timeout=60) as http:
        for method, path in [("GET", "/v1/voices"), ("POST", "/v1/audio/speech"),
                             ("POST", "/v1/realtime/client_secrets"), ("POST", "/admin/drain"),
                             ("GET", "/metrics")]:  # fmt: skip
            for headers in ({}, auth("sa-wrong"), {"Authorization": "Basic eDp5"}):
                reply = await http.request(method, path, headers=headers)
                assert reply.status_code == 401, (method, path, headers)
                assert reply.json()["error"]["code"] == "unauthenticated"
                assert reply.headers["www-authenticate"] == "Bearer"
        assert (await http.get("/v1/voices", headers=auth(USER))).status_code == 200
        assert (await http.get("/metrics", headers=auth(METRICS))).status_code == 200
        refused = secure.metric(
            "controller", "stepaudio_controller_errors_total", code="unauthenticated"
        )
        assert refused == 15  # 5 endpoints x 3 bad credentials, counted for alerting
        assert (await http.get("/metrics", headers=auth(USER))).status_code == 403
        assert (await http.get("/v1/voices", headers=auth(METRICS))).status_code == 403
        denied = await http.post("/admin/drain", headers=auth(USER))
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "permission_denied"
        # probes stay open and say nothing secret
        assert (await http.get("/healthz")).status_code == 200
        # an admin key, but a cross-site form post or a foreign Origin: refused, not drained
        for headers in ({"Content-Type": "text/plain"}, {"Origin": EVIL}):
            reply = await http.post("/admin/drain", headers=auth(ADMIN) | headers)
            assert reply.status_code == 403
        assert (await http.get("/readyz")).json()["draining"] is False
        assert (await http.post("/admin/drain", headers=auth(ADMIN))).status_code == 200


async def test_realtime_socket_needs_a_key_and_writes_nothing_without_one(
    secure: Stack, own_redis: RedisServer
) -> None:
    before = await session_keys(own_redis.url)
    for headers in ({}, auth("sa-wrong"), auth(USER) | {"Origin": EVIL}):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(ws_url(secure), additional_headers=headers):
                pass
        status = refused.value.response.status_code
        assert status == (403 if "Origin" in headers else 401)
        assert json.loads(refused.value.response.body)["error"]["code"] in (
            "unauthenticated", "permission_denied",
        )  # fmt: skip
    assert await session_keys(own_redis.url) == before
    async with RealtimeClient(secure.url, api_key=USER) as client:
        assert client.session["id"]


async def test_client_secret_from_the_openai_sdk_opens_the_socket_from_a_browser(
    secure: Stack,
) -> None:
    sdk = openai.AsyncOpenAI(base_url=secure.url + "/v1", api_key=USER)
    secret = await sdk.realtime.client_secrets.create(expires_after={"seconds": 60})
    assert secret.value.startswith("ek_") and secret.expires_at > time.time() + 50
    own_origin = secure.url  # the browser client served by this controller
    async with websockets.connect(
        ws_url(secure),
        subprotocols=["realtime", f"openai-insecure-api-key.{secret.value}"],
        origin=own_origin,
    ) as ws:
        assert ws.subprotocol == "realtime"
        assert json.loads(await ws.recv())["type"] == "session.created"
    async with httpx.AsyncClient(base_url=secure.url) as http:  # realtime sockets only
        assert (await http.get("/v1/voices", headers=auth(secret.value))).status_code == 401
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(
            ws_url(secure), subprotocols=["realtime", "openai-insecure-api-key.ek_forged"]
        ):
            pass


@pytest.mark.parametrize("secure", [{"max_sessions": 1}], indirect=True)
async def test_per_key_session_cap_closes_with_1013_and_frees_on_close(secure: Stack) -> None:
    async with RealtimeClient(secure.url, api_key=USER):
        async with websockets.connect(ws_url(secure), additional_headers=auth(USER)) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 30)
        assert closed.value.rcvd.code == 1013 and closed.value.rcvd.reason.startswith(
            "key_sessions"
        )
    async with RealtimeClient(secure.url, api_key=USER) as again:  # the slot was freed
        assert again.session["id"]
    rejected = secure.metric(
        "controller", "stepaudio_controller_sessions_rejected_total", reason="key_sessions"
    )
    assert rejected == 1


@pytest.mark.parametrize("secure", [{"requests_per_minute": 3}], indirect=True)
async def test_requests_over_the_key_rate_get_429_with_retry_after(secure: Stack) -> None:
    async with httpx.AsyncClient(base_url=secure.url, timeout=60) as http:
        statuses = [
            (await http.get("/v1/voices", headers=auth(USER))).status_code for _ in range(4)
        ]
        assert statuses[:3] == [200, 200, 200]
        if statuses[3] != 429:  # the 3 landed across a minute boundary: one more minute's worth
            statuses = [(await http.get("/v1/voices", headers=auth(USER))).status_code
                        for _ in range(3)]  # fmt: skip
        reply = await http.get("/v1/voices", headers=auth(USER))
        assert reply.status_code == 429 and 1 <= int(reply.headers["retry-after"]) <= 60
        assert reply.json()["error"]["code"] == "rate_limited"
        # another key is not affected
        assert (await http.get("/metrics", headers=auth(METRICS))).status_code == 200


async def test_repeated_bad_keys_from_one_address_get_429(secure: Stack) -> None:
    async with httpx.AsyncClient(base_url=secure.url) as http:
        statuses = [
            (await http.get("/v1/voices", headers=auth(f"sa-guess{i}"))).status_code
            for i in range(31)
        ]
        assert statuses[0] == 401 and statuses[-1] == 429
        # even the right key waits out the minute from that address
        assert (await http.get("/v1/voices", headers=auth(USER))).status_code == 429


@pytest.mark.parametrize("secure", [{"audio_minutes_per_day": 0.01}], indirect=True)
async def test_daily_audio_quota_refuses_the_next_session(secure: Stack) -> None:
    async with RealtimeClient(secure.url, api_key=USER) as client:  # 1 s of audio > 0.6 s
        await client.stream_audio(np.zeros(16_000, dtype=np.float32), 16_000, realtime=False)
        await client.configure(voice="Tingting")  # every frame was read before we leave
    deadline = time.monotonic() + 30
    while True:  # the quota is metered when the session ends
        async with websockets.connect(ws_url(secure), additional_headers=auth(USER)) as ws:
            try:
                first = await asyncio.wait_for(ws.recv(), 30)
            except websockets.ConnectionClosed as closed:
                assert closed.rcvd.code == 1008 and closed.rcvd.reason.startswith("quota")
                return
        assert json.loads(first)["type"] == "session.created"
        assert time.monotonic() < deadline, "the used quota never refused a session"
        await asyncio.sleep(0.2)


async def test_a_session_resumes_only_with_the_key_that_created_it(secure: Stack) -> None:
    async with RealtimeClient(secure.url, api_key=USER) as client:
        session_id = client.session["id"]
    url = f"{ws_url(secure)}?session_id={session_id}"
    async with websockets.connect(url, additional_headers=auth(OTHER)) as ws:
        first, created = json.loads(await ws.recv()), json.loads(await ws.recv())
    assert first["error"]["code"] == "session_expired"
    assert created["resumed"] is False and created["session"]["id"] != session_id
    async with RealtimeClient(secure.url, api_key=USER, session_id=session_id) as again:
        assert again.session["id"] == session_id


@pytest.mark.parametrize("secure", [{"audio_minutes_per_day": 0.001}], indirect=True)
async def test_rest_synthesis_counts_against_the_daily_audio_quota(secure: Stack) -> None:
    body = {"input": "Hello there.", "response_format": "pcm", "seed": 1}
    async with httpx.AsyncClient(base_url=secure.url, timeout=120) as http:
        first = await http.post("/v1/audio/speech", json=body, headers=auth(USER))
        assert first.status_code == 200 and len(first.content) > 0.06 * 24_000 * 2
        deadline = time.monotonic() + 30
        while True:  # metered when the stream ends
            reply = await http.post("/v1/audio/speech", json=body, headers=auth(USER))
            if reply.status_code == 429:
                break
            assert reply.status_code == 200 and time.monotonic() < deadline
            await asyncio.sleep(0.2)
        assert reply.json()["error"]["code"] == "rate_limited"


async def test_allowed_origins_get_cors_and_the_socket_others_do_not(secure: Stack) -> None:
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
    async with httpx.AsyncClient(base_url=secure.url) as http:
        ok = await http.options("/v1/audio/speech", headers=preflight | {"Origin": APP})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == APP
        bad = await http.options("/v1/audio/speech", headers=preflight | {"Origin": EVIL})
        assert "access-control-allow-origin" not in bad.headers
        reply = await http.get("/v1/voices", headers=auth(USER) | {"Origin": APP})
        assert reply.status_code == 200 and reply.headers["access-control-allow-origin"] == APP
    async with websockets.connect(ws_url(secure), additional_headers=auth(USER), origin=APP) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"


@pytest.mark.parametrize("secure", [{"audio_minutes_per_day": 0.01}], indirect=True)
async def test_a_session_past_the_daily_audio_quota_is_closed_1008(secure: Stack) -> None:
    async with RealtimeClient(secure.url, api_key=USER) as client:
        await client.stream_audio(np.zeros(32_000, dtype=np.float32), 16_000, realtime=False)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:  # metered every 10 s while the session lives
                await client.next_event(60)
    assert closed.value.rcvd.code == 1008 and closed.value.rcvd.reason.startswith("quota")
