"""Scenario 23: time caps.

A user turn longer than ``max_turn_s`` (a stuck push-to-talk button, a microphone left open)
ends cleanly: the client is told ``turn_too_long``, the audio so far is committed as a turn,
stored and answered, and the session goes on.

A session longer than ``max_session_s`` ends cleanly: the reply in progress may finish (within
``drain_timeout_s``, else it is cancelled), then ``session_too_long`` and close 1008; its
context is stored and the client resumes it by id."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets

from services.cli.realtime_client import RealtimeClient, TurnResult
from services.common.audio import decode_audio_file
from services.models.tiny import ASSETS
from tests.helpers.redis import RedisServer
from tests.helpers.stack import Stack, running_stack
from tests.helpers.waits import eventually
from tests.reliability.conftest import TEXT_SESSION, ask, assert_nothing_lost, stored_turns

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.timeout(240)]

QUESTION, QUESTION_RATE = decode_audio_file(ASSETS / "demo_question.wav")  # 3.4 s
MAX_TURN_S = 2  # the clip is longer; what is left after the cap (1.4 s) is not
ERRORS = "stepaudio_controller_errors_total"


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


# -- the session-length cap -----------------------------------------------------------------

MAX_SESSION_S = 2
# every clause speaks for seconds (the TTS LM runs to 250 audio ids): a reply asked for at the
# start of the session is still in flight when the cap strikes
LONG_CLAUSES = {"ignore_eos": True, "max_audio_tokens": 250}


async def read_to_the_end(client: RealtimeClient) -> websockets.ConnectionClosed:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await client.next_event(120)
    return closed.value


def types_after(result: TurnResult, kind: str) -> list[str]:
    """The event types from the first ``kind`` on, without audio and transcript deltas."""
    types = [e["type"] for e in result.events if not e["type"].endswith(".delta")]
    return types[types.index(kind) :]


async def test_23_session_past_the_cap_finishes_its_reply_then_closes_session_too_long(
    tiny_pack: Path, redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    controller = {
        "limits": {"max_session_s": MAX_SESSION_S, "drain_timeout_s": 300},
        "turn": {"seed": 7, "max_reply_tokens": 16},
    }
    caplog.set_level(logging.INFO, logger="services.controller.session")
    async with (
        running_stack(
            tiny_pack, redis_server.url, tmp_path, controller=controller, tts=LONG_CLAUSES
        ) as stack,
        RealtimeClient(stack.url) as client,
    ):
        await client.configure(**TEXT_SESSION)
        await ask(client, "Hello?")
        await client.wait_for("response.created")
        closed = await read_to_the_end(client)
        session_id = client.result.session_id
        stored = await stored_turns(redis_server.url, session_id)
        assert "waiting for the reply in progress" in caplog.text  # it was, at the cap
        # the reply in progress finished, then the client was told, then the socket closed
        done = client.result.of_type("response.done")
        assert [d["response"]["status"] for d in done] == ["completed"]
        assert types_after(client.result, "response.done") == ["response.done", "error"]
        assert client.result.events[-1]["error"]["code"] == "session_too_long"
        assert closed.rcvd is not None
        assert (closed.rcvd.code, closed.rcvd.reason) == (1008, "session_too_long")
        assert stack.metric("controller", ERRORS, code="session_too_long") == 1
        assert_nothing_lost(client.result, stored)
        assert [t.role for t in stored] == ["user", "assistant"] and not stored[1].interrupted
        async with RealtimeClient(stack.url, session_id=session_id) as resumed:
            assert resumed.session["turns"] == 2  # state saved: the session resumes with it


async def test_23_a_reply_past_the_drain_bound_is_cut_then_the_session_closes(
    tiny_pack: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    controller = {
        "limits": {"max_session_s": MAX_SESSION_S, "drain_timeout_s": 1},
        "turn": {"seed": 7},
    }
    async with (
        running_stack(
            tiny_pack, redis_server.url, tmp_path, controller=controller, tts=LONG_CLAUSES
        ) as stack,
        RealtimeClient(stack.url) as client,
    ):
        # greedy decoding never picks <|EOT|> on the tiny Chat model: a reply that would run
        # for minutes
        await client.configure(**TEXT_SESSION, temperature=0.0, max_response_output_tokens=2048)
        await ask(client, "Tell me a long story.")
        await client.wait_for("response.created")
        closed = await read_to_the_end(client)
        session_id = client.result.session_id
        done = [d["response"] for d in client.result.of_type("response.done")]
        assert [d["status"] for d in done] == ["cancelled"]
        assert done[0]["status_details"]["reason"] == "session_too_long"
        assert types_after(client.result, "response.done") == ["response.done", "error"]
        assert client.result.events[-1]["error"]["code"] == "session_too_long"
        assert closed.rcvd is not None
        assert (closed.rcvd.code, closed.rcvd.reason) == (1008, "session_too_long")
        await eventually(
            lambda: stack.services["llm"].engine.engine.num_running == 0,
            what="the LLM request aborted",
        )
        stored = await stored_turns(redis_server.url, session_id)
    assert_nothing_lost(client.result, stored)
    assert [t.role for t in stored] == ["user", "assistant"] and stored[1].interrupted
