"""The browser client end to end: headless Chromium, a fake microphone, the whole tiny stack.

Chromium's fake capture device plays a WAV (the demo question, then silence) into
getUserMedia; the page captures it with an AudioWorklet, sends 16 kHz PCM16 frames to
/v1/realtime, and schedules the reply audio with Web Audio. The test reads ``window.__stats``
over the DevTools protocol.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.browser import (
    Browser,
    Page,
    fake_microphone_wav,
    find_chromium,
    launch_chromium,
)
from tests.helpers.redis import RedisServer
from tests.helpers.stack import Stack, running_stack

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


@pytest.fixture
async def stack(tiny_pack: Path, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tiny_pack, redis_server.url, tmp_path / "stack") as running:
        yield running


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
        await page.click("#mic")
        await wait_or_explain(browser, page, "window.__stats.responsesDone > 0", REPLY_TIMEOUT_S)
        # the transcript of the user's turn is produced off the critical path: allow a moment
        await wait_or_explain(browser, page, "window.__stats.transcripts.length > 0", 15)
        result = await stats(page)
        reply_text = await page.evaluate("document.querySelector('#log .assistant').textContent")
        user_text = await page.evaluate("document.querySelector('#log .user .text').textContent")
        latency = await page.evaluate("document.getElementById('latency').textContent")

    assert result["errors"] == [], result["errors"]
    assert result["captureMode"] == "worklet"
    assert result["framesSent"] > 100  # 20 ms frames of the 3.4 s question and its silence
    assert result["speechStarted"] >= 1
    response = result["lastResponse"]
    assert response["status"] == "completed", response
    assert result["responsesDone"] == 1
    assert result["audioChunks"] > 0
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
