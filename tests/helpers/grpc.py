"""Test helpers: in-process gRPC services on port 0, audio chunking, VAD/tokenizer streaming."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from stepaudio.serving.v1 import (
    audio_pb2,
    tokenizer_pb2,
    tokenizer_pb2_grpc,
    vad_pb2,
    vad_pb2_grpc,
)

from services.common.audio import decode_audio_file, float_to_pcm16
from services.common.grpc_client import create_channel
from services.common.grpc_server import GrpcService, ServerHandle, serve
from services.common.settings import BaseServiceSettings, GrpcClientSettings
from tests.helpers.waits import eventually as eventually  # re-exported for the service tests

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_QUESTION_WAV = REPO_ROOT / "services/models/tiny/assets/demo_question.wav"

# Overrides every in-process test server needs: loopback, free port, no drain wait.
TEST_SERVER_SETTINGS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 0,
    "metrics_port": 0,
    "drain_delay_s": 0.0,
    "shutdown_grace_s": 2.0,
}


@dataclass
class RunningService:
    handle: ServerHandle
    channel: grpc.aio.Channel


@asynccontextmanager
async def running_service(
    service: GrpcService, settings: BaseServiceSettings, max_message_bytes: int = 4 * 1024 * 1024
) -> AsyncIterator[RunningService]:
    """Serve ``service`` in-process and open a channel to it; both closed on exit."""
    async with serve(service, settings) as handle:
        client = GrpcClientSettings(target=handle.address, max_message_bytes=max_message_bytes)
        channel = create_channel(client)
        try:
            yield RunningService(handle, channel)
        finally:
            await channel.close()


def read_wav(path: Path = DEMO_QUESTION_WAV) -> tuple[np.ndarray, int]:
    return decode_audio_file(path)


def pcm_chunks(
    samples: np.ndarray,
    sample_rate_hz: int,
    chunk_ms: int = 20,
    encoding: int = audio_pb2.AUDIO_ENCODING_PCM_S16LE,
) -> list[audio_pb2.AudioChunk]:
    """Split float mono audio into AudioChunks of ``chunk_ms`` (PCM16 or float32 LE)."""
    fmt = audio_pb2.AudioFormat(sample_rate_hz=sample_rate_hz, encoding=encoding, channels=1)
    step = max(1, sample_rate_hz * chunk_ms // 1000)
    chunks = []
    for start in range(0, len(samples), step):
        piece = samples[start : start + step]
        if encoding == audio_pb2.AUDIO_ENCODING_PCM_F32LE:
            data = piece.astype("<f4").tobytes()
        else:
            data = float_to_pcm16(piece)
        chunks.append(audio_pb2.AudioChunk(format=fmt, data=data))
    return chunks


def vad_requests(
    chunks: Sequence[audio_pb2.AudioChunk], config: vad_pb2.VadConfig | None = None
) -> list[vad_pb2.DetectSpeechRequest]:
    requests = [] if config is None else [vad_pb2.DetectSpeechRequest(config=config)]
    return requests + [vad_pb2.DetectSpeechRequest(audio=chunk) for chunk in chunks]


def speech_with_silence(silence_s: float = 1.0) -> tuple[np.ndarray, int]:
    """The demo question followed by silence, so the turn ends inside the audio."""
    samples, rate = read_wav()
    return np.concatenate([samples, np.zeros(int(rate * silence_s), np.float32)]), rate


async def write_all_then_read(call: Any, requests: Sequence[Any]) -> list[Any]:
    """Write every request on a bidi stream, half-close, then collect every response."""
    await call.initial_metadata()  # admitted (or rejected) before we write: no write race
    try:
        for request in requests:
            await call.write(request)
        await call.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the server ended the call early; reading below raises its status
    return [response async for response in call]


async def detect_speech(
    channel: grpc.aio.Channel,
    requests: Sequence[vad_pb2.DetectSpeechRequest],
    timeout_s: float = 30.0,
) -> list[vad_pb2.SpeechEvent]:
    """Send all requests on one DetectSpeech stream, half-close, collect every event."""
    call = vad_pb2_grpc.VadServiceStub(channel).DetectSpeech(timeout=timeout_s)
    return await write_all_then_read(call, requests)


def kinds(events: Sequence[vad_pb2.SpeechEvent]) -> list[str]:
    return [vad_pb2.SpeechEvent.Kind.Name(event.kind) for event in events]


async def tokenize_stream(
    channel: grpc.aio.Channel,
    chunks: Sequence[audio_pb2.AudioChunk],
    timeout_s: float = 30.0,
) -> list[tokenizer_pb2.TokenizeStreamResponse]:
    """Send every chunk on one TokenizeStream, half-close, collect every response."""
    call = tokenizer_pb2_grpc.TokenizerServiceStub(channel).TokenizeStream(timeout=timeout_s)
    requests = [tokenizer_pb2.TokenizeStreamRequest(audio=chunk) for chunk in chunks]
    return await write_all_then_read(call, requests)


def metric(running: RunningService, name: str, **labels: str) -> float:
    """A sample of the running service's own registry (0 when never recorded)."""
    value = running.handle.service.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value
