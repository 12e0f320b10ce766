"""The OpenAI edge: GA and beta client events → the native models; G.711; speech tags."""

from __future__ import annotations

from typing import Any

import av
import numpy as np
import pytest
from pydantic import ValidationError

from services.controller.audio_formats import decode_input, encode_output, g711_decode
from services.controller.context import SessionSettings
from services.controller.openai_events import (
    EdgeError,
    EventRenderer,
    dialect_from_handshake,
    normalize_client_event,
)
from services.controller.protocol import CLIENT_EVENT, SessionUpdateEvent
from services.controller.voices import DEFAULT_ALIASES, apply_instructions, resolve_voice


def native(raw: dict[str, Any]) -> Any:
    return CLIENT_EVENT.validate_python(normalize_client_event(raw).event)


def applied(session: dict[str, Any]) -> SessionSettings:
    event = native({"type": "session.update", "session": session})
    assert isinstance(event, SessionUpdateEvent)
    settings = SessionSettings(voice="Tingting", system_prompt="")
    settings.apply(event.session)
    return settings


def test_ga_session_maps_onto_the_native_settings() -> None:
    settings = applied(
        {
            "type": "realtime",
            "output_modalities": ["text"],
            "max_output_tokens": "inf",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "turn_detection": {"type": "server_vad", "threshold": 0.6,
                                       "silence_duration_ms": 700, "prefix_padding_ms": 300,
                                       "create_response": False, "interrupt_response": False},
                    "noise_reduction": {"type": "near_field"},
                },
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "speed": 1.2},
            },
        }
    )  # fmt: skip
    assert (settings.input_encoding, settings.input_sample_rate_hz) == ("g711_ulaw", 8000)
    assert (settings.output_encoding, settings.output_sample_rate_hz) == ("pcm16", 24000)
    assert (settings.vad_threshold, settings.silence_ms, settings.prefix_padding_ms) == (
        0.6, 700, 300,
    )  # fmt: skip
    assert not settings.create_response and not settings.interrupt_response
    assert not settings.audio_output and settings.speed == 1.2
    assert settings.max_reply_tokens == 8192


def test_beta_session_strings_and_null_turn_detection() -> None:
    settings = applied(
        {"modalities": ["text", "audio"], "input_audio_format": "pcm16",
         "output_audio_format": "g711_alaw", "turn_detection": None,
         "input_audio_transcription": None, "voice": "alloy", "tools": []}
    )  # fmt: skip
    assert (settings.input_encoding, settings.input_sample_rate_hz) == ("pcm16", 24000)
    assert (settings.output_encoding, settings.output_sample_rate_hz) == ("g711_alaw", 8000)
    assert settings.turn_detection == "none" and not settings.transcribe
    assert settings.audio_output


def test_ignored_openai_fields_are_reported_and_unknown_ones_refused() -> None:
    normalized = normalize_client_event(
        {"type": "session.update", "session": {"type": "realtime", "tools": [], "tracing": "auto"}}
    )
    assert normalized.hint == "ga"
    assert normalized.ignored == ["session.tools", "session.tracing"]
    with pytest.raises(ValidationError):
        native({"type": "session.update", "session": {"voicee": "alloy"}})
    with pytest.raises(EdgeError):
        native({"type": "session.update", "session": {"audio": {"inputs": {}}}})
    with pytest.raises(EdgeError):
        native({"type": "session.update", "session": {"type": "transcription"}})
    wrong_rate = {"input_audio_format": {"type": "g711_ulaw", "sample_rate_hz": 16000}}
    with pytest.raises(ValidationError):  # G.711 is 8 kHz
        native({"type": "session.update", "session": wrong_rate})


def test_items_and_responses_in_both_shapes() -> None:
    item = native(
        {"type": "conversation.item.create", "previous_item_id": "x",
         "item": {"id": "i1", "object": "realtime.item", "type": "message", "role": "user",
                  "content": [{"type": "input_text", "text": "hi"}]}}
    )  # fmt: skip
    assert item.item.content[0].text == "hi"
    ga = native(
        {"type": "response.create",
         "response": {"output_modalities": ["text"], "instructions": "short",
                      "conversation": "auto", "max_output_tokens": 10,
                      "audio": {"output": {"voice": "ash"}}}}
    )  # fmt: skip
    beta = native(
        {"type": "response.create",
         "response": {"modalities": ["text"], "max_response_output_tokens": 10, "voice": "ash"}}
    )  # fmt: skip
    for event in (ga, beta):
        assert event.response.output_modalities == ["text"]
        assert event.response.max_output_tokens == 10 and event.response.voice == "ash"


def test_dialects_from_the_handshake_and_event_names() -> None:
    assert dialect_from_handshake({"openai-beta": "realtime=v1"}, {"model": "m"}) == "beta"
    assert dialect_from_handshake({}, {"model": "m"}) == "ga"
    assert dialect_from_handshake({}, {}) == "native"
    delta = {"type": "response.audio_transcript.delta", "delta": "x"}
    assert EventRenderer("ga").render(delta)["type"] == "response.output_audio_transcript.delta"
    assert EventRenderer("beta").render(delta)["type"] == "response.audio_transcript.delta"
    first, second = (EventRenderer("ga").render(delta) for _ in range(2))
    assert first["event_id"] and second["event_id"] and first["event_id"] != second["event_id"]
    assistant = {"type": "conversation.item.created", "item": {"role": "assistant"}}
    assert EventRenderer("native").render(assistant) is None


@pytest.mark.parametrize(("encoding", "codec"), [("g711_ulaw", "pcm_mulaw"),
                                                 ("g711_alaw", "pcm_alaw")])  # fmt: skip
def test_g711_matches_ffmpeg_and_round_trips(encoding: str, codec: str) -> None:
    tone = (0.5 * np.sin(np.arange(800) * 2 * np.pi * 440 / 8000)).astype(np.float32)
    encoded = encode_output(tone, encoding)
    assert len(encoded) == tone.size  # one byte a sample
    decoder = av.CodecContext.create(codec, "r")
    decoder.sample_rate, decoder.layout = 8000, "mono"
    reference = np.concatenate([f.to_ndarray().ravel() for f in decoder.decode(av.Packet(encoded))])
    assert np.array_equal(reference, g711_decode(encoded, encoding))
    assert np.abs(decode_input(encoded, encoding) - tone).max() < 0.02


def test_openai_voices_and_instructions() -> None:
    assert resolve_voice("Alloy", DEFAULT_ALIASES) == "Tingting"
    assert resolve_voice("MyClone", DEFAULT_ALIASES) == "MyClone"
    assert apply_instructions("Hi.", "Speak in a cheerful tone, slowly") == "(高兴1)(慢速1)Hi."
    assert apply_instructions("Hi.", "Rap it in Cantonese") == "(RAP)(粤语)Hi."
    assert apply_instructions("Hi.", "Read it like it was made by hand") == "Hi."
    assert apply_instructions("Hi.", "(四川话)") == "(四川话)Hi."
    assert apply_instructions("Hi.", None) == "Hi."
