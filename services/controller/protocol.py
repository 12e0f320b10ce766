"""WebSocket events of /v1/realtime (OpenAI Realtime API names where they fit).

Client events are pydantic models discriminated on ``type``; unknown fields are refused.
Server events are built by small helpers returning dicts, so sending stays cheap.
See docs/protocol.md for the full description.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from services.controller.audio_formats import G711_RATE_HZ
from services.controller.config import OUTPUT_RATES_HZ, Pipeline


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


AudioEncoding = Literal["pcm16", "g711_ulaw", "g711_alaw"]
Modality = Literal["text", "audio"]


def _g711_rate(encoding: str, rate_hz: int | None) -> int | None:
    """G.711 is 8 kHz by definition; other rates are refused rather than silently changed."""
    if encoding == "pcm16":
        return rate_hz
    if rate_hz not in (None, G711_RATE_HZ):
        raise ValueError(f"{encoding} is {G711_RATE_HZ} Hz")
    return G711_RATE_HZ


class InputAudioFormat(_Strict):
    type: AudioEncoding = "pcm16"
    sample_rate_hz: int = Field(16_000, ge=8_000, le=48_000)

    def model_post_init(self, _context: Any) -> None:
        explicit = self.sample_rate_hz if "sample_rate_hz" in self.model_fields_set else None
        self.sample_rate_hz = _g711_rate(self.type, explicit) or self.sample_rate_hz


class OutputAudioFormat(_Strict):
    type: AudioEncoding = "pcm16"
    sample_rate_hz: int = 24_000
    transport: Literal["json", "binary"] = "json"  # base64 in response.audio.delta, or binary

    def model_post_init(self, _context: Any) -> None:
        explicit = self.sample_rate_hz if "sample_rate_hz" in self.model_fields_set else None
        self.sample_rate_hz = _g711_rate(self.type, explicit) or self.sample_rate_hz
        if self.type == "pcm16" and self.sample_rate_hz not in OUTPUT_RATES_HZ:
            raise ValueError(f"output sample_rate_hz must be one of {OUTPUT_RATES_HZ}")


class TurnDetection(_Strict):
    type: Literal["server_vad", "none"] = "server_vad"
    silence_duration_ms: int | None = Field(None, ge=100, le=5000)
    min_speech_duration_ms: int | None = Field(None, ge=30, le=5000)
    threshold: float | None = Field(None, ge=0.05, le=0.95)
    speculate_after_ms: int | None = Field(None, ge=50, le=5000)
    prefix_padding_ms: int | None = Field(None, ge=0, le=1000)  # audio kept before speech start
    create_response: bool | None = None  # reply at end of turn (server_vad)
    interrupt_response: bool | None = None  # speech cancels a reply in progress (barge-in)


class SessionConfig(_Strict):
    voice: str | None = Field(None, max_length=128)
    instructions: str | None = Field(None, max_length=8000)  # system prompt
    input_audio_format: InputAudioFormat | None = None
    output_audio_format: OutputAudioFormat | None = None
    turn_detection: TurnDetection | None = None
    output_modalities: list[Modality] | None = Field(None, min_length=1, max_length=2)
    speed: float | None = Field(None, ge=0.25, le=4.0)
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
    type: Literal["input_text", "text", "output_text"] = "input_text"
    text: str


class ContentAudio(_Strict):
    type: Literal["input_audio"]
    audio: str = Field(max_length=8 * 1024 * 1024)  # base64, in the session's input format


class ConversationItem(_Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant"] = "user"
    content: list[ContentText | ContentAudio] = Field(min_length=1, max_length=16)


class ItemCreateEvent(_Strict):
    type: Literal["conversation.item.create"]
    event_id: str | None = None
    item: ConversationItem


class ResponseOptions(_Strict):
    """Per-response overrides (OpenAI's ``response`` object of response.create)."""

    output_modalities: list[Modality] | None = Field(None, min_length=1, max_length=2)
    instructions: str | None = Field(None, max_length=8000)
    voice: str | None = Field(None, max_length=128)
    temperature: float | None = Field(None, ge=0, le=2)
    max_output_tokens: int | None = Field(None, ge=1, le=8192)
    metadata: dict[str, str] | None = None  # echoed in response.created / response.done


class ResponseCreateEvent(_Strict):
    type: Literal["response.create"]
    event_id: str | None = None
    response: ResponseOptions | None = None


class ResponseCancelEvent(_Strict):
    type: Literal["response.cancel"]
    event_id: str | None = None
    response_id: str | None = None


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


def error_event(
    code: str, message: str, event_type: str | None = None, client_event_id: str | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"type": "invalid_request_error", "code": code, "message": message}
    if code in ("internal_error", "llm_unavailable", "tts_unavailable", "vad_unavailable"):
        error["type"] = "server_error"
    if event_type:
        error["event_type"] = event_type
    if client_event_id:
        error["event_id"] = client_event_id  # OpenAI: the id of the client event that failed
    return {"type": "error", "error": error}


class VoiceId(_Strict):
    id: str = Field(max_length=128)


class SpeechRequest(_Strict):
    """POST /v1/audio/speech (OpenAI-compatible body; ``sample_rate`` and ``seed`` are the
    project's extensions)."""

    model: str = Field("step-audio-tts-3b", max_length=128)  # any name: one TTS is served
    input: str
    voice: str | VoiceId | None = Field(None)
    instructions: str | None = Field(None, max_length=4096)  # → Step-Audio tags (voices.py)
    response_format: Literal["wav", "pcm", "flac", "mp3", "opus", "aac"] = "wav"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"
    sample_rate: int | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)

    @property
    def voice_name(self) -> str | None:
        return self.voice.id if isinstance(self.voice, VoiceId) else self.voice
