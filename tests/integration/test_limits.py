"""Limits before work: admission, body caps, slow clients, parser abuse, names, error shape."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets

from services.cli.realtime_client import RealtimeClient
from tests.helpers.redis import RedisServer
from tests.helpers.stack import Stack, running_stack

pytestmark = pytest.mark.integration
LIMITS = {
    "limits": {"max_sessions": 2, "max_voice_upload_bytes": 64 * 1024},
    "http": {"header_timeout_s": 1.0, "max_header_bytes": 8192, "body_timeout_s": 5.0},
}


@pytest.fixture
async def stack(tiny_pack: Path, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tiny_pack, redis_server.url, tmp_path, controller=LIMITS) as s:
        yield s


def ws_url(stack: Stack) -> str:
    return stack.url.replace("http", "ws") + "/v1/realtime"


async def closed_with(stack: Stack) -> websockets.frames.Close:
    """Connect; the handshake succeeds and the server then closes: its close frame."""
    async with websockets.connect(ws_url(stack)) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 30)
    assert closed.value.rcvd is not None
    return closed.value.rcvd


async def test_over_capacity_and_draining_connects_are_closed_1013_with_a_reason(
    stack: Stack,
) -> None:
    async with RealtimeClient(stack.url), RealtimeClient(stack.url):
        refused = await closed_with(stack)
        assert refused.code == 1013 and refused.reason.startswith("overloaded")
    async with RealtimeClient(stack.url) as client:  # slots come back
        assert client.session["id"]
    async with httpx.AsyncClient(base_url=stack.url) as http:
        assert (await http.post("/admin/drain", timeout=30)).status_code == 200
    refused = await closed_with(stack)
    assert refused.code == 1013 and refused.reason.startswith("draining")


async def test_uploads_over_the_cap_get_413_before_the_body_is_read(stack: Stack) -> None:
    host, port = stack.url.removeprefix("http://").split(":")
    # a declared GiB: refused on the headers alone
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/voices HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 1073741824\r\n\r\n"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    assert head.startswith(b"HTTP/1.1 413")
    writer.close()
    # no length (chunked): the stream is cut once it passes the cap
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/voices HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    part = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n"
    )
    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
    chunk = b"%x\r\n%s\r\n" % (16384, b"\0" * 16384)
    sent = 0
    response = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
    try:
        while not response.done() and sent < 64 * 1024 * 1024:
            try:
                writer.write(chunk)
                await writer.drain()
            except ConnectionError:  # refused and closed: the answer is already buffered
                break
            sent += 16384
            await asyncio.sleep(0)
        head = await asyncio.wait_for(response, 30)
    finally:
        response.cancel()
        writer.close()
    assert head.startswith(b"HTTP/1.1 413")
    assert sent < 8 * 1024 * 1024, "the server read far past the cap before refusing"


async def test_slow_and_oversize_request_heads_are_cut(stack: Stack) -> None:
    host, port = stack.url.removeprefix("http://").split(":")
    slow = []
    for _ in range(20):  # slowloris: a head that never completes
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        slow.append((reader, writer))
    try:
        for reader, _ in slow:  # each is closed after the 1 s head deadline
            assert await asyncio.wait_for(reader.read(), 30) == b""
    finally:
        for _, writer in slow:
            writer.close()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 431")
    async with httpx.AsyncClient(base_url=stack.url) as http:  # normal clients are unaffected
        assert (await http.get("/healthz")).status_code == 200


@pytest.mark.parametrize(
    "message",
    [
        "[" * 100_000,
        "1" * 5000,
        '{"type": ' + "9" * 5000 + "}",
        '{"a": ' * 50_000,
        "[" * 10 + "1" * 5000,
    ],
    ids=["nested", "huge-int", "huge-int-in-event", "nested-objects", "huge-int-nested"],
)
async def test_any_parser_failure_is_invalid_json_and_the_socket_stays(
    stack: Stack, message: str
) -> None:
    async with RealtimeClient(stack.url) as client:
        await client.ws.send(message)
        error = await client.wait_for("error")
        assert error["error"]["code"] in ("invalid_json", "invalid_event")
        await client.configure(voice="Tingting")  # still usable


async def test_voice_names_are_full_matches_and_unknown_voices_are_refused_at_update(
    stack: Stack,
) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as http:
        reply = await http.post(
            "/v1/voices",
            data={"name": "name\n", "text": "hello"},
            files={"file": ("a.wav", b"RIFF0000WAVE", "audio/wav")},
        )
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["code"] in ("invalid_argument", "invalid_audio")
        reply = await http.delete("/v1/voices/name%0A")
        assert reply.status_code in (400, 404) and "error" in reply.json()
    async with RealtimeClient(stack.url) as client:
        for voice in ("nobody", "../../etc/passwd", "Tingting\n"):
            await client.send({"type": "session.update", "session": {"voice": voice}})
            error = await client.wait_for("error")
            assert error["error"]["code"] == "unknown_voice", voice
        updated = await client.configure(speculative=False)
        assert updated["session"]["voice"] == "Tingting"


async def test_framework_errors_have_the_documented_shape(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as http:
        for method, path, status, code in [
            ("GET", "/v1/nothing", 404, "not_found"),
            ("GET", "/nothing.js", 404, "not_found"),
            ("PUT", "/v1/audio/speech", 405, "method_not_allowed"),
            ("POST", "/v1/audio/speech", 400, "invalid_argument"),
        ]:
            reply = await http.request(method, path)
            assert reply.status_code == status, (method, path)
            body = reply.json()
            assert set(body) == {"error"} and body["error"]["code"] == code
            assert body["error"]["message"]


async def test_idle_sockets_are_closed(
    tiny_pack: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    settings = {"limits": {"idle_timeout_s": 1, "max_sessions": 1}}
    async with running_stack(tiny_pack, redis_server.url, tmp_path, controller=settings) as s:
        async with websockets.connect(ws_url(s)) as idle:
            assert json.loads(await idle.recv())["type"] == "session.created"
            started = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(idle.recv(), 30)
            assert closed.value.rcvd.code == 1000 and closed.value.rcvd.reason == "idle"
        deadline = time.monotonic() + 30
        while True:  # the one slot is free again for someone else
            try:
                async with RealtimeClient(s.url) as client:
                    assert client.session["id"]
                    break
            except (websockets.ConnectionClosed, KeyError):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        assert time.monotonic() - started < 30


async def test_without_keys_a_cross_site_request_still_cannot_drain(stack: Stack) -> None:
    """The probe: a text/plain POST from a foreign page on the same machine drained it."""
    async with httpx.AsyncClient(base_url=stack.url) as http:
        for headers in (
            {"Content-Type": "text/plain", "Origin": "https://evil.example"},
            {"Content-Type": "text/plain"},
            {"Content-Type": "application/x-www-form-urlencoded"},
            {"Origin": "https://evil.example"},
        ):
            reply = await http.post("/admin/drain", headers=headers, content=b"x")
            assert reply.status_code == 403, headers
            assert reply.json()["error"]["code"] == "permission_denied"
        assert (await http.get("/readyz")).json()["draining"] is False
