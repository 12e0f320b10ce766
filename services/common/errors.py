"""Error-code vocabulary and its mapping to gRPC status codes and HTTP statuses.

Codes are stable snake_case strings shown to clients (WS error events, REST bodies, gRPC
details). Engines never import this module (it imports grpc): they raise exceptions carrying a
``code`` attribute (``AudioError``, ``worker.Overloaded``, ...) and servers turn them into
aborts with ``abort_for_exception``. Every abort carries the code twice: as the details prefix
(``"invalid_audio: PCM16 data has an odd number of bytes"``) and as trailing metadata
``stepaudio-error-code``, which ``code_from_rpc_error`` reads back on the client side.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NoReturn

import grpc

log = logging.getLogger(__name__)

ERROR_CODE_METADATA_KEY = "stepaudio-error-code"


class ErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_EVENT = "invalid_event"
    UNKNOWN_EVENT = "unknown_event"
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    MODEL_NOT_FOUND = "model_not_found"  # OpenAI's code for an unknown model id
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_TOO_LARGE = "request_too_large"
    REQUEST_TIMEOUT = "request_timeout"
    INVALID_AUDIO = "invalid_audio"
    INVALID_AUDIO_TOKENS = "invalid_audio_tokens"
    EMPTY_AUDIO = "empty_audio"
    FRAME_TOO_LARGE = "frame_too_large"
    TURN_TOO_LONG = "turn_too_long"
    SESSION_TOO_LONG = "session_too_long"
    SLOW_CONSUMER = "slow_consumer"
    UNSUPPORTED_SAMPLE_RATE = "unsupported_sample_rate"
    UNKNOWN_VOICE = "unknown_voice"
    EMPTY_TEXT = "empty_text"
    TEXT_TOO_LONG = "text_too_long"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    SESSION_EXPIRED = "session_expired"
    UNAVAILABLE = "unavailable"
    VAD_UNAVAILABLE = "vad_unavailable"
    TOKENIZER_UNAVAILABLE = "tokenizer_unavailable"
    LLM_UNAVAILABLE = "llm_unavailable"
    TTS_UNAVAILABLE = "tts_unavailable"
    CANCELLED = "cancelled"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True)
class ErrorKind:
    grpc_status: grpc.StatusCode
    http_status: int
    retryable: bool = False


_S = grpc.StatusCode
_BAD_REQUEST = ErrorKind(_S.INVALID_ARGUMENT, 400)
_DOWNSTREAM_DOWN = ErrorKind(_S.UNAVAILABLE, 503, retryable=True)

ERROR_KINDS: dict[ErrorCode, ErrorKind] = {
    ErrorCode.INVALID_JSON: _BAD_REQUEST,
    ErrorCode.INVALID_EVENT: _BAD_REQUEST,
    ErrorCode.UNKNOWN_EVENT: _BAD_REQUEST,
    ErrorCode.INVALID_ARGUMENT: _BAD_REQUEST,
    ErrorCode.NOT_FOUND: ErrorKind(_S.NOT_FOUND, 404),
    ErrorCode.MODEL_NOT_FOUND: ErrorKind(_S.NOT_FOUND, 404),
    ErrorCode.METHOD_NOT_ALLOWED: ErrorKind(_S.UNIMPLEMENTED, 405),
    ErrorCode.REQUEST_TOO_LARGE: ErrorKind(_S.INVALID_ARGUMENT, 413),
    ErrorCode.REQUEST_TIMEOUT: ErrorKind(_S.DEADLINE_EXCEEDED, 408),
    ErrorCode.INVALID_AUDIO: _BAD_REQUEST,
    ErrorCode.INVALID_AUDIO_TOKENS: _BAD_REQUEST,
    ErrorCode.EMPTY_AUDIO: _BAD_REQUEST,
    ErrorCode.FRAME_TOO_LARGE: ErrorKind(_S.INVALID_ARGUMENT, 413),
    ErrorCode.TURN_TOO_LONG: ErrorKind(_S.INVALID_ARGUMENT, 413),
    ErrorCode.SESSION_TOO_LONG: ErrorKind(_S.INVALID_ARGUMENT, 413),  # as turn_too_long
    # the client did not take its events in time (WebSocket only: closed 1008)
    ErrorCode.SLOW_CONSUMER: ErrorKind(_S.DEADLINE_EXCEEDED, 408),
    ErrorCode.UNSUPPORTED_SAMPLE_RATE: _BAD_REQUEST,
    ErrorCode.UNKNOWN_VOICE: _BAD_REQUEST,
    ErrorCode.EMPTY_TEXT: _BAD_REQUEST,
    ErrorCode.TEXT_TOO_LONG: ErrorKind(_S.INVALID_ARGUMENT, 413),
    ErrorCode.UNAUTHENTICATED: ErrorKind(_S.UNAUTHENTICATED, 401),
    ErrorCode.PERMISSION_DENIED: ErrorKind(_S.PERMISSION_DENIED, 403),
    ErrorCode.RATE_LIMITED: ErrorKind(_S.RESOURCE_EXHAUSTED, 429, retryable=True),
    ErrorCode.OVERLOADED: ErrorKind(_S.RESOURCE_EXHAUSTED, 503, retryable=True),
    ErrorCode.SESSION_EXPIRED: ErrorKind(_S.NOT_FOUND, 410),
    ErrorCode.UNAVAILABLE: _DOWNSTREAM_DOWN,
    ErrorCode.VAD_UNAVAILABLE: _DOWNSTREAM_DOWN,
    ErrorCode.TOKENIZER_UNAVAILABLE: _DOWNSTREAM_DOWN,
    ErrorCode.LLM_UNAVAILABLE: _DOWNSTREAM_DOWN,
    ErrorCode.TTS_UNAVAILABLE: _DOWNSTREAM_DOWN,
    ErrorCode.CANCELLED: ErrorKind(_S.CANCELLED, 499),  # 499: nginx's "client closed request"
    ErrorCode.DEADLINE_EXCEEDED: ErrorKind(_S.DEADLINE_EXCEEDED, 504, retryable=True),
    ErrorCode.INTERNAL_ERROR: ErrorKind(_S.INTERNAL, 500),
}

# Status → code for errors that carry no code of ours (transport failures, other servers).
_CODE_FOR_STATUS: dict[grpc.StatusCode, ErrorCode] = {
    _S.INVALID_ARGUMENT: ErrorCode.INVALID_ARGUMENT,
    _S.OUT_OF_RANGE: ErrorCode.INVALID_ARGUMENT,
    _S.UNAUTHENTICATED: ErrorCode.UNAUTHENTICATED,
    _S.PERMISSION_DENIED: ErrorCode.PERMISSION_DENIED,
    _S.RESOURCE_EXHAUSTED: ErrorCode.OVERLOADED,
    _S.UNAVAILABLE: ErrorCode.UNAVAILABLE,
    _S.CANCELLED: ErrorCode.CANCELLED,
    _S.DEADLINE_EXCEEDED: ErrorCode.DEADLINE_EXCEEDED,
}


class ServiceError(Exception):
    """An error with a stable code, for code that has no more specific exception."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(message)
        self.code = str(code)


def as_error_code(code: str) -> ErrorCode:
    """The ErrorCode for a string; unknown strings become internal_error."""
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.INTERNAL_ERROR


def grpc_status_for(code: ErrorCode | str) -> grpc.StatusCode:
    return ERROR_KINDS[as_error_code(code)].grpc_status


def http_status_for(code: ErrorCode | str) -> int:
    return ERROR_KINDS[as_error_code(code)].http_status


def is_retryable(code: ErrorCode | str) -> bool:
    return ERROR_KINDS[as_error_code(code)].retryable


def error_code_of(exc: BaseException) -> ErrorCode:
    """The code an exception carries (``exc.code``), else internal_error."""
    code = getattr(exc, "code", None)
    return as_error_code(code) if isinstance(code, str) else ErrorCode.INTERNAL_ERROR


def unavailable_code(service: str) -> ErrorCode:
    """``<service>_unavailable`` for a known downstream service, else ``unavailable``."""
    return as_error_code(f"{service}_unavailable") if service else ErrorCode.UNAVAILABLE


def code_from_rpc_error(error: grpc.aio.AioRpcError, service: str = "") -> ErrorCode:
    """Client side: the code of a failed call (our metadata first, else its status).

    ``service`` ("vad", "llm", ...) turns a generic "unavailable" into ``<service>_unavailable``.
    """
    code = None
    for key, value in error.trailing_metadata() or ():
        if key == ERROR_CODE_METADATA_KEY and isinstance(value, str):
            code = as_error_code(value)
    if code is None and _broken_stream(error):
        code = ErrorCode.UNAVAILABLE
    if code is None:
        code = _CODE_FOR_STATUS.get(error.code(), ErrorCode.INTERNAL_ERROR)
    if code is ErrorCode.UNAVAILABLE and service:
        code = unavailable_code(service)
    return code


def _broken_stream(error: grpc.aio.AioRpcError) -> bool:
    """INTERNAL with none of our metadata: the HTTP/2 stream broke under the call (the peer
    died mid-stream — seen as "Received RST_STREAM" when a killed service's connection is reset
    while the client still writes), not a status our service chose; every status our services
    return carries the error-code metadata. (De)serialization failures stay internal errors."""
    details = error.details() or ""
    return error.code() == grpc.StatusCode.INTERNAL and "serializ" not in details


def status_details(code: ErrorCode | str, message: str) -> str:
    return f"{code}: {message}"


async def abort(
    context: grpc.aio.ServicerContext[Any, Any], code: ErrorCode | str, message: str
) -> NoReturn:
    """Abort the RPC with the status for ``code``; the code goes in details and metadata."""
    error_code = as_error_code(str(code))
    await context.abort(
        grpc_status_for(error_code),
        status_details(error_code, message),
        trailing_metadata=((ERROR_CODE_METADATA_KEY, str(error_code)),),
    )
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


async def abort_for_exception(
    context: grpc.aio.ServicerContext[Any, Any], exc: BaseException
) -> NoReturn:
    """Abort for an engine exception: coded ones keep their message, others are hidden."""
    code = error_code_of(exc)
    if code is ErrorCode.INTERNAL_ERROR:
        log.error("internal error in RPC handler", exc_info=exc)
        await abort(context, code, "internal error; see server log")
    await abort(context, code, str(exc))
