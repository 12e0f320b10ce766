"""The OpenAI edge of /v1/realtime: GA and beta event shapes ↔ the controller's own protocol.

Three dialects share one socket handler:
  native  the project's own events (docs/protocol.md; the browser client and the CLI)
  beta    OpenAI Realtime beta (``client.beta.realtime``; handshake header
          ``OpenAI-Beta: realtime=v1``): flat session, ``input_audio_format: "pcm16"``,
          ``response.audio.delta`` / ``response.audio_transcript.delta``
  ga      OpenAI Realtime GA (``client.realtime``; a ``model`` query parameter and no beta
          header, or a ``session.update`` with ``type: "realtime"``): nested ``audio``
          session, ``response.output_audio.delta`` / ``response.output_audio_transcript.delta``

Client events of any dialect are rewritten here into the native shape and then validated by the
native models (protocol.py), so invalid values still get the named error. OpenAI fields the
controller has no use for (tools, tracing, noise reduction…) are accepted, dropped and reported
back to the caller for a log note; anything else unknown is still refused. Server events are
built in the native shape with the OpenAI fields added, and renamed here per dialect.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Dialect = Literal["native", "beta", "ga"]
OPENAI_PCM_RATE_HZ = 24_000  # OpenAI's pcm16 / audio/pcm is 24 kHz mono
MAX_OUTPUT_TOKENS = 8192  # what "inf" means here

# OpenAI fields that are valid but have no meaning for this server: accepted and ignored
_IGNORED_SESSION = frozenset(
    {
        "id", "object", "model", "tools", "tool_choice", "tracing", "include", "prompt",
        "truncation", "reasoning", "parallel_tool_calls", "input_audio_noise_reduction",
        "client_secret", "expires_at",
    }
)  # fmt: skip
_IGNORED_RESPONSE = frozenset(
    {
        "conversation", "input", "tools", "tool_choice", "prompt", "reasoning",
        "parallel_tool_calls", "output_audio_format", "tracing",
    }
)  # fmt: skip
_IGNORED_ITEM = frozenset({"id", "object", "status"})
_IGNORED_VAD = frozenset({"idle_timeout_ms", "eagerness"})
_FORMAT_NAMES = {"pcm16": "pcm16", "g711_ulaw": "g711_ulaw", "g711_alaw": "g711_alaw"}
_GA_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}


class EdgeError(ValueError):
    """An OpenAI-shaped event this server cannot take (reported as invalid_event)."""


@dataclass
class Normalized:
    event: dict[str, Any]  # native shape, still to be validated
    ignored: list[str] = field(default_factory=list)  # dotted paths of dropped OpenAI fields
    hint: Dialect | None = None  # the dialect the event's shape reveals, if any


def dialect_from_handshake(headers: Mapping[str, str], query: Mapping[str, str]) -> Dialect:
    """What the SDKs send: the beta client adds ``OpenAI-Beta: realtime=v1``; both pass
    ``?model=``; the project's own clients send neither."""
    if "realtime=v1" in headers.get("openai-beta", "").replace(" ", ""):
        return "beta"
    if "model" in query:
        return "ga"
    return "native"


# -- client events → native --------------------------------------------------------------------


def normalize_client_event(raw: dict[str, Any]) -> Normalized:
    out = Normalized(dict(raw))
    kind = raw.get("type")
    if kind == "session.update" and isinstance(raw.get("session"), dict):
        out.event["session"] = _session(raw["session"], out)
    elif kind == "conversation.item.create":
        _drop(out.event, {"previous_item_id"}, "", out)  # items are appended at the end
        if isinstance(raw.get("item"), dict):
            item = dict(raw["item"])
            _drop(item, _IGNORED_ITEM, "item.", out)
            out.event["item"] = item
    elif kind == "response.create" and isinstance(raw.get("response"), dict):
        out.event["response"] = _response_options(raw["response"], out)
    return out


def _drop(obj: dict[str, Any], names: Iterable[str], prefix: str, out: Normalized) -> None:
    for name in sorted(set(names) & obj.keys()):
        del obj[name]
        out.ignored.append(prefix + name)


def _session(session: dict[str, Any], out: Normalized) -> dict[str, Any]:
    s = dict(session)
    if "type" in s:
        kind = s.pop("type")
        if kind != "realtime":
            raise EdgeError(f"session.type: only 'realtime' sessions are served, not {kind!r}")
        out.hint = "ga"
    if "audio" in s:
        out.hint = "ga"
        _flatten_ga_audio(s, s.pop("audio"), out)
    if "modalities" in s:  # beta name
        out.hint = out.hint or "beta"
        s["output_modalities"] = s.pop("modalities")
    for name in ("input_audio_format", "output_audio_format"):
        if name in s:
            s[name] = _audio_format(s[name], name, out)
    if "turn_detection" in s:
        s["turn_detection"] = _turn_detection(s["turn_detection"], out)
    if "input_audio_transcription" in s:  # beta name; GA's audio.input.transcription
        transcription = s.pop("input_audio_transcription")
        s.setdefault("transcribe", transcription is not None)
        if transcription:
            out.ignored.append("input_audio_transcription.*: the Chat model transcribes")
    for name in ("max_output_tokens", "max_response_output_tokens"):
        if name in s:
            value = s.pop(name)
            s["max_response_output_tokens"] = MAX_OUTPUT_TOKENS if value == "inf" else value
    if isinstance(s.get("voice"), dict) and "id" in s["voice"]:  # GA custom voice {"id": …}
        s["voice"] = s["voice"]["id"]
    _drop(s, _IGNORED_SESSION, "session.", out)
    return s


def _flatten_ga_audio(s: dict[str, Any], audio: Any, out: Normalized) -> None:
    if not isinstance(audio, dict):
        raise EdgeError("session.audio: must be an object")
    unknown = audio.keys() - {"input", "output"}
    if unknown:
        raise EdgeError(f"session.audio.{sorted(unknown)[0]}: Extra inputs are not permitted")
    source, sink = audio.get("input") or {}, audio.get("output") or {}
    if not isinstance(source, dict) or not isinstance(sink, dict):
        raise EdgeError("session.audio.input / output: must be objects")
    known_in = {"format", "turn_detection", "transcription", "noise_reduction"}
    known_out = {"format", "voice", "speed"}
    for where, part, known in (("input", source, known_in), ("output", sink, known_out)):
        if extra := sorted(part.keys() - known):
            raise EdgeError(f"session.audio.{where}.{extra[0]}: Extra inputs are not permitted")
    if "format" in source:
        s["input_audio_format"] = source["format"]
    if "turn_detection" in source:
        s["turn_detection"] = source["turn_detection"]
    if "transcription" in source:
        s["input_audio_transcription"] = source["transcription"]
    if "noise_reduction" in source:
        out.ignored.append("session.audio.input.noise_reduction")
    for name, target in (("format", "output_audio_format"), ("voice", "voice"), ("speed", "speed")):
        if name in sink:
            s[target] = sink[name]


def _audio_format(value: Any, name: str, out: Normalized) -> Any:
    """``"pcm16"`` (beta), ``{"type": "audio/pcm", "rate": 24000}`` (GA), or the native
    ``{"type": "pcm16", "sample_rate_hz": …}`` (the project's extension: other rates)."""
    if isinstance(value, str):
        out.hint = out.hint or "beta"
        if value not in _FORMAT_NAMES:
            raise EdgeError(f"session.{name}: one of pcm16, g711_ulaw, g711_alaw")
        if value == "pcm16":
            return {"type": "pcm16", "sample_rate_hz": OPENAI_PCM_RATE_HZ}
        return {"type": value}
    if isinstance(value, dict) and value.get("type") in _GA_FORMATS:
        fmt = dict(value)
        encoding = _GA_FORMATS[fmt.pop("type")]
        rate = fmt.pop("rate", OPENAI_PCM_RATE_HZ if encoding == "pcm16" else None)
        native: dict[str, Any] = {"type": encoding, **fmt}  # anything left is refused later
        if rate is not None:
            native["sample_rate_hz"] = rate
        return native
    return value


def _turn_detection(value: Any, out: Normalized) -> Any:
    """``null`` = manual turns (commit + response.create); ``semantic_vad`` is served by the
    server VAD (noted)."""
    if value is None:
        return {"type": "none"}
    if not isinstance(value, dict):
        return value
    detection = dict(value)
    if detection.get("type") == "semantic_vad":
        detection["type"] = "server_vad"
        out.ignored.append("turn_detection.type=semantic_vad (served as server_vad)")
    detection.setdefault("type", "server_vad")
    _drop(detection, _IGNORED_VAD, "turn_detection.", out)
    return detection


def _response_options(response: dict[str, Any], out: Normalized) -> dict[str, Any]:
    r = dict(response)
    if "modalities" in r:
        r["output_modalities"] = r.pop("modalities")
    if "max_response_output_tokens" in r:
        r["max_output_tokens"] = r.pop("max_response_output_tokens")
    if r.get("max_output_tokens") == "inf":
        r["max_output_tokens"] = MAX_OUTPUT_TOKENS
    audio = r.pop("audio", None)
    if isinstance(audio, dict) and isinstance(audio.get("output"), dict):
        output = dict(audio["output"])
        if "voice" in output:
            voice = output.pop("voice")
            r["voice"] = voice["id"] if isinstance(voice, dict) else voice
        if output.pop("format", None) is not None:
            out.ignored.append("response.audio.output.format (the session's format is used)")
    if isinstance(r.get("voice"), dict):
        r["voice"] = r["voice"].get("id")
    _drop(r, _IGNORED_RESPONSE, "response.", out)
    return r


# -- server events in the client's dialect -----------------------------------------------------

_GA_NAMES = {
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
}
# events the project's own clients never asked for (their names predate the OpenAI layout)
_NOT_NATIVE = frozenset(
    {
        "response.output_item.added", "response.output_item.done",
        "response.content_part.added", "response.content_part.done",
        "response.audio.done", "response.audio_transcript.done", "response.text.done",
    }
)  # fmt: skip


class EventRenderer:
    """Names and ids server events for one connection's dialect (cheap: one dict per event)."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect: Dialect = dialect
        self._prefix = f"event_{uuid.uuid4().hex[:8]}"
        self._counter = itertools.count(1)

    def render(self, event: dict[str, Any]) -> dict[str, Any] | None:
        kind = event["type"]
        if self.dialect == "native":
            if kind in _NOT_NATIVE or _is_assistant_item(event):
                return None
        elif self.dialect == "ga":
            kind = _GA_NAMES.get(kind, kind)
        return {**event, "type": kind, "event_id": f"{self._prefix}_{next(self._counter)}"}

    def transcript_delta_type(self, audio: bool) -> str:
        """The text stream of a reply: the audio's transcript, or text-only output."""
        if self.dialect == "native" or not audio:
            return "response.text.delta"
        return "response.audio_transcript.delta"

    def modalities(self, audio: bool) -> dict[str, list[str]]:
        if self.dialect == "ga":
            return {"output_modalities": ["audio"] if audio else ["text"]}
        return {"modalities": ["text", "audio"] if audio else ["text"]}


def _is_assistant_item(event: dict[str, Any]) -> bool:
    return bool(
        event["type"] == "conversation.item.created" and event["item"]["role"] == "assistant"
    )


# -- shapes shared by the event builders -------------------------------------------------------


def audio_format_object(dialect: Dialect, encoding: str, rate_hz: int) -> Any:
    if dialect == "beta":
        return encoding  # beta names the format only ("pcm16" is 24 kHz)
    ga_type = {v: k for k, v in _GA_FORMATS.items()}[encoding]
    return {"type": ga_type, "rate": rate_hz} if encoding == "pcm16" else {"type": ga_type}


def assistant_item(
    dialect: Dialect, item_id: str, status: str, audio: bool, text: str = ""
) -> dict[str, Any]:
    """The assistant message item of a reply (content: its transcript or its text)."""
    content: list[dict[str, Any]] = []
    if status != "in_progress":
        content.append(assistant_content(dialect, audio, text))
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant",
            "status": status, "content": content}  # fmt: skip


def assistant_content(dialect: Dialect, audio: bool, text: str) -> dict[str, Any]:
    """GA names the parts output_audio / output_text, beta (and native) audio / text."""
    kind = "audio" if audio else "text"
    if dialect == "ga":
        kind = f"output_{kind}"
    return {"type": kind, "transcript": text} if audio else {"type": kind, "text": text}


def content_part(audio: bool, text: str = "") -> dict[str, Any]:
    return {"type": "audio", "transcript": text} if audio else {"type": "text", "text": text}


def usage(
    *, input_text: int, input_audio: int, output_text: int, output_audio: int
) -> dict[str, Any]:
    """OpenAI's response usage: token counts split into text and audio."""
    inputs, outputs = input_text + input_audio, output_text + output_audio
    return {
        "total_tokens": inputs + outputs,
        "input_tokens": inputs,
        "output_tokens": outputs,
        "input_token_details": {
            "text_tokens": input_text, "audio_tokens": input_audio, "cached_tokens": 0,
        },
        "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio},
    }  # fmt: skip


def status_details(status: str, reason: str | None, error: dict[str, Any] | None) -> Any:
    if status == "cancelled":
        return {"type": "cancelled", "reason": reason or "client_cancelled"}
    if status == "failed":
        return {"type": "failed", "error": error or {"type": "server_error"}}
    return None


def turn_detection_object(s: Any) -> dict[str, Any] | None:
    """The session's turn detection as OpenAI shows it (``null`` = manual turns)."""
    if s.turn_detection != "server_vad":
        return None
    return {
        "type": "server_vad",
        "threshold": s.vad_threshold,
        "silence_duration_ms": s.silence_ms,
        "prefix_padding_ms": s.prefix_padding_ms,
        "create_response": s.create_response,
        "interrupt_response": s.interrupt_response,
        "min_speech_duration_ms": s.min_speech_ms,  # extensions
        "speculate_after_ms": s.speculate_after_ms,
    }


def describe_session(dialect: Dialect, s: Any, session_id: str, model: str) -> dict[str, Any]:
    """The session object of session.created / session.updated for an OpenAI dialect.

    ``s`` is the session's SessionSettings; the project's own settings ride along as extra
    fields whose names OpenAI does not use."""
    in_format = audio_format_object(dialect, s.input_encoding, s.input_sample_rate_hz)
    out_format = audio_format_object(dialect, s.output_encoding, s.output_sample_rate_hz)
    transcription = {"model": model} if s.transcribe else None
    extensions = {
        "input_sample_rate_hz": s.input_sample_rate_hz,
        "output_sample_rate_hz": s.output_sample_rate_hz,
        "output_transport": s.output_transport,
        "speculative": s.speculative,
        "pipeline": s.pipeline,
        "audio_turns_kept": s.audio_turns_kept,
    }
    common = {
        "id": session_id, "object": "realtime.session",
        "instructions": s.system_prompt, "tools": [], "tool_choice": "auto",
    }  # fmt: skip
    if dialect == "beta":  # beta's model is a closed list of OpenAI names: left out
        return {
            **common,
            **EventRenderer("beta").modalities(s.audio_output),
            "voice": s.voice,
            "input_audio_format": in_format,
            "output_audio_format": out_format,
            "input_audio_transcription": transcription,
            "turn_detection": turn_detection_object(s),
            "temperature": s.temperature,
            "max_response_output_tokens": s.max_reply_tokens,
            "speed": s.speed,
            **extensions,
        }
    return {
        "type": "realtime",
        **common,
        "model": model,
        **EventRenderer("ga").modalities(s.audio_output),
        "max_output_tokens": s.max_reply_tokens,
        "audio": {
            "input": {
                "format": in_format,
                "transcription": transcription,
                "turn_detection": turn_detection_object(s),
                "noise_reduction": None,
            },
            "output": {"format": out_format, "voice": s.voice, "speed": s.speed},
        },
        "temperature": s.temperature,  # an extension in GA (beta has it)
        **extensions,
    }
