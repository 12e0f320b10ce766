"""WebSocket events of /v1/realtime (OpenAI Realtime API names where they fit).

Client events are pydantic models discriminated on ``type``; unknown fields are refused.
Server events are built by small helpers returning dicts, so sending stays cheap.
See docs/protocol.md for the full description.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from services.controller.config import OUTPUT_RATES_HZ, Pipeline


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputAudioFormat(_Strict):
    type: Literal["pcm16"] = "pcm16"
    sample_rate_hz: int = Field(16_000, ge=8_000, le=48_000)


class OutputAudioFormat(_Strict):
    type: Literal["pcm16"] = "pcm16"
    sample_rate_hz: int = 24_000
    transport: Literal["json", "binary"] = "json"  # base64 in response.audio.delta, or binary

    def model_post_init(self, _context: Any) -> None:
        if self.sample_rate_hz not in OUTPUT_RATES_HZ:
            raise ValueError(f"output sample_rate_hz must be one of {OUTPUT_RATES_HZ}")


class TurnDetection(_Strict):
    type: Literal["server_vad", "none"] = "server_vad"
    silence_duration_ms: int | None = Field(None, ge=100, le=5000)
    min_speech_duration_ms: int | None = Field(None, ge=30, le=5000)
    threshold: float | None = Field(None, ge=0.05, le=0.95)
    speculate_after_ms: int | None = Field(None, ge=50, le=5000)


class SessionConfig(_Strict):
    voice: str | None = Field(None, max_length=128)
    instructions: str | None = Field(None, max_length=8000)  # system prompt
    input_audio_format: InputAudioFormat | None = None
    output_audio_format: OutputAudioFormat | None = None
    turn_detection: TurnDetection | None = None
    speculative: bool | None = None
    pipeline: Pipeline | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    max_response_output_tokens: int | None = Field(None, ge=1, le=8192)
    audio_turns_kept: int | None = Field(None, ge=0, le=64)
    transcribe: bool | None = None


class SessionUpdateEvent(_Strict):
    type: Literal["session.update"]
    event_id: str | None = None
    session: SessionConfig


class AudioAppendEvent(_Strict):
    type: Literal["input_audio_buffer.append"]
    event_id: str | None = None
    audio: str  # base64 PCM16 at the session's input rate


class AudioCommitEvent(_Strict):
    type: Literal["input_audio_buffer.commit"]
    event_id: str | None = None


class AudioClearEvent(_Strict):
    type: Literal["input_audio_buffer.clear"]
    event_id: str | None = None


class ContentText(_Strict):
    type: Literal["input_text", "text"] = "input_text"
    text: str


class ConversationItem(_Strict):
    type: Literal["message"] = "message"
    role: Literal["user"] = "user"
    content: list[ContentText] = Field(min_length=1, max_length=16)


class ItemCreateEvent(_Strict):
    type: Literal["conversation.item.create"]
    event_id: str | None = None
    item: ConversationItem


class ResponseCreateEvent(_Strict):
    type: Literal["response.create"]
    event_id: str | None = None


class ResponseCancelEvent(_Strict):
    type: Literal["response.cancel"]
    event_id: str | None = None


ClientEvent = Annotated[
    SessionUpdateEvent
    | AudioAppendEvent
    | AudioCommitEvent
    | AudioClearEvent
    | ItemCreateEvent
    | ResponseCreateEvent
    | ResponseCancelEvent,
    Field(discriminator="type"),
]
CLIENT_EVENT = TypeAdapter(ClientEvent)
CLIENT_EVENT_TYPES = frozenset(
    model.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
    for model in (
        SessionUpdateEvent,
        AudioAppendEvent,
        AudioCommitEvent,
        AudioClearEvent,
        ItemCreateEvent,
        ResponseCreateEvent,
        ResponseCancelEvent,
    )
)


def error_event(code: str, message: str, event_type: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": "invalid_request_error", "code": code, "message": message}
    if code in ("internal_error", "llm_unavailable", "tts_unavailable", "vad_unavailable"):
        error["type"] = "server_error"
    if event_type:
        error["event_type"] = event_type
    return {"type": "error", "error": error}


class SpeechRequest(_Strict):
    """POST /v1/audio/speech (OpenAI-compatible body)."""

    model: str = Field("step-audio-tts-3b", max_length=128)
    input: str
    voice: str | None = Field(None, max_length=128)
    response_format: Literal["wav", "pcm", "flac", "mp3"] = "wav"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    sample_rate: int | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
