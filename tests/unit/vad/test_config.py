from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from stepaudio.serving.v1 import audio_pb2

from services.common.audio import AudioError
from services.common.settings import env_var_table, env_vars
from services.vad.config import VadSettings
from services.vad.engine import VadParams
from services.vad.server import decode_chunk
from tests.helpers.grpc import REPO_ROOT


def test_defaults() -> None:
    settings = VadSettings()
    assert settings.vad_params() == VadParams(0.5, 250, 600, 0)
    assert settings.port == 50051


@pytest.mark.parametrize(
    "overrides",
    [
        {"threshold": 0.0},
        {"min_silence_ms": 0},
        {"pause_ms": 600},  # must stay below min_silence_ms
        {"max_streams": 0},
        {"max_streams": 300},  # above engine_queue_size and grpc_max_concurrent_rpcs
        {"max_batch": 5000},
    ],
)
def test_invalid_settings_are_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        VadSettings(**overrides)


def test_env_prefix_and_table() -> None:
    names = [name for name, *_ in env_vars(VadSettings)]
    assert {"VAD_THRESHOLD", "VAD_PAUSE_MS", "VAD_MAX_STREAMS", "VAD_KEEPALIVE__TIME_MS"} <= set(
        names
    )


def _chunk(data: bytes, rate: int = 16_000, encoding: int = 1, channels: int = 1):
    fmt = audio_pb2.AudioFormat(sample_rate_hz=rate, encoding=encoding, channels=channels)
    return audio_pb2.AudioChunk(format=fmt, data=data)


def test_decode_chunk_formats() -> None:
    stereo = np.array([[1000, 3000], [-1000, -3000]], dtype="<i2").tobytes()
    samples, rate = decode_chunk(_chunk(stereo, channels=2), max_chunk_ms=1000)
    np.testing.assert_allclose(samples, [2000 / 32768, -2000 / 32768])
    assert rate == 16_000
    floats = np.array([0.5, -0.25], dtype="<f4").tobytes()
    samples, _ = decode_chunk(_chunk(floats, rate=8_000, encoding=2), max_chunk_ms=1000)
    np.testing.assert_allclose(samples, [0.5, -0.25])


@pytest.mark.parametrize(
    ("chunk", "code"),
    [
        (_chunk(b"\x00" * 3), "invalid_audio"),  # odd PCM16 byte count
        (_chunk(b"\x00" * 4, encoding=0), "invalid_audio"),
        (_chunk(b"\x00" * 4, rate=0), "invalid_audio"),
        (_chunk(b"\x00" * 4, rate=4_000), "unsupported_sample_rate"),
        (_chunk(b"\x00" * 4, channels=9), "invalid_audio"),
        (_chunk(np.full(2, np.nan, "<f4").tobytes(), encoding=2), "invalid_audio"),
        (_chunk(b"\x00" * 2 * 16_001), "frame_too_large"),
    ],
)
def test_decode_chunk_rejects(chunk: audio_pb2.AudioChunk, code: str) -> None:
    with pytest.raises(AudioError) as error:
        decode_chunk(chunk, max_chunk_ms=1000)
    assert error.value.code == code


def test_docs_list_the_current_env_table() -> None:
    docs = (REPO_ROOT / "docs/services.md").read_text()
    assert env_var_table(VadSettings) in docs, "regenerate the VAD table in docs/services.md"
