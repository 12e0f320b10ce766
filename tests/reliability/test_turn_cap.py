"""Scenario 23: a user turn longer than ``max_turn_s`` (a stuck push-to-talk button, a
microphone left open) ends cleanly: the client is told ``turn_too_long``, the audio so far is
committed as a turn, stored and answered, and the session goes on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.cli.realtime_client import RealtimeClient
from services.common.audio import decode_audio_file
from services.models.tiny import ASSETS
from tests.helpers.redis import RedisServer
from tests.helpers.stack import Stack, running_stack
from tests.reliability.conftest import assert_nothing_lost, stored_turns

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.timeout(240)]

QUESTION, QUESTION_RATE = decode_audio_file(ASSETS / "demo_question.wav")  # 3.4 s
MAX_TURN_S = 2  # the clip is longer; what is left after the cap (1.4 s) is not


@pytest.fixture
async def stack(tiny_pack: Path, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Stack]:
    controller = {
        "limits": {"max_turn_s": MAX_TURN_S},
        "turn": {"seed": 7, "max_reply_tokens": 16},
    }
    async with running_stack(tiny_pack, redis_server.url, tmp_path, controller=controller) as s:
        yield s


async def test_23_turn_over_the_cap_ends_with_turn_too_long_and_is_kept(
    stack: Stack, redis_server: RedisServer
) -> None:
    assert QUESTION.size / QUESTION_RATE > MAX_TURN_S
    async with RealtimeClient(stack.url) as client:
        await client.configure(turn_detection={"type": "none"}, speculative=False, transcribe=False)
        await client.stream_audio(QUESTION, QUESTION_RATE)  # never committed by the client
        error = await client.wait_for("error", 60)
        assert error["error"]["code"] == "turn_too_long"
        committed = await client.wait_for("input_audio_buffer.committed", 60)
        created = await client.wait_for("conversation.item.created", 60)
        assert created["item"]["id"] == committed["item_id"]
        await client.send({"type": "input_audio_buffer.clear"})  # the rest of the clip
        await client.send({"type": "response.create"})
        done = (await client.wait_for("response.done", 120))["response"]
        assert done["status"] == "completed"
        codes = [e["error"]["code"] for e in client.result.of_type("error")]
        assert codes == ["turn_too_long"]  # once, however many frames came after the cap
        session_id = client.result.session_id
        stored = await stored_turns(redis_server.url, session_id)
    assert_nothing_lost(client.result, stored)
    assert [t.role for t in stored] == ["user", "assistant"]
    assert stored[0].id == committed["item_id"] and stored[0].audio_token_ids
    async with RealtimeClient(stack.url, session_id=session_id) as resumed:
        assert resumed.session["turns"] == 2  # state saved: the session resumes with it
