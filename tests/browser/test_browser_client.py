"""The browser client end to end: headless Chromium, a fake microphone, the whole tiny stack.

Chromium's fake capture device plays a WAV (the demo question, then silence) into
getUserMedia; the page captures it with an AudioWorklet, sends 16 kHz PCM16 frames to
/v1/realtime, and schedules the reply audio with Web Audio. The test reads ``window.__stats``
over the DevTools protocol. With auth on, the page gets a client secret (pasted, or minted
from an API key typed into it) and opens the socket with it, as a deployment would.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.controller.app import STATIC_DIR
from services.controller.auth import hash_key, key_entry, new_api_key
from services.controller.store import create_redis
from tests.helpers.browser import (
    Browser,
    Page,
    fake_microphone_wav,
    find_chromium,
    launch_chromium,
)
from tests.helpers.redis import RedisServer
from tests.helpers.stack import Stack, running_stack
from tests.helpers.waits import eventually

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

DEMO = Path(__file__).parents[2] / "services/models/tiny/assets/demo_question.wav"
REPLY_TIMEOUT_S = 45.0
OUTPUT_RATE_HZ = 24_000


@pytest.fixture
def chromium_binary() -> str:
    binary = find_chromium()
    if binary is None:
        pytest.fail(
            "Chromium not found: install Debian's chromium (apt-get install -y chromium) "
            "or set CHROMIUM=/path/to/chrome; the browser tests need it"
        )
    return binary


# the tiny random TTS LM may sample EOS first and answer a clause with no audio (a loaded run
# saw a completed reply with none); ignoring EOS up to a short cap makes every clause speak
ALWAYS_AUDIO = {"ignore_eos": True, "max_audio_tokens": 40}


@pytest.fixture
async def stack(tiny_pack: Path, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(
        tiny_pack, redis_server.url, tmp_path / "stack", tts=ALWAYS_AUDIO
    ) as s:
        yield s


async def stats(page: Page) -> dict[str, Any]:
    value = await page.evaluate("window.__stats")
    assert isinstance(value, dict)
    return value


async def wait_or_explain(browser: Browser, page: Page, expression: str, timeout_s: float) -> None:
    """wait_for, failing with what the page knows (stats, console, Chromium's log)."""
    try:
        await page.wait_for(expression, timeout_s)
    except TimeoutError as exc:
        console = "\n".join(page.console()[-20:])
        pytest.fail(
            f"{exc}\nwindow.__stats = {await stats(page)}\nconsole:\n{console}\n"
            f"chromium log:\n{browser.log_tail()}"
        )


async def test_voice_turn_through_fake_microphone(
    stack: Stack, chromium_binary: str, tmp_path: Path
) -> None:
    mic = fake_microphone_wav(DEMO, tmp_path / "mic.wav", silence_s=4.0, rate_hz=48_000)
    chromium = launch_chromium(chromium_binary, tmp_path / "chromium", fake_microphone=mic)
    async with chromium as browser:
        page = await browser.new_page(stack.url)
        await page.click("#connect")  # the buttons, clicked like a user would
        result = await speak_a_turn(browser, page)
        reply_text = await page.evaluate("document.querySelector('#log .assistant').textContent")
        user_text = await page.evaluate("document.querySelector('#log .user .text').textContent")
        latency = await page.evaluate("document.getElementById('latency').textContent")
        auth_hidden = await page.evaluate("document.getElementById('auth').hidden")

    assert result["errors"] == [], result["errors"]
    assert result["authRequired"] is False and auth_hidden  # auth off: no prompt
    assert result["socketAuth"] == "none" and result["voicesListed"]
    assert result["captureMode"] == "worklet"
    assert result["framesSent"] > 100  # 20 ms frames of the 3.4 s question and its silence
    assert result["speechStarted"] >= 1
    response = result["lastResponse"]
    assert response["status"] == "completed", response
    assert result["responsesDone"] == 1
    assert result["audioChunks"] > 0, (result, reply_text)
    # every sample the server says it sent reached the page and was scheduled for playback
    received_s = result["audioSamples"] / OUTPUT_RATE_HZ
    assert received_s == pytest.approx(response["audio_seconds"], abs=0.01)
    assert result["scheduledSeconds"] == pytest.approx(received_s, abs=0.01)
    assert result["contextState"] == "running"
    assert "first_audio" in result["lastTimings"]
    assert latency.endswith(" ms"), latency
    assert reply_text.strip()  # the streamed reply text is shown...
    assert user_text == (result["transcripts"][0] or "(no words)")  # ...and the transcript
    assert stack.metric("controller", "stepaudio_controller_responses_total", status="completed")


@pytest.fixture
async def long_reply_stack(
    monkeypatch: pytest.MonkeyPatch, tiny_pack: Path, redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[Stack]:
    """Every TTS clause lasts 6 s (the tiny TTS LM ignores EOS): a reply is still playing."""
    monkeypatch.setenv("TTS_IGNORE_EOS", "true")
    monkeypatch.setenv("TTS_MAX_AUDIO_TOKENS", "250")  # 41.67 ids/s
    async with running_stack(tiny_pack, redis_server.url, tmp_path / "stack") as running:
        yield running


async def test_speaking_over_a_reply_flushes_its_playback(
    long_reply_stack: Stack, chromium_binary: str, tmp_path: Path
) -> None:
    """The looping fake microphone asks again 2.5 s after each question: a barge-in."""
    mic = fake_microphone_wav(DEMO, tmp_path / "mic.wav", silence_s=2.5, rate_hz=16_000)
    chromium = launch_chromium(
        chromium_binary, tmp_path / "chromium", fake_microphone=mic, loop_audio=True
    )
    async with chromium as browser:
        page = await browser.new_page(f"{long_reply_stack.url}/?autostart=1&transport=binary")
        # scheduled reply audio was cut off by speech, and that reply ended as cancelled
        barge_in = (
            "window.__stats.flushedSources > 0 && window.__stats.lastResponse"
            " && window.__stats.lastResponse.status === 'cancelled'"
        )
        await wait_or_explain(browser, page, barge_in, REPLY_TIMEOUT_S)
        result = await stats(page)

    assert result["errors"] == [], result["errors"]
    assert result["speechStarted"] >= 2
    # no audio of the interrupted reply arrived after speech_started (the server drops it)
    assert result["ignoredChunks"] == 0, result
    # (not asserted: how much of the 6 s clause went out. The controller paces whole TTS
    # chunks, up to ~3 s each, so it can run seconds ahead of the documented 400 ms lead.)
    cancelled = long_reply_stack.metric(
        "controller", "stepaudio_controller_responses_total", status="cancelled"
    )
    assert cancelled >= 1


async def test_push_to_talk(stack: Stack, chromium_binary: str, tmp_path: Path) -> None:
    """turn_detection none: audio only while the button is held, commit + response.create."""
    mic = fake_microphone_wav(DEMO, tmp_path / "mic.wav", silence_s=1.0, rate_hz=48_000)
    chromium = launch_chromium(
        chromium_binary, tmp_path / "chromium", fake_microphone=mic, loop_audio=True
    )
    async with chromium as browser:
        page = await browser.new_page(f"{stack.url}/?autostart=1&ptt=1")
        ready = "window.__stats.micRunning && !document.getElementById('talk').hidden"
        await wait_or_explain(browser, page, ready, 15)
        before = (await stats(page))["framesSent"]
        assert before == 0  # nothing is sent while the button is up
        started = time.monotonic()
        await page.evaluate("startTalking()")
        await asyncio.sleep(4.5)  # one whole loop of the question
        await page.evaluate("stopTalking()")
        held_s = time.monotonic() - started
        await wait_or_explain(browser, page, "window.__stats.responsesDone > 0", REPLY_TIMEOUT_S)
        result = await stats(page)
        await asyncio.sleep(0.5)
        frames_after = (await stats(page))["framesSent"]

    assert result["errors"] == [], result["errors"]
    assert result["speechStarted"] == 0  # no server VAD in push-to-talk
    assert result["events"]["input_audio_buffer.committed"] == 1
    assert result["lastResponse"]["status"] == "completed"
    assert result["audioChunks"] > 0
    # 20 ms frames only while the button was held (≥ 4.5 s), none after
    assert 4.4 / 0.02 <= result["framesSent"] <= held_s / 0.02 + 5, (result, held_s)
    assert frames_after == result["framesSent"]


async def speak_a_turn(browser: Browser, page: Page) -> dict[str, Any]:
    """The microphone button, then one answered turn and its transcript; the page's stats."""
    await page.click("#mic")
    await wait_or_explain(browser, page, "window.__stats.responsesDone > 0", REPLY_TIMEOUT_S)
    # the transcript of the user's turn is produced off the critical path: allow a moment
    await wait_or_explain(browser, page, "window.__stats.transcripts.length > 0", 15)
    return await stats(page)


# -- auth on -------------------------------------------------------------------------------

USER_KEY = new_api_key()


@pytest.fixture
async def secure_stack(
    tiny_pack: Path, own_redis: RedisServer, tmp_path: Path
) -> AsyncIterator[Stack]:
    """Auth on, one user key. The page's own origin needs no CONTROLLER_AUTH__ALLOWED_ORIGINS
    entry: an Origin whose host:port is the Host header is the controller's own."""
    keys = json.dumps([key_entry("browser", USER_KEY)])
    settings = {"auth": {"enabled": True, "keys": keys}}
    async with running_stack(
        tiny_pack, own_redis.url, tmp_path / "stack", controller=settings, tts=ALWAYS_AUDIO
    ) as s:
        yield s


async def minted_secrets(redis_url: str) -> list[Any]:
    """The owners (key ids) of the client secrets in Redis."""
    client = create_redis(redis_url)
    try:
        return [await client.get(key) for key in await client.keys("sa:secret:*")]
    finally:
        await client.aclose()


async def redis_gone(redis: Any, key: str) -> bool:
    return not await redis.exists(key)


def refused_401(stack: Stack) -> float:
    return stack.metric("controller", "stepaudio_controller_errors_total", code="unauthenticated")


async def test_the_page_is_public_and_holds_no_secret(secure_stack: Stack) -> None:
    """The page and its files load without a key, exactly as they are in the repository."""
    async with httpx.AsyncClient(base_url=secure_stack.url, timeout=30) as http:
        for path, name in [("/", "index.html"), ("/index.html", "index.html"),
                           ("/app.js", "app.js"), ("/style.css", "style.css")]:  # fmt: skip
            reply = await http.get(path)
            assert reply.status_code == 200, path
            assert reply.content == (STATIC_DIR / name).read_bytes(), path
        assert (await http.get("/v1/voices")).status_code == 401  # the API itself is not
    # static files only: nothing of the configuration (keys, their hashes) is templated in
    assert sorted(p.name for p in STATIC_DIR.iterdir()) == ["app.js", "index.html", "style.css"]
    served = b"".join(p.read_bytes() for p in STATIC_DIR.iterdir())
    assert USER_KEY.encode() not in served and hash_key(USER_KEY).encode() not in served


async def test_an_api_key_typed_in_mints_a_client_secret_for_a_spoken_exchange(
    secure_stack: Stack, own_redis: RedisServer, chromium_binary: str, tmp_path: Path
) -> None:
    mic = fake_microphone_wav(DEMO, tmp_path / "mic.wav", silence_s=4.0, rate_hz=48_000)
    chromium = launch_chromium(chromium_binary, tmp_path / "chromium", fake_microphone=mic)
    async with chromium as browser:
        page = await browser.new_page(secure_stack.url)
        # the page learns from the 401 of its first call that a key is needed, and asks
        await wait_or_explain(browser, page, "window.__stats.authRequired === true", 15)
        assert not await page.evaluate("document.getElementById('auth').hidden")
        assert not await page.evaluate("document.getElementById('voice-note').hidden")

        # a wrong key: the mint is refused, the page says so and opens no socket
        await page.fill("#api-key", "sa-wrong-key")
        await page.click("#connect")
        await wait_or_explain(browser, page, "window.__stats.errors.length > 0", 15)
        wrong = await stats(page)
        assert wrong["errors"][0]["code"] == "unauthenticated", wrong["errors"]
        assert "API key was refused" in wrong["errors"][0]["message"]
        assert wrong["socketAttempts"] == 0 and wrong["secretsMinted"] == 0
        assert not wrong["connected"]
        shown = await page.evaluate("document.getElementById('auth-status').textContent")
        assert "API key was refused" in shown
        assert await page.evaluate("!document.getElementById('connect').disabled")

        # the right key: a client secret is minted and opens the socket; then a spoken turn
        await page.fill("#api-key", USER_KEY)
        await page.click("#connect")
        await wait_or_explain(browser, page, "window.__stats.connected", 15)
        result = await speak_a_turn(browser, page)
        shown = await page.evaluate("document.getElementById('auth-status').textContent")
        voices = await page.evaluate("[...document.getElementById('voice').options].length")
        voice_note_hidden = await page.evaluate("document.getElementById('voice-note').hidden")
        stored = await page.evaluate(
            "[localStorage.length, sessionStorage.length, document.cookie, location.href]"
        )

    assert result["errors"] == wrong["errors"]  # nothing after the wrong key
    assert result["secretsMinted"] == 1 and result["socketAttempts"] == 1
    assert result["socketAuth"] == "client_secret"
    assert shown == "connected with a client secret (minted from the API key)"
    assert result["lastResponse"]["status"] == "completed"
    assert result["audioChunks"] > 0 and result["speechStarted"] >= 1, result
    # with the key in hand the page lists the voices (a client secret could not)
    assert result["voicesListed"] and voices > 1 and voice_note_hidden
    # the key stayed in the page's memory: no storage, no cookie, not in the address
    assert stored[:3] == [0, 0, ""] and USER_KEY not in stored[3]
    assert USER_KEY not in json.dumps(result)
    assert await minted_secrets(own_redis.url) == [b"browser"]  # one secret, for this key
    assert refused_401(secure_stack) == 2  # the page's keyless first call, the wrong key


async def test_a_pasted_client_secret_opens_the_socket_and_bad_ones_are_shown(
    secure_stack: Stack, own_redis: RedisServer, chromium_binary: str, tmp_path: Path
) -> None:
    """The production flow: the deployment's backend mints the secret and hands it over."""
    async with httpx.AsyncClient(base_url=secure_stack.url, timeout=30) as backend:
        headers = {"Authorization": f"Bearer {USER_KEY}"}
        endpoint = "/v1/realtime/client_secrets"
        short = await backend.post(
            endpoint, headers=headers, json={"expires_after": {"seconds": 10}}
        )
        good = await backend.post(endpoint, headers=headers)
    assert short.status_code == good.status_code == 200
    chromium = launch_chromium(chromium_binary, tmp_path / "chromium")
    async with chromium as browser:
        page = await browser.new_page(secure_stack.url)
        await wait_or_explain(browser, page, "window.__stats.authRequired === true", 15)

        # a forged secret: the handshake is refused (401), the page explains and stays closed
        await page.fill("#secret", "ek_" + "x" * 43)
        await page.click("#connect")
        await wait_or_explain(browser, page, "window.__stats.errors.length >= 1", 15)
        forged = (await stats(page))["errors"][0]
        assert forged["code"] == "unauthenticated", forged
        assert "refused the client secret" in forged["message"]

        # an expired one: the server refuses it the same way
        secret_key = f"sa:secret:{hash_key(short.json()['value'])}"
        redis = create_redis(own_redis.url)
        try:
            await eventually(lambda: redis_gone(redis, secret_key), 20, "the secret expired")
        finally:
            await redis.aclose()
        await page.fill("#secret", short.json()["value"])
        await page.click("#connect")
        await wait_or_explain(browser, page, "window.__stats.errors.length >= 2", 15)
        expired = (await stats(page))["errors"][1]
        assert expired["code"] == "unauthenticated", expired
        # pasted with its expires_at (the whole reply), the page knows before trying
        await page.fill("#secret", short.text)
        await page.click("#connect")
        await wait_or_explain(browser, page, "window.__stats.errors.length >= 3", 15)
        known = await stats(page)
        assert known["errors"][2]["code"] == "client_secret_expired", known["errors"]
        assert known["socketAttempts"] == 2 and not known["connected"]

        # a valid secret (the whole JSON reply): connected; a typed turn gets its reply
        await page.fill("#secret", good.text)
        await page.click("#connect")
        await wait_or_explain(browser, page, "window.__stats.connected", 15)
        await page.fill("#text", "hello")
        await page.click("#text-form button")
        await wait_or_explain(browser, page, "window.__stats.responsesDone > 0", REPLY_TIMEOUT_S)
        result = await stats(page)
        shown = await page.evaluate("document.getElementById('auth-status').textContent")
        note = await page.evaluate(
            "document.getElementById('voice-note').hidden ? ''"
            " : document.getElementById('voice-note').textContent"
        )

    assert len(result["errors"]) == 3, result["errors"]
    assert result["socketAttempts"] == 3 and result["secretsMinted"] == 0
    assert result["socketAuth"] == "client_secret"
    assert shown == "connected with a client secret (pasted)"
    assert result["lastResponse"]["status"] == "completed"
    # a client secret cannot list voices: said on the page, the server default is used
    assert not result["voicesListed"] and "needs an API key" in note
    assert refused_401(secure_stack) == 3  # the keyless first call, the forged, the expired
