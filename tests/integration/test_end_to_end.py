"""End-to-end pipeline (AQAA-style LLM → audio ids → token2wav) on the tiny aqaa pack."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from services.cli.realtime_client import RealtimeClient, TurnResult
from services.common.audio import decode_audio_file
from services.lm_engine.engine import FinishReason, GenerationOutput, GenerationRequest
from services.models.audio_tokens import TOKENS_PER_SECOND
from services.models.tiny import ASSETS
from tests.helpers.redis import RedisServer
from tests.helpers.stack import Stack, running_stack

pytestmark = pytest.mark.integration
QUESTION, QUESTION_RATE = decode_audio_file(ASSETS / "demo_question.wav")
HOP_S = 256 / 22_050  # one mel frame of the vocoder


@pytest.fixture
async def stack(tiny_pack: Path, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Stack]:
    # seed 1: the tiny AQAA model answers this question with a few dozen audio ids
    async with running_stack(
        tiny_pack, redis_server.url, tmp_path, e2e=True, controller={"turn": {"seed": 1}}
    ) as running:
        yield running


def count_calls(engine: object) -> list[GenerationRequest]:
    """Record the requests an LLM engine receives (the real engine still runs)."""
    calls: list[GenerationRequest] = []
    original = engine.generate  # type: ignore[attr-defined]

    def recording(request: GenerationRequest):  # type: ignore[no-untyped-def]
        calls.append(request)
        return original(request)

    engine.generate = recording  # type: ignore[attr-defined]
    return calls


async def spoken_turn(stack: Stack, pipeline: str) -> TurnResult:
    async with RealtimeClient(stack.url) as client:
        await client.configure(
            pipeline=pipeline,
            speculative=False,
            transcribe=False,
            output_audio_format={"type": "pcm16", "sample_rate_hz": 22_050},
        )
        # random tiny weights end on an incomplete 5-id group most of the time: that is
        # reported (invalid_audio_tokens) and the whole groups are still spoken
        return await client.speak_and_wait(
            QUESTION, QUESTION_RATE, tolerate=("invalid_audio_tokens",)
        )


async def test_end_to_end_audio_comes_from_the_llms_own_audio_ids(stack: Stack) -> None:
    tts_lm_calls = count_calls(stack.services["tts"].engine.models.lm)
    e2e_calls = count_calls(stack.services["e2e_llm"].engine)
    result = await spoken_turn(stack, "end_to_end")
    done = result.done
    assert done["status"] == "completed" and done["pipeline"] == "end_to_end"
    assert len(e2e_calls) == 1 and tts_lm_calls == []  # no TTS LM in this path
    audio_ids = done["audio_tokens"]
    assert audio_ids > 0 and audio_ids % 5 == 0
    audio_seconds = result.pcm.size / result.sample_rate_hz
    assert abs(audio_seconds - audio_ids / TOKENS_PER_SECOND) <= HOP_S
    assert done["timings_ms"]["first_audio"] > 0
    first_audio = "stepaudio_controller_time_to_first_audio_seconds_count"
    assert stack.metric("controller", first_audio, pipeline="end_to_end") == 1


async def test_cascade_and_end_to_end_sessions_run_at_the_same_time(stack: Stack) -> None:
    cascade, end_to_end = await asyncio.gather(
        spoken_turn(stack, "cascade"), spoken_turn(stack, "end_to_end")
    )
    assert cascade.done["pipeline"] == "cascade" and end_to_end.done["pipeline"] == "end_to_end"
    assert cascade.done["status"] == end_to_end.done["status"] == "completed"
    assert cascade.pcm.size > 0 and end_to_end.pcm.size > 0
    for pipeline in ("cascade", "end_to_end"):
        name = "stepaudio_controller_time_to_first_audio_seconds_count"
        assert stack.metric("controller", name, pipeline=pipeline) == 1


async def test_malformed_audio_ids_get_a_named_error_and_the_session_goes_on(
    stack: Stack,
) -> None:
    engine = stack.services["e2e_llm"].engine
    good = [65536 + 3, 65536 + 7, 66560 + 1, 66560 + 2, 66560 + 3]  # one whole 2+3 group
    scripted = [
        [972, *good, 70656 + 9],  # text, a group, an id beyond the 5120 audio codes
        [65536 + 4, 66560 + 5],  # an incomplete trailing group
    ]

    async def malformed(request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        for ids in scripted:
            yield GenerationOutput(request.request_id, ids)
        yield GenerationOutput(request.request_id, [], True, FinishReason.STOP)

    engine.generate = malformed
    async with RealtimeClient(stack.url) as client:
        await client.configure(pipeline="end_to_end", speculative=False, transcribe=False)
        await client.stream_audio(
            np.concatenate([QUESTION, np.zeros(QUESTION_RATE, np.float32)]), QUESTION_RATE
        )
        error = await client.wait_for("error")
        done = await client.wait_for("response.done")
        assert error["error"]["code"] == "invalid_audio_tokens"
        assert "outside the 5120 audio codes" in error["error"]["message"]
        assert "incomplete audio group" in error["error"]["message"]
        assert done["response"]["status"] == "completed" and done["response"]["audio_tokens"] == 5
        assert client.result.pcm.size > 0  # the valid group was still spoken
        await client.configure(pipeline="cascade")  # the session goes on
        result = await client.speak_and_wait(QUESTION, QUESTION_RATE)
    assert result.done["status"] == "completed"


async def test_end_to_end_is_refused_without_an_end_to_end_llm(
    tiny_pack: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with (
        running_stack(tiny_pack, redis_server.url, tmp_path) as stack,
        RealtimeClient(stack.url) as client,
    ):
        await client.send({"type": "session.update", "session": {"pipeline": "end_to_end"}})
        error = await client.wait_for("error")
    assert error["error"]["code"] == "invalid_argument"
    assert "end-to-end LLM" in error["error"]["message"]
