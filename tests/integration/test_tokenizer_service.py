"""The tokenizer service over real grpc.aio on loopback, on the tiny Step-Audio-Tokenizer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from stepaudio.serving.v1 import audio_pb2, tokenizer_pb2, tokenizer_pb2_grpc

from services.common.audio import resample
from services.common.errors import code_from_rpc_error
from services.common.grpc_client import check_health
from services.models import layout
from services.models.audio_tokenizer import AudioTokenizer
from services.tokenizer.config import TokenizerSettings
from services.tokenizer.server import TOKENIZER_SERVICE_NAME, TokenizerService
from tests.helpers.grpc import (
    TEST_SERVER_SETTINGS,
    RunningService,
    metric,
    pcm_chunks,
    read_wav,
    running_service,
    tokenize_stream,
)
from tests.helpers.waits import eventually

pytestmark = pytest.mark.integration

F32 = audio_pb2.AUDIO_ENCODING_PCM_F32LE
S16 = audio_pb2.AUDIO_ENCODING_PCM_S16LE


def tokenizer_settings(root: Path, **overrides: object) -> TokenizerSettings:
    return TokenizerSettings(**{**TEST_SERVER_SETTINGS, "model_dir": root, **overrides})


@pytest.fixture
async def tokenizer(tiny_pack: Path) -> AsyncIterator[RunningService]:
    settings = tokenizer_settings(tiny_pack)
    async with running_service(TokenizerService(settings), settings) as running:
        yield running


@pytest.fixture(scope="module")
def reference(tiny_pack: Path) -> AudioTokenizer:
    return AudioTokenizer.from_pretrained(layout.tokenizer_dir(tiny_pack))


def engine_stream_ids(reference: AudioTokenizer, samples: np.ndarray, rate: int) -> list[int]:
    """The engine's own stream fed the same 20 ms pieces (its gain follows the running peak,
    so ids depend on how the audio was cut)."""
    stream, step, ids = reference.stream(rate), rate // 50, []
    for start in range(0, len(samples), step):
        ids += stream.feed(samples[start : start + step])
    return ids + stream.finish()


def ids_of(responses: list[tokenizer_pb2.TokenizeStreamResponse]) -> list[int]:
    return [i for response in responses for i in response.token_ids]


def stub(running: RunningService) -> tokenizer_pb2_grpc.TokenizerServiceStub:
    return tokenizer_pb2_grpc.TokenizerServiceStub(running.channel)


async def test_health_serving(tokenizer: RunningService) -> None:
    assert await check_health(tokenizer.channel, "")
    assert await check_health(tokenizer.channel, TOKENIZER_SERVICE_NAME)


@pytest.mark.parametrize(("rate", "encoding"), [(16_000, S16), (44_100, F32)])
async def test_20ms_stream_matches_the_engine_stream(
    tokenizer: RunningService, reference: AudioTokenizer, rate: int, encoding: int
) -> None:
    samples, source_rate = read_wav()
    samples = resample(samples, source_rate, rate)
    chunks = pcm_chunks(samples, rate, 20, encoding)
    if encoding == S16:  # the engine must see what the wire carried
        samples = np.frombuffer(b"".join(c.data for c in chunks), "<i2") / np.float32(32768)
    responses = await tokenize_stream(tokenizer.channel, chunks)
    assert [r.final for r in responses] == [False] * (len(responses) - 1) + [True]
    assert len(responses) > 2  # ids arrived while audio was still coming
    ids = ids_of(responses)
    assert ids == engine_stream_ids(reference, samples.astype(np.float32), rate)
    assert all(len(r.token_ids) % 5 == 0 for r in responses)
    assert responses[-1].audio_seconds == pytest.approx(len(samples) / rate)
    assert metric(tokenizer, "stepaudio_tokenizer_tail_seconds_count") == 1
    assert metric(tokenizer, "stepaudio_tokenizer_realtime_factor_count") == 1


async def test_half_close_without_audio_gives_one_empty_final(tokenizer: RunningService) -> None:
    responses = await tokenize_stream(tokenizer.channel, [])
    assert len(responses) == 1
    assert responses[0].final and not responses[0].token_ids and responses[0].audio_seconds == 0


async def test_tokenize_clip_with_and_without_trim(
    tokenizer: RunningService, reference: AudioTokenizer
) -> None:
    samples, rate = read_wav()
    padded = np.concatenate([np.zeros(rate, np.float32), samples, np.zeros(rate, np.float32)])
    (chunk,) = pcm_chunks(padded, rate, chunk_ms=60_000, encoding=F32)
    for trim in (False, True):
        reply = await stub(tokenizer).Tokenize(
            tokenizer_pb2.TokenizeRequest(audio=chunk, trim_silence=trim), timeout=30
        )
        assert list(reply.token_ids) == reference.tokenize(padded, rate, trim=trim)
        assert reply.audio_seconds == pytest.approx(len(padded) / rate)
    assert len(reference.tokenize(padded, rate, trim=True)) < len(reference.tokenize(padded, rate))


def _chunk(data: bytes, rate: int = 16_000, encoding: int = S16) -> audio_pb2.AudioChunk:
    fmt = audio_pb2.AudioFormat(sample_rate_hz=rate, encoding=encoding, channels=1)
    return audio_pb2.AudioChunk(format=fmt, data=data)


GOOD = _chunk(b"\x00\x01" * 320)


@pytest.mark.parametrize(
    ("chunks", "code"),
    [
        ([GOOD, _chunk(b"\x00" * 3)], "invalid_audio"),  # odd PCM16 byte count
        ([GOOD, _chunk(b"\x00\x01" * 320, rate=8_000)], "invalid_audio"),  # rate changed
        ([_chunk(b"\x00\x01" * 10, rate=96_000)], "unsupported_sample_rate"),
        ([audio_pb2.AudioChunk(data=b"\x00\x00")], "invalid_audio"),  # no format
        ([_chunk(np.full(8, np.nan, "<f4").tobytes(), encoding=F32)], "invalid_audio"),
        ([_chunk(b"\x00\x00" * 16_000 * 2)], "frame_too_large"),  # 2 s > max_chunk_ms
    ],
)
async def test_bad_audio_is_invalid_argument(
    tokenizer: RunningService, chunks: list[audio_pb2.AudioChunk], code: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await tokenize_stream(tokenizer.channel, chunks)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert code_from_rpc_error(error.value) == code
    assert error.value.details().startswith(f"{code}: ")
    assert metric(tokenizer, "stepaudio_tokenizer_errors_total", code=code) == 1


async def test_bad_clip_is_invalid_argument(tokenizer: RunningService) -> None:
    for chunk, code in [(_chunk(b""), "empty_audio"), (_chunk(b"\x01"), "invalid_audio")]:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub(tokenizer).Tokenize(tokenizer_pb2.TokenizeRequest(audio=chunk), timeout=10)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert code_from_rpc_error(error.value) == code


async def test_stream_longer_than_max_clip_is_rejected(tiny_pack: Path) -> None:
    settings = tokenizer_settings(tiny_pack, max_clip_s=1.0)
    async with running_service(TokenizerService(settings), settings) as running:
        chunks = [_chunk(b"\x00\x01" * 8_000)] * 3  # 3 × 0.5 s
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await tokenize_stream(running.channel, chunks)
        assert code_from_rpc_error(error.value) == "frame_too_large"


async def test_client_cancel_frees_the_stream(tokenizer: RunningService) -> None:
    call = stub(tokenizer).TokenizeStream(timeout=30)
    await call.initial_metadata()
    await call.write(tokenizer_pb2.TokenizeStreamRequest(audio=GOOD))
    service = tokenizer.handle.service
    assert isinstance(service, TokenizerService)
    await eventually(lambda: service.active_streams == 1)
    call.cancel()
    await eventually(lambda: service.active_streams == 0)
    assert metric(tokenizer, "stepaudio_tokenizer_active_streams") == 0


async def test_too_many_streams_is_resource_exhausted(tiny_pack: Path) -> None:
    settings = tokenizer_settings(tiny_pack, max_streams=1)
    async with running_service(TokenizerService(settings), settings) as running:
        first = stub(running).TokenizeStream(timeout=30)
        await first.initial_metadata()
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await tokenize_stream(running.channel, [GOOD])
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert code_from_rpc_error(error.value) == "overloaded"
        await first.done_writing()
        assert [r.final async for r in first] == [True]
        await asyncio.sleep(0)
