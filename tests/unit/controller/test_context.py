"""Prompt building from stored turns (text-based context) and session settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.controller.config import TurnSettings
from services.controller.context import SessionSettings, build_messages, transcription_messages
from services.controller.protocol import CLIENT_EVENT, SessionConfig
from services.controller.store import Turn


def roles_and_kinds(messages: list) -> list[tuple[str, str]]:
    return [(m.role, m.content[0].WhichOneof("part")) for m in messages]


def test_newest_k_user_turns_stay_audio_older_ones_become_transcripts() -> None:
    turns = [
        Turn(role="user", audio_token_ids=[65536] * 50, transcript="first", transcript_tokens=3),
        Turn(role="assistant", text="a1"),
        Turn(role="user", audio_token_ids=[65537] * 40, transcript="second", transcript_tokens=2),
        Turn(role="assistant", text="a2"),
        Turn(role="user", audio_token_ids=[65538] * 30),  # no transcript yet
    ]
    messages, stats = build_messages("sys", turns, audio_turns_kept=1)
    assert roles_and_kinds(messages) == [
        ("system", "text"),
        ("user", "text"),
        ("assistant", "text"),
        ("user", "text"),
        ("assistant", "text"),
        ("user", "audio"),
    ]
    assert messages[1].content[0].text == "first"
    assert (stats.audio_tokens_replaced, stats.transcript_tokens) == (90, 5)


def test_k_zero_and_missing_transcripts() -> None:
    turns = [
        Turn(role="user", audio_token_ids=[65536] * 5),  # transcript not ready: stays audio
        Turn(role="user", audio_token_ids=[65536] * 5, transcript="done"),
        Turn(role="user", text="typed"),
    ]
    messages, stats = build_messages("", turns, audio_turns_kept=0)
    assert roles_and_kinds(messages) == [("user", "audio"), ("user", "text"), ("user", "text")]
    assert stats.audio_turns == 1 and stats.text_turns == 1
    messages, _ = build_messages("", turns, audio_turns_kept=5)
    assert roles_and_kinds(messages)[:2] == [("user", "audio"), ("user", "audio")]


def test_transcription_prompt_shape() -> None:
    messages = transcription_messages([65536, 66560])
    assert [m.role for m in messages] == ["system", "user"]
    assert list(messages[1].content[0].audio.token_ids) == [65536, 66560]


def test_session_update_applies_only_given_fields() -> None:
    settings = SessionSettings.from_defaults(TurnSettings())
    event = CLIENT_EVENT.validate_python(
        {
            "type": "session.update",
            "session": {
                "voice": "Other",
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 900},
                "output_audio_format": {"sample_rate_hz": 16000},
            },
        }
    )
    changed = settings.apply(event.session)
    assert changed == {"voice", "silence_ms", "output_sample_rate_hz"}
    assert settings.min_speech_ms == TurnSettings().min_speech_ms
    restored = SessionSettings.from_defaults(TurnSettings()).merged(settings.to_dict())
    assert restored == settings


@pytest.mark.parametrize(
    "session",
    [
        {"output_audio_format": {"sample_rate_hz": 44100}},
        {"input_audio_format": {"sample_rate_hz": 4000}},
        {"pipeline": "other"},
        {"unknown_field": 1},
    ],
)
def test_invalid_session_updates_are_refused(session: dict) -> None:
    with pytest.raises(ValidationError):
        SessionConfig.model_validate(session)
