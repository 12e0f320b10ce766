"""Conversation context: session settings and the LLM prompt built from stored turns.

Text-based context (Step-Audio's technique): the newest ``audio_turns_kept`` user turns go to
the LLM as audio tokens, older ones as their transcripts; a turn whose transcript is not ready
yet stays audio. Assistant turns are always text. The LLM service enforces the token budget
(``max_prompt_tokens``) with exact tokenization by dropping the oldest messages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from stepaudio.serving.v1 import llm_pb2

from services.controller.config import TurnSettings
from services.controller.protocol import SessionConfig
from services.controller.store import Turn

ASR_SYSTEM_PROMPT = (
    "请记录下你所听到的语音内容。"  # "write down what you hear" (see docs/protocol.md)
)


@dataclass
class SessionSettings:
    """One session's settings: defaults from TurnSettings, changed by session.update."""

    voice: str
    system_prompt: str
    input_sample_rate_hz: int = 16_000
    input_encoding: str = "pcm16"  # pcm16 | g711_ulaw | g711_alaw
    output_sample_rate_hz: int = 24_000
    output_encoding: str = "pcm16"
    output_transport: str = "json"
    audio_output: bool = True  # False: text-only replies (output_modalities ["text"])
    speed: float = 1.0  # TTS speaking rate
    turn_detection: str = "server_vad"
    prefix_padding_ms: int = 200  # audio before the detected speech start kept in the turn
    create_response: bool = True  # server_vad: reply at end of turn
    interrupt_response: bool = True  # server_vad: speech cancels a reply (barge-in)
    silence_ms: int = 600
    min_speech_ms: int = 250
    vad_threshold: float = 0.5
    speculate_after_ms: int = 250
    speculative: bool = True
    pipeline: str = "cascade"
    temperature: float = 0.7
    max_reply_tokens: int = 512
    audio_turns_kept: int = 1
    transcribe: bool = True

    @classmethod
    def from_defaults(cls, turn: TurnSettings) -> SessionSettings:
        return cls(
            voice=turn.voice,
            system_prompt=turn.system_prompt,
            output_sample_rate_hz=turn.output_sample_rate_hz,
            silence_ms=turn.silence_ms,
            min_speech_ms=turn.min_speech_ms,
            vad_threshold=turn.vad_threshold,
            speculate_after_ms=turn.speculate_after_ms,
            speculative=turn.speculative,
            pipeline=turn.pipeline,
            temperature=turn.temperature,
            max_reply_tokens=turn.max_reply_tokens,
            audio_turns_kept=turn.audio_turns_kept,
            transcribe=turn.transcribe,
        )

    def merged(self, stored: dict[str, Any]) -> SessionSettings:
        known = {f.name for f in fields(self)}
        values = asdict(self) | {k: v for k, v in stored.items() if k in known}
        return SessionSettings(**values)

    def apply(self, update: SessionConfig) -> set[str]:
        """Apply a session.update; returns the names of the settings that changed."""
        changes: dict[str, Any] = {
            "voice": update.voice,
            "system_prompt": update.instructions,
            "speculative": update.speculative,
            "pipeline": update.pipeline,
            "temperature": update.temperature,
            "max_reply_tokens": update.max_response_output_tokens,
            "audio_turns_kept": update.audio_turns_kept,
            "transcribe": update.transcribe,
            "speed": update.speed,
        }
        if update.output_modalities is not None:
            changes["audio_output"] = "audio" in update.output_modalities
        if update.input_audio_format is not None:
            changes["input_sample_rate_hz"] = update.input_audio_format.sample_rate_hz
            changes["input_encoding"] = update.input_audio_format.type
        if update.output_audio_format is not None:
            changes["output_sample_rate_hz"] = update.output_audio_format.sample_rate_hz
            changes["output_encoding"] = update.output_audio_format.type
            changes["output_transport"] = update.output_audio_format.transport
        if update.turn_detection is not None:
            detection = update.turn_detection
            changes |= {
                "turn_detection": detection.type,
                "silence_ms": detection.silence_duration_ms,
                "min_speech_ms": detection.min_speech_duration_ms,
                "vad_threshold": detection.threshold,
                "speculate_after_ms": detection.speculate_after_ms,
                "prefix_padding_ms": detection.prefix_padding_ms,
                "create_response": detection.create_response,
                "interrupt_response": detection.interrupt_response,
            }
        changed = set()
        for name, value in changes.items():
            if value is not None and getattr(self, name) != value:
                setattr(self, name, value)
                changed.add(name)
        return changed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text_message(role: str, text: str) -> llm_pb2.ChatMessage:
    return llm_pb2.ChatMessage(role=role, content=[llm_pb2.ContentPart(text=text)])


def _audio_message(token_ids: list[int]) -> llm_pb2.ChatMessage:
    audio = llm_pb2.ContentPart(audio=llm_pb2.AudioTokens(token_ids=token_ids))
    return llm_pb2.ChatMessage(role="user", content=[audio])


@dataclass
class PromptStats:
    audio_turns: int = 0  # user turns sent as audio tokens
    text_turns: int = 0  # user audio turns replaced by their transcripts
    audio_tokens_replaced: int = 0
    transcript_tokens: int = 0


def build_messages(
    system_prompt: str, turns: list[Turn], audio_turns_kept: int
) -> tuple[list[llm_pb2.ChatMessage], PromptStats]:
    """Chat messages for the LLM: system prompt, then every stored turn (oldest first)."""
    messages = [_text_message("system", system_prompt)] if system_prompt else []
    stats = PromptStats()
    audio_turn_ids = [t.id for t in turns if t.role == "user" and t.audio_token_ids]
    keep_audio = set(audio_turn_ids[-audio_turns_kept:]) if audio_turns_kept else set()
    for turn in turns:
        if turn.role == "assistant":
            if turn.text:
                messages.append(_text_message("assistant", turn.text))
        elif turn.audio_token_ids and (turn.id in keep_audio or turn.transcript is None):
            messages.append(_audio_message(turn.audio_token_ids))
            stats.audio_turns += 1
        elif turn.audio_token_ids:
            messages.append(_text_message("user", turn.transcript or ""))
            stats.text_turns += 1
            stats.audio_tokens_replaced += len(turn.audio_token_ids)
            stats.transcript_tokens += turn.transcript_tokens or 1
        elif turn.text:
            messages.append(_text_message("user", turn.text))
    return messages, stats


def transcription_messages(token_ids: list[int]) -> list[llm_pb2.ChatMessage]:
    """The ASR prompt for the Chat model: an instruction, then the user's audio."""
    return [_text_message("system", ASR_SYSTEM_PROMPT), _audio_message(token_ids)]
