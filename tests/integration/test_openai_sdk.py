"""Unmodified OpenAI SDK clients (the pinned ``openai`` package) against the whole stack.

Realtime GA (``client.realtime``) and beta (``client.beta.realtime``), each with server VAD
and with manual turns; the Audio API (``audio.speech.create``) in every format; the model
list. Every server event is validated against the SDK's own event types for the client's
dialect, any ``error`` event fails the test, and warnings are errors (the SDK's pydantic
models warn when a server sends a field of the wrong shape).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import typing
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import websockets
from openai import AsyncOpenAI
from openai.types.beta.realtime.realtime_server_event import (
    RealtimeServerEvent as BetaServerEvent,
)
from openai.types.realtime.realtime_server_event import RealtimeServerEvent as GaServerEvent
from openai.types.realtime.session_updated_event import SessionUpdatedEvent as GaSessionUpdated
from pydantic import BaseModel

from services.common.audio import resample
from tests.helpers.clips import phrase, silence
from tests.helpers.redis import RedisServer
from tests.helpers.stack import Stack, running_stack

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("error")]
RATE_HZ = 24_000  # OpenAI's pcm16
G711_RATE_HZ = 8_000
CHUNK_S = 0.1
EVENT_TIMEOUT_S = 60.0


def _event_models(union: Any) -> dict[str, type[BaseModel]]:
    """The SDK's server event classes by their ``type`` literal."""
    members = typing.get_args(typing.get_args(union)[0])
    return {m.model_fields["type"].annotation.__args__[0]: m for m in members}


SERVER_EVENTS = {"ga": _event_models(GaServerEvent), "beta": _event_models(BetaServerEvent)}
NAMES = {  # the reply's audio / transcript / text deltas, per dialect
    "ga": ("response.output_audio.delta", "response.output_audio_transcript.delta",
           "response.output_text.delta"),
    "beta": ("response.audio.delta", "response.audio_transcript.delta", "response.text.delta"),
}  # fmt: skip


@pytest.fixture
async def stack(tiny_pack: Path, redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(
        tiny_pack, redis_server.url, tmp_path, controller={"turn": {"seed": 7}}
    ) as running:
        yield running


def openai_client(stack: Stack) -> AsyncOpenAI:
    # websocket_base_url: the beta client always dials wss:// unless told otherwise
    return AsyncOpenAI(
        base_url=f"{stack.url}/v1",
        websocket_base_url=stack.url.replace("http", "ws") + "/v1",
        api_key="sk-test",
        max_retries=0,
    )


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[AsyncOpenAI]:
    async with openai_client(stack) as sdk:
        yield sdk


def question_24k() -> np.ndarray:
    return resample(phrase("What is the weather like today?"), 16_000, RATE_HZ)


@dataclass
class Conversation:
    """One realtime connection: every event checked as it arrives, and kept."""

    connection: Any
    dialect: str
    events: list[dict[str, Any]] = field(default_factory=list)

    async def next(self) -> dict[str, Any]:
        raw = await self.connection.recv_bytes()
        event = json.loads(raw)
        model = SERVER_EVENTS[self.dialect].get(event["type"])
        assert model is not None, f"{event['type']} is not a {self.dialect} event"
        model.model_validate_json(raw)  # the SDK's own type, validated
        self.connection.parse_event(raw).model_dump()  # what a client does: warns on misfit
        assert event["type"] != "error", event
        assert event["event_id"]
        self.events.append(event)
        return event

    async def until(self, kind: str) -> dict[str, Any]:
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            while (event := await self.next())["type"] != kind:
                pass
        return event

    def since(self, start: int, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events[start:] if e["type"] == kind]

    async def speak(
        self, samples: np.ndarray, *, trailing_silence_s: float, codec: str = "pcm_s16le"
    ) -> None:
        """Append audio at real-time pace (as a microphone would), 100 ms at a time."""
        rate = RATE_HZ if codec == "pcm_s16le" else G711_RATE_HZ
        data = encode_with_ffmpeg(np.concatenate([samples, silence(trailing_silence_s, rate)]),
                                  codec, rate)  # fmt: skip
        step = int(rate * CHUNK_S) * (2 if codec == "pcm_s16le" else 1)
        start = time.monotonic()
        for index, offset in enumerate(range(0, len(data), step)):
            chunk = base64.b64encode(data[offset : offset + step]).decode()
            await self.connection.input_audio_buffer.append(audio=chunk)
            await asyncio.sleep(max(0.0, start + (index + 1) * CHUNK_S - time.monotonic()))


def encode_with_ffmpeg(samples: np.ndarray, codec: str, rate_hz: int) -> bytes:
    """Client audio made by FFmpeg (PyAV), independently of the server's own codec code."""
    context = av.CodecContext.create(codec, "w")
    context.sample_rate, context.layout, context.format = rate_hz, "mono", "s16"
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
    frame.sample_rate = rate_hz
    return b"".join(bytes(p) for p in [*context.encode(frame), *context.encode(None)])


def decode_with_ffmpeg(data: bytes, codec: str) -> np.ndarray:
    context = av.CodecContext.create(codec, "r")
    context.sample_rate, context.layout = G711_RATE_HZ, "mono"
    return np.concatenate([f.to_ndarray().ravel() for f in context.decode(av.Packet(data))])


def session_update(dialect: str, *, manual: bool) -> dict[str, Any]:
    vad = {"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 500,
           "prefix_padding_ms": 300, "create_response": True,
           "interrupt_response": True}  # fmt: skip
    detection = None if manual else vad
    if dialect == "ga":
        return {
            "type": "realtime",
            "output_modalities": ["audio"],
            "instructions": "Answer briefly.",
            "max_output_tokens": 24,
            "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": RATE_HZ},
                          "turn_detection": detection, "transcription": None},
                "output": {"format": {"type": "audio/pcm", "rate": RATE_HZ}, "voice": "alloy"},
            },
            "tool_choice": "auto",  # valid OpenAI fields this server ignores
            "tools": [],
        }  # fmt: skip
    return {
        "modalities": ["text", "audio"],
        "instructions": "Answer briefly.",
        "max_response_output_tokens": 24,
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "input_audio_transcription": None,
        "turn_detection": detection,
        "voice": "alloy",
        "tools": [],
    }


def text_item(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def audio_turn(conv: Conversation, *, manual: bool) -> dict[str, Any]:
    if manual:
        await conv.speak(question_24k(), trailing_silence_s=0.2)
        await conv.connection.input_audio_buffer.commit()
        await conv.until("input_audio_buffer.committed")
        await conv.connection.response.create()
    else:
        await conv.speak(question_24k(), trailing_silence_s=1.0)
    return await conv.until("response.done")


async def text_turn(conv: Conversation, text: str) -> dict[str, Any]:
    await conv.connection.conversation.item.create(item=text_item(text), previous_item_id=None)
    await conv.until("conversation.item.created")
    modalities = "output_modalities" if conv.dialect == "ga" else "modalities"
    await conv.connection.response.create(
        response={
            modalities: ["audio"] if conv.dialect == "ga" else ["audio", "text"],
            "instructions": "Be brief.",
        }  # fmt: skip
    )
    return await conv.until("response.done")


def check_reply(conv: Conversation, start: int, done: dict[str, Any]) -> None:
    audio_name, transcript_name, _ = NAMES[conv.dialect]
    response = done["response"]
    assert response["status"] == "completed", response
    assert conv.since(start, audio_name), "no reply audio"
    assert conv.since(start, transcript_name), "no transcript deltas"
    pcm = b"".join(base64.b64decode(e["delta"]) for e in conv.since(start, audio_name))
    assert len(pcm) > 0 and len(pcm) % 2 == 0
    [item] = response["output"]
    assert item["role"] == "assistant" and item["status"] == "completed"
    transcript = "".join(e["delta"] for e in conv.since(start, transcript_name))
    assert item["content"][0]["transcript"] == transcript == response["text"]
    usage = response["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["output_token_details"]["audio_tokens"] > 0
    assert usage["output_token_details"]["text_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    created = conv.since(start, "conversation.item.created")
    assert [e["item"]["role"] for e in created][-1] == "assistant"
    assert created[-1]["item"]["id"] == item["id"]


@asynccontextmanager
async def conversation(client: AsyncOpenAI, dialect: str) -> AsyncIterator[Conversation]:
    realtime = client.realtime if dialect == "ga" else client.beta.realtime
    async with realtime.connect(model="step-audio-chat") as connection:
        yield Conversation(connection, dialect)


@pytest.mark.parametrize("manual", [False, True], ids=["server_vad", "manual"])
@pytest.mark.parametrize("dialect", ["ga", "beta"])
async def test_realtime_session_with_the_sdk(
    client: AsyncOpenAI, dialect: str, manual: bool
) -> None:
    """Three turns (audio, text, audio) then a reply cancelled mid-way, one session."""
    async with conversation(client, dialect) as conv:
        created = (await conv.until("session.created"))["session"]
        assert created["id"]
        await conv.connection.session.update(session=session_update(dialect, manual=manual))
        session = (await conv.until("session.updated"))["session"]
        if dialect == "ga":
            assert session["type"] == "realtime"
            assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": RATE_HZ}
            detection = session["audio"]["input"]["turn_detection"]
        else:
            assert session["input_audio_format"] == session["output_audio_format"] == "pcm16"
            detection = session["turn_detection"]
        if manual:
            assert detection is None
        else:
            assert detection["type"] == "server_vad" and detection["silence_duration_ms"] == 500
            assert detection["prefix_padding_ms"] == 300

        start = len(conv.events)
        done = await audio_turn(conv, manual=manual)
        check_reply(conv, start, done)
        user = conv.since(start, "conversation.item.created")[0]["item"]
        assert user["role"] == "user" and user["content"][0]["type"] == "input_audio"
        assert done["response"]["usage"]["input_token_details"]["audio_tokens"] > 0
        speech = conv.since(start, "input_audio_buffer.speech_started")
        assert bool(speech) is not manual  # no VAD events in manual mode
        if speech:
            assert speech[0]["item_id"] == user["id"]

        start = len(conv.events)
        check_reply(conv, start, await text_turn(conv, "Tell me about the sea."))

        start = len(conv.events)
        check_reply(conv, start, await audio_turn(conv, manual=manual))

        # cancel mid-reply: after the first audio, before the end
        await conv.connection.conversation.item.create(item=text_item("Count to ten."))
        await conv.connection.response.create()
        await conv.until(NAMES[dialect][0])
        await conv.connection.response.cancel()
        cancelled = (await conv.until("response.done"))["response"]
        assert cancelled["status"] == "cancelled"
        assert cancelled["status_details"]["reason"] == "client_cancelled"
        assert cancelled["output"][0]["status"] == "incomplete"

        # a text-only reply (output_modalities / modalities ["text"]): no TTS at all
        start = len(conv.events)
        await conv.connection.conversation.item.create(item=text_item("And in writing?"))
        modalities = "output_modalities" if dialect == "ga" else "modalities"
        await conv.connection.response.create(response={modalities: ["text"]})
        text_only = (await conv.until("response.done"))["response"]
        audio_name, transcript_name, text_name = NAMES[dialect]
        assert not conv.since(start, audio_name) and not conv.since(start, transcript_name)
        text = "".join(e["delta"] for e in conv.since(start, text_name))
        assert text and text_only["output"][0]["content"][0]["text"] == text
        assert text_only["usage"]["output_token_details"]["audio_tokens"] == 0
        assert len(conv.since(0, "response.done")) == 5


def record_tts_requests(stack: Stack) -> list[tuple[str, str, float]]:
    """(text, voice, speed) of every synthesis the TTS engine runs (the real engine runs)."""
    engine = stack.services["tts"].engine
    seen: list[tuple[str, str, float]] = []
    original = engine.synthesize

    def recording(text, voice, options, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((text, voice, options.speed))
        return original(text, voice, options, **kwargs)

    engine.synthesize = recording
    return seen


def decoded_seconds(data: bytes, fmt: str) -> float:
    """Decode the body with FFmpeg (PyAV) and check it is the format asked for."""
    if fmt == "pcm":
        return len(data) / 2 / RATE_HZ
    codec = {"mp3": "mp3", "opus": "opus", "aac": "aac", "flac": "flac", "wav": "pcm_s16le"}
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name.startswith(codec[fmt])  # mp3: "mp3float"
        if fmt == "opus":
            assert container.format.name == "ogg"
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.codec_context.sample_rate


async def test_speech_in_every_format_with_openai_voice_instructions_and_speed(
    stack: Stack, client: AsyncOpenAI
) -> None:
    requests = record_tts_requests(stack)
    seconds = {}
    for fmt in ("pcm", "mp3", "opus", "aac", "flac", "wav"):
        reply = await client.audio.speech.create(
            model="gpt-4o-mini-tts",
            voice="alloy",
            input="Hello there.",
            instructions="Speak in a cheerful tone, slowly.",
            speed=1.25,
            response_format=fmt,
            extra_body={"seed": 11},  # the same audio each time (the project's extension)
        )
        seconds[fmt] = decoded_seconds(reply.content, fmt)
    assert seconds["pcm"] > 0.1
    for fmt, duration in seconds.items():  # codecs pad a little (AAC priming, MP3 frames)
        assert abs(duration - seconds["pcm"]) < 0.15, (fmt, seconds)
    assert len(requests) == 6
    # alloy → the configured voice; instructions → Step-Audio tags in front of the text
    assert set(requests) == {("(高兴1)(慢速1)Hello there.", "Tingting", 1.25)}


async def test_speech_speed_changes_the_duration(client: AsyncOpenAI) -> None:
    seconds = {}
    for speed in (1.0, 2.0):
        reply = await client.audio.speech.create(
            model="tts-1", voice="nova", input="Hello there.", speed=speed,
            response_format="pcm", extra_body={"seed": 5},
        )  # fmt: skip
        seconds[speed] = decoded_seconds(reply.content, "pcm")
    assert seconds[2.0] < 0.75 * seconds[1.0]


async def test_models_list_names_the_served_models(client: AsyncOpenAI) -> None:
    ids = [model.id async for model in client.models.list()]
    assert ids == ["step-audio-chat", "step-audio-tts-3b"]
    assert (await client.models.retrieve("step-audio-chat")).id == "step-audio-chat"


@pytest.mark.parametrize(
    ("dialect", "format_", "codec"),
    [("ga", {"type": "audio/pcmu"}, "pcm_mulaw"), ("beta", "g711_alaw", "pcm_alaw")],
)
async def test_g711_in_and_out(client: AsyncOpenAI, dialect: str, format_: Any, codec: str) -> None:
    """A manual audio turn in G.711 at 8 kHz; the reply comes back in G.711 too."""
    async with conversation(client, dialect) as conv:
        await conv.until("session.created")
        if dialect == "ga":
            audio = {"input": {"format": format_, "turn_detection": None},
                     "output": {"format": format_}}  # fmt: skip
            session: dict[str, Any] = {"type": "realtime", "audio": audio}
        else:
            session = {"input_audio_format": format_, "output_audio_format": format_,
                       "turn_detection": None}  # fmt: skip
        await conv.connection.session.update(session=session)
        updated = (await conv.until("session.updated"))["session"]
        if dialect == "ga":
            assert updated["audio"]["output"]["format"] == format_
        else:
            assert updated["output_audio_format"] == format_
        clip = resample(phrase("What is the weather like today?"), 16_000, G711_RATE_HZ)
        await conv.speak(clip, trailing_silence_s=0.2, codec=codec)
        await conv.connection.input_audio_buffer.commit()
        await conv.until("input_audio_buffer.committed")
        await conv.connection.response.create()
        done = (await conv.until("response.done"))["response"]
        assert done["status"] == "completed"
        reply = b"".join(base64.b64decode(e["delta"]) for e in conv.since(0, NAMES[dialect][0]))
        samples = decode_with_ffmpeg(reply, codec)
        assert samples.size == len(reply)  # one byte a sample
        assert abs(samples.size / G711_RATE_HZ - done["audio_seconds"]) < 0.01
        assert np.abs(samples).max() > 100  # not silence


async def test_shape_reveals_the_dialect_and_bad_values_get_named_errors(stack: Stack) -> None:
    """A GA client that the handshake hid (no model, no header) is known by its session shape;
    an invalid OpenAI value still gets invalid_event, naming the client event."""
    url = stack.url.replace("http", "ws") + "/v1/realtime"
    async with websockets.connect(url) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"  # native
        update = {"type": "session.update", "event_id": "evt_1",
                  "session": {"type": "realtime", "output_modalities": ["audio"]}}  # fmt: skip
        await ws.send(json.dumps(update))
        updated = json.loads(await ws.recv())
        GaSessionUpdated.model_validate(updated)
        audio_input = updated["session"]["audio"]["input"]
        assert audio_input["format"] == {"type": "audio/pcm", "rate": RATE_HZ}
        bad = {"type": "session.update", "event_id": "evt_2",
               "session": {"audio": {"input": {"turn_detection": {"type": "server_vad",
                                                                  "threshold": 7}}}}}  # fmt: skip
        await ws.send(json.dumps(bad))
        error = json.loads(await ws.recv())
    assert error["type"] == "error" and error["error"]["code"] == "invalid_event"
    assert error["error"]["event_id"] == "evt_2" and "threshold" in error["error"]["message"]


@pytest.mark.parametrize("interrupt", [True, False], ids=["barge_in", "no_interrupt"])
async def test_speech_during_a_reply_honours_interrupt_response(
    tiny_pack: Path, redis_server: RedisServer, tmp_path: Path, interrupt: bool
) -> None:
    """Server VAD: speech during a reply cancels it (reason turn_detected), unless
    interrupt_response is false; then the reply plays to its end."""
    # every clause lasts 6 s (the TTS LM runs to 250 audio ids): the reply outlasts the speech
    long_clauses = {"ignore_eos": True, "max_audio_tokens": 250}
    seeded = {"turn": {"seed": 7}}
    async with (
        running_stack(
            tiny_pack, redis_server.url, tmp_path, controller=seeded, tts=long_clauses
        ) as stack,
        openai_client(stack) as client,
        conversation(client, "ga") as conv,
    ):
        await conv.until("session.created")
        session = session_update("ga", manual=False)
        session["audio"]["input"]["turn_detection"]["interrupt_response"] = interrupt
        await conv.connection.session.update(session=session)
        await conv.until("session.updated")
        await conv.connection.conversation.item.create(item=text_item("Tell me a story."))
        await conv.connection.response.create()
        await conv.until("response.output_audio.delta")
        await conv.speak(question_24k(), trailing_silence_s=0.2)
        done = (await conv.until("response.done"))["response"]
        assert conv.since(0, "input_audio_buffer.speech_started")
        if interrupt:
            assert done["status"] == "cancelled"
            assert done["status_details"]["reason"] == "turn_detected"
        else:
            assert done["status"] == "completed"
            assert done["audio_seconds"] > 5.0  # all of its first 6 s clause


async def test_speech_as_server_sent_events(client: AsyncOpenAI) -> None:
    events = []
    async with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="coral", input="Hello there.", response_format="pcm",
        stream_format="sse", extra_body={"seed": 11},
    ) as response:  # fmt: skip
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    *deltas, done = events
    assert deltas and all(e["type"] == "speech.audio.delta" for e in deltas)
    pcm = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert len(pcm) > 0.1 * RATE_HZ * 2 and len(pcm) % 2 == 0
    assert done["type"] == "speech.audio.done" and done["usage"]["output_tokens"] > 0
