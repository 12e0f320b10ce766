"""The realtime socket on the whole in-process stack (tiny pack, real redis-server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets

from services.cli.realtime_client import RealtimeClient
from services.common.audio import decode_audio_file
from services.controller.store import SessionStore, create_redis
from services.models.tiny import ASSETS
from tests.helpers.redis import RedisServer
from tests.helpers.stack import Stack, engines_idle, running_stack
from tests.helpers.waits import eventually, value_when

pytestmark = pytest.mark.integration
QUESTION, QUESTION_RATE = decode_audio_file(ASSETS / "demo_question.wav")
# every clause lasts 6 s (the TTS LM runs to 250 audio ids): replies stay in flight for seconds
LONG_CLAUSES = {"ignore_eos": True, "max_audio_tokens": 250}


@pytest.fixture
async def stack(tiny_pack: Path, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(
        tiny_pack, redis_server.url, tmp_path, controller={"turn": {"seed": 7}}
    ) as running:
        yield running


async def stored_turns(redis_url: str, session_id: str) -> list:
    client = create_redis(redis_url)
    try:
        return (await SessionStore(client, ttl_s=60, max_turns=64).load(session_id)).turns
    finally:
        await client.aclose()


def capture_prompts(stack: Stack, service: str = "llm") -> list[list[int]]:
    """Record every prompt the LLM engine receives (the real engine still runs)."""
    engine = stack.services[service].engine
    prompts: list[list[int]] = []
    original = engine.generate

    def recording(request):  # type: ignore[no-untyped-def]
        prompts.append(list(request.prompt_ids))
        return original(request)

    engine.generate = recording
    return prompts


def contains(sequence: list[int], part: list[int]) -> bool:
    return any(sequence[i : i + len(part)] == part for i in range(len(sequence) - len(part) + 1))


async def test_spoken_turn_returns_audio_and_metrics(
    stack: Stack, redis_server: RedisServer
) -> None:
    async with RealtimeClient(stack.url) as client:
        await client.configure(speculative=False)
        result = await client.speak_and_wait(QUESTION, QUESTION_RATE)
    assert result.done["status"] == "completed" and not result.done["speculative"]
    assert result.pcm.size > 0 and result.sample_rate_hz == 24_000
    types = [e["type"] for e in result.events]
    expected = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "response.created",
        "response.done",
    ]
    assert all(kind in types for kind in expected)
    timings = result.done["timings_ms"]
    assert 0 < timings["llm_first_token"] <= timings["tts_first_chunk"] <= timings["first_audio"]
    turns = await stored_turns(redis_server.url, result.session_id)
    assert [t.role for t in turns] == ["user", "assistant"]
    assert all(65536 <= i < 65536 + 5120 for i in turns[0].audio_token_ids)
    async with httpx.AsyncClient(base_url=stack.url) as http:
        metrics = (await http.get("/metrics")).text
        ready = await http.get("/readyz")
    first_audio = "stepaudio_controller_time_to_first_audio_seconds_count"
    assert stack.metric("controller", first_audio, pipeline="cascade") >= 1
    assert f'{first_audio}{{pipeline="cascade"}}' in metrics
    for name in ("llm_first_token", "tts_first_chunk", "tokenizer_tail"):
        count = stack.metric("controller", f"stepaudio_controller_{name}_seconds_count")
        assert count >= 1, name
        assert f"stepaudio_controller_{name}_seconds_count" in metrics
    assert ready.status_code == 200
    assert ready.json()["services"] == {"vad": True, "tokenizer": True, "llm": True, "tts": True}


async def test_second_turn_prompt_holds_the_first_and_reconnect_resumes(
    stack: Stack, redis_server: RedisServer
) -> None:
    prompts = capture_prompts(stack)
    async with RealtimeClient(stack.url) as client:
        await client.configure(speculative=False, transcribe=False)
        first = await client.speak_and_wait(QUESTION, QUESTION_RATE)
        session_id = first.session_id
    turns = await stored_turns(redis_server.url, session_id)
    async with RealtimeClient(stack.url, session_id=session_id) as client:
        assert client.session["id"] == session_id and client.session["turns"] == 2
        assert client.result.events[0]["resumed"] is True
        second = await client.speak_and_wait(QUESTION, QUESTION_RATE)
    assert second.done["status"] == "completed"
    assert len(prompts) == 2
    assert contains(prompts[1], turns[0].audio_token_ids)  # the first user turn, as audio ids
    assert len(prompts[1]) > len(prompts[0])
    assert len(await stored_turns(redis_server.url, session_id)) == 4


async def test_context_survives_a_controller_restart(
    tiny_pack: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with running_stack(tiny_pack, redis_server.url, tmp_path / "a") as first_stack:
        async with RealtimeClient(first_stack.url) as client:
            await client.configure(speculative=False, transcribe=False)
            await client.send(
                {"type": "conversation.item.create",
                 "item": {"type": "message", "role": "user",
                          "content": [{"type": "input_text", "text": "Remember me."}]}}
            )  # fmt: skip
            await client.wait_for("conversation.item.created")
            session_id = client.result.session_id
    async with running_stack(tiny_pack, redis_server.url, tmp_path / "b") as second_stack:
        prompts = capture_prompts(second_stack)
        async with RealtimeClient(second_stack.url, session_id=session_id) as client:
            assert client.session["turns"] == 1
            await client.send({"type": "response.create"})
            done = await client.wait_for("response.done")
        assert done["response"]["status"] == "completed"
        tokenizer = second_stack.services["llm"].tokenizer
        assert contains(prompts[0], tokenizer.encode_continuation("Remember me."))


async def test_text_turn_and_push_to_talk(stack: Stack) -> None:
    async with RealtimeClient(stack.url) as client:
        await client.configure(turn_detection={"type": "none"}, transcribe=False)
        await client.stream_audio(QUESTION, QUESTION_RATE, realtime=False, json_frames=True)
        await client.send({"type": "input_audio_buffer.commit"})
        committed = await client.wait_for("input_audio_buffer.committed")
        await client.send({"type": "response.create"})
        done = await client.wait_for("response.done")
        assert done["response"]["status"] == "completed" and committed["item_id"]
        assert not client.result.of_type("input_audio_buffer.speech_started")  # no VAD in PTT
        await client.send(
            {"type": "conversation.item.create",
             "item": {"type": "message", "role": "user",
                      "content": [{"type": "input_text", "text": "And now in text?"}]}}
        )  # fmt: skip
        await client.wait_for("conversation.item.created")
        await client.send({"type": "response.create"})
        done = await client.wait_for("response.done")
    assert done["response"]["status"] == "completed"
    assert len(client.result.of_type("response.done")) == 2
    assert client.result.pcm.size > 0


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{not json", "invalid_json"),
        (json.dumps({"type": "no.such.event"}), "unknown_event"),
        (json.dumps({"type": "session.update", "session": {"input_audio_format":
                     {"type": "pcm16", "sample_rate_hz": 96000}}}), "invalid_event"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": "***"}), "invalid_audio"),
        (json.dumps({"type": "conversation.item.create", "item": {"type": "message",
                     "role": "user", "content": [{"type": "input_text", "text": "  "}]}}),
         "empty_text"),
        (json.dumps({"type": "conversation.item.create", "item": {"type": "message",
                     "role": "user", "content": [{"type": "input_text", "text": "x" * 5000}]}}),
         "text_too_long"),
        (b"\x00" * (64 * 1024 + 2), "frame_too_large"),
        (b"\x00" * 3, "invalid_audio"),
    ],
)  # fmt: skip
async def test_bad_input_gets_a_named_error_and_the_socket_stays(
    stack: Stack, message: str | bytes, code: str
) -> None:
    async with RealtimeClient(stack.url) as client:
        await client.ws.send(message)
        error = await client.wait_for("error")
        assert error["error"]["code"] == code
        await client.configure(voice="Tingting")  # still usable


async def test_unknown_session_id_starts_fresh_with_session_expired(stack: Stack) -> None:
    url = stack.url.replace("http", "ws") + "/v1/realtime?session_id=" + "0" * 32
    async with websockets.connect(url) as ws:
        first = json.loads(await ws.recv())
        created = json.loads(await ws.recv())
    assert first["type"] == "error" and first["error"]["code"] == "session_expired"
    assert created["type"] == "session.created" and created["resumed"] is False


async def test_barge_in_cancels_the_reply_downstream_and_stops_audio(
    tiny_pack: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    silence = np.zeros(QUESTION_RATE, dtype=np.float32)
    async with (
        running_stack(tiny_pack, redis_server.url, tmp_path, tts=LONG_CLAUSES) as stack,
        RealtimeClient(stack.url) as client,
    ):
        # greedy decoding never picks <|EOT|> on the tiny Chat model: the LLM keeps generating
        # (2048 tokens take seconds), and every clause's TTS runs long: both are in flight
        await client.configure(
            speculative=False, transcribe=False, temperature=0.0, max_response_output_tokens=2048
        )
        await client.stream_audio(np.concatenate([QUESTION, silence]), QUESTION_RATE)
        created = await client.wait_for("response.created")
        response_id = created["response"]["id"]
        await client.wait_for("response.audio.delta")
        speaking = asyncio.create_task(client.stream_audio(QUESTION, QUESTION_RATE))
        started = await client.wait_for("input_audio_buffer.speech_started")
        started_at = client.result.event_times[-1]
        done = await client.wait_for("response.done")
        await speaking
        assert started["audio_start_ms"] > 0
        assert done["response"]["id"] == response_id
        assert done["response"]["status"] == "cancelled"
        late = [
            t for e, t in zip(client.result.events, client.result.event_times, strict=True)
            if e.get("response_id") == response_id and e["type"] == "response.audio.delta"
            and t > started_at + 0.1
        ]  # fmt: skip
        assert late == [], "audio of the interrupted reply kept arriving after speech_started"
        for service in ("llm", "tts"):  # the gRPC cancellation reached both services
            name = f"stepaudio_{service}_requests_total"
            await eventually(
                lambda s=service, n=name: stack.metric(s, n, reason="cancelled") >= 1,
                what=f"a cancelled request counted by {service}",
            )
        turns = await stored_turns(redis_server.url, client.result.session_id)
    interrupted = [t for t in turns if t.role == "assistant" and t.interrupted]
    assert len(interrupted) == 1
    assert interrupted[0].text == done["response"]["text"]
    sent = done["response"]["audio_seconds"]
    assert 0 < sent < 6.0  # only part of the first 6 s clause went out before the barge-in


async def test_disconnect_mid_reply_frees_tasks_and_keeps_context(
    tiny_pack: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with running_stack(tiny_pack, redis_server.url, tmp_path, tts=LONG_CLAUSES) as stack:
        async with RealtimeClient(stack.url) as client:
            await client.configure(speculative=False, transcribe=False)
            await client.stream_audio(
                np.concatenate([QUESTION, np.zeros(QUESTION_RATE, np.float32)]), QUESTION_RATE
            )
            await client.wait_for("response.audio.delta")
            session_id = client.result.session_id
        # the controller notices the close, stores what was sent and cancels everything; the
        # cancellations cross a gRPC hop each, so the services see them a little later
        await eventually(
            lambda: stack.metric("controller", "stepaudio_controller_active_sessions") == 0,
            what="the session closed",
        )
        turns = await value_when(
            lambda: stored_turns(redis_server.url, session_id),
            lambda turns: len(turns) == 2,
            what="the interrupted reply stored",
        )
        assert [t.role for t in turns] == ["user", "assistant"] and turns[1].interrupted
        await engines_idle(stack, "the client left mid-reply")


async def test_redis_outage_keeps_live_sessions_and_refuses_new_ones(
    tiny_pack: Path, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    try:
        async with (
            running_stack(tiny_pack, redis.url, tmp_path) as stack,
            RealtimeClient(stack.url) as client,
        ):
            await client.configure(speculative=False, transcribe=False)
            redis.stop(kill=True)
            await client.send(
                {"type": "conversation.item.create",
                 "item": {"type": "message", "role": "user",
                          "content": [{"type": "input_text", "text": "Still there?"}]}}
            )  # fmt: skip
            error = await client.wait_for("error")
            assert error["error"]["code"] == "unavailable"
            await client.send({"type": "response.create"})
            done = await client.wait_for("response.done", tolerate=("unavailable",))
            assert done["response"]["status"] == "completed"  # the live call goes on
            async with httpx.AsyncClient(base_url=stack.url) as http:
                assert (await http.get("/readyz")).status_code == 503
            url = stack.url.replace("http", "ws") + "/v1/realtime"
            async with websockets.connect(url) as refused:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await refused.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    finally:
        redis.stop()


async def test_drain_lets_the_reply_finish_then_closes_with_1012(stack: Stack) -> None:
    async with RealtimeClient(stack.url) as client, httpx.AsyncClient(base_url=stack.url) as http:
        await client.configure(speculative=False, transcribe=False)
        await client.send(
            {"type": "conversation.item.create",
             "item": {"type": "message", "role": "user",
                      "content": [{"type": "input_text", "text": "Hello?"}]}}
        )  # fmt: skip
        await client.wait_for("conversation.item.created")
        await client.send({"type": "response.create"})
        await client.wait_for("response.created")
        drained = await http.post("/admin/drain", timeout=60)
        assert drained.json() == {"draining": True, "closed_sessions": 1}
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await client.next_event()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        # the reply in progress finished before the socket closed
        assert client.result.of_type("response.done")[0]["response"]["status"] == "completed"
        assert (await http.get("/readyz")).status_code == 503
