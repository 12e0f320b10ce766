from __future__ import annotations

import grpc
import pytest

from services.common.audio import AudioError
from services.common.errors import (
    ERROR_CODE_METADATA_KEY,
    ERROR_KINDS,
    ErrorCode,
    ServiceError,
    code_from_rpc_error,
    error_code_of,
    grpc_status_for,
    http_status_for,
    is_retryable,
)
from services.common.worker import Overloaded, WorkerClosed


def test_every_code_is_mapped_and_snake_case() -> None:
    assert set(ERROR_KINDS) == set(ErrorCode)
    for code in ErrorCode:
        assert code.value == code.value.lower()
        assert " " not in code.value


@pytest.mark.parametrize(
    ("code", "status", "http"),
    [
        ("invalid_audio", grpc.StatusCode.INVALID_ARGUMENT, 400),
        ("unsupported_sample_rate", grpc.StatusCode.INVALID_ARGUMENT, 400),
        ("frame_too_large", grpc.StatusCode.INVALID_ARGUMENT, 413),
        ("overloaded", grpc.StatusCode.RESOURCE_EXHAUSTED, 503),
        ("rate_limited", grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        ("llm_unavailable", grpc.StatusCode.UNAVAILABLE, 503),
        ("deadline_exceeded", grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        ("internal_error", grpc.StatusCode.INTERNAL, 500),
        ("not_a_code", grpc.StatusCode.INTERNAL, 500),
    ],
)
def test_code_maps_to_grpc_and_http(code: str, status: grpc.StatusCode, http: int) -> None:
    assert grpc_status_for(code) == status
    assert http_status_for(code) == http


def test_retryable_codes() -> None:
    assert is_retryable("tts_unavailable") and is_retryable("overloaded")
    assert not is_retryable("invalid_audio") and not is_retryable("internal_error")


def test_engine_exceptions_carry_their_codes() -> None:
    assert error_code_of(AudioError("empty_audio", "x")) is ErrorCode.EMPTY_AUDIO
    assert error_code_of(Overloaded("full")) is ErrorCode.OVERLOADED
    assert error_code_of(WorkerClosed("bye")) is ErrorCode.UNAVAILABLE
    assert error_code_of(ServiceError(ErrorCode.TEXT_TOO_LONG, "x")) is ErrorCode.TEXT_TOO_LONG
    assert error_code_of(ValueError("plain")) is ErrorCode.INTERNAL_ERROR


def _rpc_error(
    status: grpc.StatusCode, code: str | None, details: str = "x"
) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    if code is not None:
        trailing.add(ERROR_CODE_METADATA_KEY, code)
    return grpc.aio.AioRpcError(status, grpc.aio.Metadata(), trailing, details=details)


def test_client_reads_code_from_metadata_then_status() -> None:
    error = _rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "invalid_audio")
    assert code_from_rpc_error(error) is ErrorCode.INVALID_AUDIO
    bare = _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, None)
    assert code_from_rpc_error(bare) is ErrorCode.DEADLINE_EXCEEDED
    unknown = _rpc_error(grpc.StatusCode.UNKNOWN, None)
    assert code_from_rpc_error(unknown) is ErrorCode.INTERNAL_ERROR


def test_unavailable_is_named_after_the_downstream_service() -> None:
    transport = _rpc_error(grpc.StatusCode.UNAVAILABLE, None)
    assert code_from_rpc_error(transport, service="llm") is ErrorCode.LLM_UNAVAILABLE
    draining = _rpc_error(grpc.StatusCode.UNAVAILABLE, "unavailable")
    assert code_from_rpc_error(draining, service="tts") is ErrorCode.TTS_UNAVAILABLE
    assert code_from_rpc_error(transport) is ErrorCode.UNAVAILABLE
    overloaded = _rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded")
    assert code_from_rpc_error(overloaded, service="llm") is ErrorCode.OVERLOADED


def test_a_broken_stream_is_the_service_unavailable_not_an_internal_error() -> None:
    """A service killed mid-stream can reach the client as INTERNAL (an HTTP/2 reset) with no
    metadata of ours; seen in a loaded run of the fault matrix (scenario 5) as internal_error."""
    reset = _rpc_error(grpc.StatusCode.INTERNAL, None, "Received RST_STREAM with error code 2")
    assert code_from_rpc_error(reset, service="vad") is ErrorCode.VAD_UNAVAILABLE
    # a status our service chose keeps its code; a message that cannot be parsed is a bug
    chosen = _rpc_error(grpc.StatusCode.INTERNAL, "internal_error")
    assert code_from_rpc_error(chosen, service="vad") is ErrorCode.INTERNAL_ERROR
    garbled = _rpc_error(grpc.StatusCode.INTERNAL, None, "Exception deserializing response!")
    assert code_from_rpc_error(garbled, service="vad") is ErrorCode.INTERNAL_ERROR
