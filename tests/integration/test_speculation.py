"""Speculative replies and text-based context on the whole in-process stack (tiny pack).

The VAD works in *audio* time: a pause stays a pause for as long as the client sends nothing
more. The tests use that to hold the microphone after a mid-sentence pause until the held
reply has reached the point under test (LLM and TTS in flight, or first audio synthesized),
then resume speaking or finish the turn with silence. No assertion depends on wall-clock
speed; waits have generous deadlines and fail with a message if something never happens.

Wrappers around the LLM and TTS engines record every request the services receive (prompt ids,
produced audio, whether the call ran to its end or was closed by a cancellation); the stack
runs in the test's process, so engine timestamps and client receive times share one clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.cli.realtime_client import RealtimeClient
from services.common.audio import float_to_pcm16
from services.controller.store import SessionStore, Turn, create_redis
from services.models.audio_tokens import is_audio_id
from tests.helpers.clips import RATE_HZ, phrase, silence
from tests.helpers.redis import RedisServer
from tests.helpers.stack import Stack, running_stack

pytestmark = pytest.mark.integration

# the first half of a sentence, a mid-sentence pause, the rest
FIRST_HALF, SECOND_HALF = "What is the weather like", "in Paris today?"
PAUSE_S = 0.4  # > speculate_after_ms (250 ms), < end-of-turn silence (600 ms)
END_OF_TURN_S = 1.0  # > 600 ms: the VAD ends the turn
# every TTS clause runs to 250 audio ids (6 s): a held reply's first clause stays in flight
LONG_CLAUSES = {"ignore_eos": True, "max_audio_tokens": 250}
WAIT_S = 90.0
LOOKAHEAD_IDS = 40  # vq06 look-ahead (24 codes = 0.96 s) in mixed ids (41.67/s)


# -- recording what the services receive ----------------------------------------------------


@dataclass
class Call:
    request_id: str
    started: float
    prompt_ids: list[int] = field(default_factory=list)
    pcm: list[np.ndarray] = field(default_factory=list)  # TTS: audio produced, in order
    pcm_times: list[float] = field(default_factory=list)  # when each piece was produced
    first_output: float | None = None
    outcome: str = "running"  # "finished" (ran to its end) | "closed" (cancelled / aborted)

    @property
    def audio_ids(self) -> list[int]:
        return [i for i in self.prompt_ids if is_audio_id(i)]


@dataclass
class Calls:
    calls: dict[str, Call] = field(default_factory=dict)

    def replies(self) -> list[Call]:
        """LLM calls for replies (transcriptions have ``asr_`` ids), oldest first."""
        return [c for c in self.calls.values() if not c.request_id.startswith("asr_")]

    def of_response(self, response_id: str) -> list[Call]:
        """TTS calls of one response (``{response_id}-{clause index}``), in clause order."""
        prefix = f"{response_id}-"
        calls = [c for c in self.calls.values() if c.request_id.startswith(prefix)]
        return sorted(calls, key=lambda c: int(c.request_id.removeprefix(prefix)))


async def _recorded(
    call: Call, outputs: AsyncIterator[Any], audio: bool, hold: asyncio.Event | None = None
) -> AsyncIterator[Any]:
    """Pass the engine's outputs through, recording them; with ``hold``, every audio piece
    after the first waits for that event (a TTS that is slow on cue)."""
    try:
        async with aclosing(outputs) as stream:  # type: ignore[type-var]
            async for output in stream:
                if call.first_output is None:
                    call.first_output = time.monotonic()
                if audio and output.samples.size:
                    if hold is not None and call.pcm:
                        await hold.wait()
                    call.pcm.append(np.array(output.samples, dtype=np.float32))
                    call.pcm_times.append(time.monotonic())
                yield output
        call.outcome = "finished"
    except BaseException:  # GeneratorExit (closed) or CancelledError: the call was cut short
        call.outcome = "closed"
        raise


def record_llm(stack: Stack) -> Calls:
    engine = stack.services["llm"].engine
    original, calls = engine.generate, Calls()

    def generate(request):  # type: ignore[no-untyped-def]
        call = Call(request.request_id, time.monotonic(), list(request.prompt_ids))
        calls.calls[call.request_id] = call
        return _recorded(call, original(request), audio=False)

    engine.generate = generate
    return calls


def record_tts(stack: Stack, hold: asyncio.Event | None = None) -> Calls:
    engine = stack.services["tts"].engine
    original, calls = engine.synthesize, Calls()

    def synthesize(text, voice, options, *, request_id=""):  # type: ignore[no-untyped-def]
        call = Call(request_id, time.monotonic())
        calls.calls[request_id] = call
        pieces = original(text, voice, options, request_id=request_id)
        return _recorded(call, pieces, audio=True, hold=hold)

    engine.synthesize = synthesize
    return calls


# -- helpers --------------------------------------------------------------------------------


async def until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Poll ``condition`` (the client keeps the microphone quiet meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)


def speculations(stack: Stack, outcome: str) -> float:
    return stack.metric("controller", "stepaudio_controller_speculations_total", outcome=outcome)


def cancelled(stack: Stack, service: str) -> float:
    return stack.metric(service, f"stepaudio_{service}_requests_total", reason="cancelled")


def common_prefix(first: list[int], second: list[int]) -> int:
    return next(
        (i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b),
        min(len(first), len(second)),
    )


def contains(sequence: list[int], part: list[int]) -> bool:
    assert part, "an empty part proves nothing"
    return any(sequence[i : i + len(part)] == part for i in range(len(sequence) - len(part) + 1))


def response_id_of(event: dict[str, Any]) -> str | None:
    return event.get("response_id") or (event.get("response") or {}).get("id")


def pcm16(samples: np.ndarray) -> np.ndarray:
    return np.frombuffer(float_to_pcm16(samples), dtype="<i2").astype(np.int32)


async def stored_turns(redis_url: str, session_id: str) -> list[Turn]:
    client = create_redis(redis_url)
    try:
        return (await SessionStore(client, ttl_s=60, max_turns=64).load(session_id)).turns
    finally:
        await client.aclose()


async def transcript_of(client: RealtimeClient, item_id: str) -> str:
    """The input transcription of ``item_id`` (it may have arrived already)."""
    kind = "conversation.item.input_audio_transcription.completed"
    while True:
        for event in client.result.of_type(kind):
            if event["item_id"] == item_id:
                return str(event["transcript"])
        await client.wait_for(kind)


@pytest.fixture
async def stack(tiny_pack: Path, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Stack]:
    # audio_turns_kept defaults to 8 here, so that a session's own setting is what is tested;
    # one speculation at a time, so that the gate's has_room() says when it ended
    controller = {"turn": {"seed": 7, "audio_turns_kept": 8}, "limits": {"max_speculations": 1}}
    async with running_stack(tiny_pack, redis_server.url, tmp_path, controller=controller) as up:
        yield up


# -- tests ----------------------------------------------------------------------------------


async def test_pause_then_resume_discards_the_speculation(
    tiny_pack: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    controller = {"turn": {"seed": 7}}
    async with running_stack(
        tiny_pack, redis_server.url, tmp_path, controller=controller, tts=LONG_CLAUSES
    ) as stack:
        llm, tts = record_llm(stack), record_tts(stack)
        async with RealtimeClient(stack.url) as client:
            # greedy decoding never ends on the tiny Chat model: the held LLM call stays busy
            await client.configure(
                speculative=True, transcribe=False, temperature=0.0, max_response_output_tokens=2048
            )
            await client.stream_audio(
                np.concatenate([phrase(FIRST_HALF), silence(PAUSE_S)]), RATE_HZ
            )
            # the pause started a held reply: wait until its LLM call and its first clause's TTS
            # call are both running at the services
            await until(
                lambda: (
                    any(c.outcome == "running" for c in llm.replies())
                    and any(c.outcome == "running" for c in tts.calls.values())
                ),
                "the speculation's LLM and TTS calls",
            )
            [speculation] = llm.replies()
            spec_id = speculation.request_id
            assert [c.request_id for c in tts.calls.values()] == [f"{spec_id}-0"]
            assert speculations(stack, "started") == 1
            # the user goes on speaking, then stops
            await client.stream_audio(
                np.concatenate([phrase(SECOND_HALF), silence(END_OF_TURN_S)]), RATE_HZ
            )
            created = await client.wait_for("response.created")
            reply_id = created["response"]["id"]
            assert reply_id != spec_id
            await client.wait_for("response.audio.delta")
            # the cancellation reached both services (before this reply is cancelled below)
            await until(
                lambda: cancelled(stack, "llm") >= 1 and cancelled(stack, "tts") >= 1,
                "the services to count the speculation's cancelled calls",
            )
            assert cancelled(stack, "llm") == 1 and cancelled(stack, "tts") == 1
            assert llm.calls[spec_id].outcome == "closed"
            assert tts.calls[f"{spec_id}-0"].outcome == "closed"
            assert speculations(stack, "discarded") == 1
            await client.send({"type": "response.cancel"})  # end the (endless) reply now
            done = await client.wait_for("response.done")
        events = client.result.events
        # nothing of the speculation reached the client: no event carries its response id
        assert [e["type"] for e in events if response_id_of(e) == spec_id] == []
        # the end-of-utterance pause started a second speculation, on the whole utterance, and
        # the end of the turn committed it: that is the reply
        assert done["response"]["id"] == reply_id and done["response"]["speculative"]
        assert speculations(stack, "started") == 2 and speculations(stack, "committed") == 1
        audio_ids = {response_id_of(e) for e in client.result.of_type("response.audio.delta")}
        assert audio_ids == {reply_id}
        # the reply answered the whole utterance: its prompt holds the stored user turn's ids (up
        # to the final pause; the stored turn also has the trailing silence's few ids), many
        # more than the discarded speculation had (the first half only)
        [_, final] = llm.replies()
        assert final.request_id == reply_id
        turns = await stored_turns(redis_server.url, client.result.session_id)
        assert [t.role for t in turns] == ["user", "assistant"]  # no trace of the speculation
        user, assistant = turns
        # the held reply tokenized the utterance up to the pause in one piece; the stored turn
        # was tokenized as a stream that saw the audio after it, so their last ids may differ
        # within the semantic look-ahead (docs/audio-tokenizer.md); where the pause falls in
        # the audio depends on how fast the VAD keeps up, so the tail is not compared
        agreed = common_prefix(final.audio_ids, user.audio_token_ids)
        assert agreed >= len(final.audio_ids) - LOOKAHEAD_IDS
        assert 0 < len(speculation.audio_ids) < agreed - 25  # > 0.6 s of speech more
        assert assistant.interrupted and assistant.text == done["response"]["text"]


async def test_pause_then_silence_commits_the_held_reply(
    stack: Stack, redis_server: RedisServer
) -> None:
    llm, tts = record_llm(stack), record_tts(stack)
    async with RealtimeClient(stack.url) as client:
        await client.configure(speculative=True, transcribe=False, max_response_output_tokens=24)
        await client.stream_audio(
            np.concatenate([phrase(f"{FIRST_HALF} {SECOND_HALF}"), silence(PAUSE_S)]), RATE_HZ
        )
        # hold the microphone until the held reply has synthesized audio
        await until(lambda: any(c.pcm for c in tts.calls.values()), "the held reply's audio")
        [speculation] = llm.replies()
        spec_id = speculation.request_id
        await client.stream_audio(silence(END_OF_TURN_S), RATE_HZ)  # the pause ends the turn
        done = (await client.wait_for("response.done"))["response"]
    events, times = client.result.events, client.result.event_times
    kinds = [e["type"] for e in events]
    stopped = kinds.index("input_audio_buffer.speech_stopped")
    committed = kinds.index("input_audio_buffer.committed")
    # the reply is the speculation itself, committed: same id, no second LLM generation
    assert done["id"] == spec_id and done["speculative"] and done["status"] == "completed"
    assert [c.request_id for c in llm.replies()] == [spec_id]
    assert speculations(stack, "started") == 1 and speculations(stack, "committed") == 1
    assert speculations(stack, "discarded") == 0
    # server timestamps: generation began before the end of the turn
    timings = done["timings_ms"]
    assert timings["speculation_started"] < 0 and timings["llm_first_token"] < 0
    assert timings["tts_first_chunk"] < 0 <= timings["first_audio"]
    assert timings["llm_first_token"] <= timings["first_clause"] <= timings["tts_first_chunk"]
    first_tts = tts.of_response(spec_id)[0]
    assert first_tts.first_output is not None and first_tts.first_output < times[stopped]
    # held: nothing of it reached the client before the turn was committed
    spec_events = [i for i, e in enumerate(events) if response_id_of(e) == spec_id]
    assert spec_events and min(spec_events) > committed > stopped
    # the audio sent is the audio the TTS service synthesized for the held reply's clauses, in
    # order and sample for sample (±1 LSB of PCM16 re-quantization): its first samples are the
    # ones made before the turn ended, flushed at commit; nothing was synthesized again
    sent = pcm16(client.result.pcm)
    synthesized = pcm16(np.concatenate([s for c in tts.of_response(spec_id) for s in c.pcm]))
    assert sent.size == synthesized.size > 0
    assert int(np.abs(sent - synthesized).max()) <= 1
    assert set(tts.calls) == {c.request_id for c in tts.of_response(spec_id)}
    turns = await stored_turns(redis_server.url, client.result.session_id)
    assert [t.role for t in turns] == ["user", "assistant"]
    assert turns[1].text == done["text"] and not turns[1].interrupted


async def test_older_user_turns_reach_the_llm_as_transcripts(
    stack: Stack, redis_server: RedisServer
) -> None:
    llm = record_llm(stack)
    phrases = ("Hello there, how are you?", "Tell me about the moon.", "What time is it now?")
    async with RealtimeClient(stack.url) as client:
        updated = await client.configure(
            speculative=False, transcribe=True, audio_turns_kept=1, max_response_output_tokens=16
        )
        assert updated["session"]["audio_turns_kept"] == 1
        transcripts = []
        for text in phrases:
            result = await client.speak_and_wait(phrase(text), RATE_HZ)
            assert result.done["status"] == "completed"
            item_id = client.result.of_type("input_audio_buffer.committed")[-1]["item_id"]
            transcripts.append(await transcript_of(client, item_id))  # before the next turn
    turns = await stored_turns(redis_server.url, client.result.session_id)
    users = [t for t in turns if t.role == "user"]
    assert [t.role for t in turns] == ["user", "assistant"] * 3
    assert [t.transcript for t in users] == transcripts and all(transcripts)
    tokenizer = stack.services["llm"].tokenizer
    as_text = [tokenizer.encode_continuation(t) for t in transcripts]
    second, third = [c.prompt_ids for c in llm.replies()][1:]
    # third turn: turns 1 and 2 as their transcripts' text ids, only turn 3 as audio ids
    assert contains(third, as_text[0]) and contains(third, as_text[1])
    assert not contains(third, users[0].audio_token_ids)
    assert not contains(third, users[1].audio_token_ids)
    assert [i for i in third if is_audio_id(i)] == users[2].audio_token_ids
    # second turn: turn 1 as text, turn 2 as audio
    assert contains(second, as_text[0]) and not contains(second, users[0].audio_token_ids)
    assert [i for i in second if is_audio_id(i)] == users[1].audio_token_ids
    # the compression counters add up what those two prompts replaced
    replaced = stack.metric(
        "controller", "stepaudio_controller_context_audio_tokens_replaced_total"
    )
    transcript_tokens = stack.metric(
        "controller", "stepaudio_controller_context_transcript_tokens_total"
    )
    ids = [len(t.audio_token_ids) for t in users]
    assert replaced == ids[0] + ids[0] + ids[1]
    tokens = [t.transcript_tokens or 0 for t in users]
    assert transcript_tokens == tokens[0] + tokens[0] + tokens[1] > 0


async def test_speculation_is_shed_when_none_may_run(
    tiny_pack: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    controller = {"turn": {"seed": 7}, "limits": {"max_speculations": 0}}
    async with running_stack(tiny_pack, redis_server.url, tmp_path, controller=controller) as stack:
        llm = record_llm(stack)
        async with RealtimeClient(stack.url) as client:
            await client.configure(speculative=True, transcribe=False, max_response_output_tokens=8)
            await client.stream_audio(
                np.concatenate([phrase(FIRST_HALF), silence(PAUSE_S)]), RATE_HZ
            )
            await until(lambda: speculations(stack, "shed") >= 1, "the pause to be shed")
            assert llm.calls == {}  # the pause started nothing
            await client.stream_audio(
                np.concatenate([phrase(SECOND_HALF), silence(END_OF_TURN_S)]), RATE_HZ
            )
            done = (await client.wait_for("response.done"))["response"]
        assert speculations(stack, "started") == 0
        assert speculations(stack, "shed") == 2  # the mid-sentence pause and the final one
        assert done["status"] == "completed" and not done["speculative"]
        assert "speculation_started" not in done["timings_ms"]
        assert [c.request_id for c in llm.replies()] == [done["id"]]


async def test_a_committed_turn_sheds_another_sessions_speculation_from_a_full_llm(
    tiny_pack: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    # one LLM slot and no queue: a held speculation fills the LLM
    async with running_stack(
        tiny_pack, redis_server.url, tmp_path, llm={"max_running": 1, "max_waiting": 0}
    ) as stack:
        llm = record_llm(stack)
        async with RealtimeClient(stack.url) as pausing, RealtimeClient(stack.url) as typing:
            # session A pauses mid-sentence (a 5 s end-of-turn silence keeps its speculation
            # held); greedy decoding never ends on the tiny Chat model, so it keeps the slot
            await pausing.configure(
                speculative=True, transcribe=False, temperature=0.0,
                max_response_output_tokens=2048,
                turn_detection={"type": "server_vad", "silence_duration_ms": 5000},
            )  # fmt: skip
            await typing.configure(speculative=False, transcribe=False)
            pause = asyncio.create_task(
                pausing.stream_audio(np.concatenate([phrase(FIRST_HALF), silence(3.0)]), RATE_HZ)
            )
            await until(lambda: len(llm.calls) == 1, "the speculation to reach the LLM")
            # session B's committed (text) turn finds the LLM full: it must not wait or fail
            await typing.send(
                {"type": "conversation.item.create",
                 "item": {"type": "message", "role": "user",
                          "content": [{"type": "input_text", "text": "Quick question?"}]}}
            )  # fmt: skip
            await typing.wait_for("conversation.item.created")
            await typing.send({"type": "response.create"})
            done = (await typing.wait_for("response.done"))["response"]
            await pause
        assert done["status"] == "completed"
        assert speculations(stack, "shed") >= 1
        assert cancelled(stack, "llm") >= 1  # the speculation's request left the LLM
        speculation = [c for c in llm.calls.values() if c.request_id != done["id"]]
        assert speculation and all(c.outcome == "closed" for c in speculation)


async def test_a_speculation_that_got_no_input_ids_does_not_block_the_turn(
    stack: Stack, redis_server: RedisServer
) -> None:
    """The held reply's input is tokenized offline; when that gives no ids the speculation ends
    at once. The end of the turn must then answer with an ordinary reply (it used to commit the
    ended speculation: no reply, no response.done, and every later turn refused)."""
    tokenizer = stack.services["tokenizer"].tokenizer
    offline: list[int] = []

    def no_ids(samples, rate, **kwargs):  # type: ignore[no-untyped-def]
        offline.append(samples.size)
        yield from ()  # a step generator that asks the model for nothing
        return []  # only the offline path; the utterance's streamed ids are unaffected

    tokenizer.tokenize_steps = no_ids
    gate = stack.app.state.controller.speculation
    async with RealtimeClient(stack.url) as client:
        await client.configure(speculative=True, transcribe=False, max_response_output_tokens=8)
        await client.stream_audio(
            np.concatenate([phrase(f"{FIRST_HALF} {SECOND_HALF}"), silence(PAUSE_S)]), RATE_HZ
        )
        await until(
            lambda: speculations(stack, "started") == 1 and offline and gate.has_room(),
            "the speculation to end",
        )
        await client.stream_audio(silence(END_OF_TURN_S), RATE_HZ)
        done = (await client.wait_for("response.done", timeout_s=60))["response"]
        assert done["status"] == "completed" and not done["speculative"]
        second = await client.speak_and_wait(phrase("And tomorrow?"), RATE_HZ)  # not refused
        assert second.done["status"] == "completed"
    assert speculations(stack, "committed") == 0
    turns = await stored_turns(redis_server.url, client.result.session_id)
    assert [t.role for t in turns] == ["user", "assistant"] * 2


async def test_commit_while_the_first_clause_is_still_synthesized_keeps_the_audio_in_order(
    tiny_pack: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Held audio beyond the output lead is paced out after the commit while the first
    clause's TTS call is still streaming: the live audio must queue behind it (it used to be
    interleaved with it), and the commit must not block the session on that pacing."""
    controller = {"turn": {"seed": 7}}
    committed = asyncio.Event()  # the TTS makes the first clause's later pieces after this
    async with running_stack(
        tiny_pack, redis_server.url, tmp_path, controller=controller, tts=LONG_CLAUSES
    ) as stack:
        llm, tts = record_llm(stack), record_tts(stack, hold=committed)
        async with RealtimeClient(stack.url) as client:
            await client.configure(speculative=True, transcribe=False)
            await client.stream_audio(
                np.concatenate([phrase(f"{FIRST_HALF} {SECOND_HALF}"), silence(PAUSE_S)]), RATE_HZ
            )
            await until(lambda: any(c.pcm for c in tts.calls.values()), "the held reply's audio")
            [speculation] = llm.replies()
            first_clause = tts.calls[f"{speculation.request_id}-0"]
            held_samples = first_clause.pcm[0].size
            ending = asyncio.create_task(client.stream_audio(silence(END_OF_TURN_S), RATE_HZ))
            await client.wait_for("input_audio_buffer.committed")
            committed.set()
            await ending
            while client.result.pcm.size < 3 * 24_000:  # 3 s: the held piece and live ones
                await client.next_event(WAIT_S)
            await client.send({"type": "response.cancel"})
            done = (await client.wait_for("response.done"))["response"]
    assert done["id"] == speculation.request_id and done["speculative"]
    assert done["status"] == "cancelled"
    assert len(first_clause.pcm) >= 2 and 0 < held_samples < 3 * 24_000
    sent = pcm16(client.result.pcm)
    synthesized = pcm16(np.concatenate(first_clause.pcm))
    assert synthesized.size >= sent.size
    assert int(np.abs(sent - synthesized[: sent.size]).max()) <= 1  # in order, nothing skipped


async def test_replies_cancelled_at_their_first_audio_end(stack: Stack) -> None:
    """response.cancel while a reply sends its first audio (a burst up to the output lead):
    the reply ends with response.done. On Python 3.11, asyncio.wait_for in the session's send
    swallowed a cancellation arriving as the put completed, and the session hung for good."""
    async with RealtimeClient(stack.url) as client:
        # the LLM is still streaming text deltas (each one a send) when the first audio goes
        await client.configure(speculative=False, transcribe=False, max_response_output_tokens=256)
        for _ in range(3):
            speaking = asyncio.create_task(
                client.stream_audio(
                    np.concatenate([phrase(f"{FIRST_HALF} {SECOND_HALF}"), silence(1.5)]),
                    RATE_HZ,
                )
            )
            await client.wait_for("response.audio.delta")
            await client.send({"type": "response.cancel"})
            done = (await client.wait_for("response.done", timeout_s=30))["response"]
            assert done["status"] == "cancelled"
            await speaking
    assert (
        stack.metric("controller", "stepaudio_controller_responses_total", status="cancelled") == 3
    )
