"""Input checks the realtime session runs before any work: event JSON, voice names."""

from __future__ import annotations

import json
import re
from typing import Any

import grpc
from stepaudio.serving.v1 import tts_pb2

from services.common.errors import ErrorCode, ServiceError, code_from_rpc_error

VOICE_NAME = re.compile(r"[\w-]{1,64}")  # the TTS service's rule; always a full match
VOICE_CHECK_TIMEOUT_S = 5.0


def parse_event_json(text: str) -> Any:
    """json.loads, with every failure a named ``invalid_json`` error: deep nesting raises
    RecursionError and a 5000-digit integer ValueError, not JSONDecodeError."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ServiceError(ErrorCode.INVALID_JSON, f"invalid JSON: {exc.msg}") from exc
    except (ValueError, RecursionError, MemoryError) as exc:
        message = (
            "invalid JSON: nested too deeply"
            if isinstance(exc, RecursionError)
            else (f"invalid JSON: {str(exc)[:200]}")
        )
        raise ServiceError(ErrorCode.INVALID_JSON, message) from exc


async def check_voice(tts: Any, name: str) -> None:
    """Refuse an unknown voice when it is chosen, not at every later reply."""
    if not VOICE_NAME.fullmatch(name):
        raise ServiceError(
            ErrorCode.UNKNOWN_VOICE, "a voice name is 1..64 letters, digits, '_' or '-'"
        )
    try:
        reply = await tts.ListVoices(tts_pb2.ListVoicesRequest(), timeout=VOICE_CHECK_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        raise ServiceError(code_from_rpc_error(exc, "tts"), "cannot check the voice") from exc
    if name not in {voice.name for voice in reply.voices}:
        raise ServiceError(ErrorCode.UNKNOWN_VOICE, f"no voice {name!r}; see GET /v1/voices")
