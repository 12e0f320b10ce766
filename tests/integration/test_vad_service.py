"""The VAD service over real grpc.aio on loopback (in-process server, port 0)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_span_id, format_trace_id
from stepaudio.serving.v1 import audio_pb2, vad_pb2, vad_pb2_grpc

from services.common.errors import ERROR_CODE_METADATA_KEY, code_from_rpc_error
from services.common.grpc_client import check_health, create_channel
from services.common.grpc_server import serve
from services.common.settings import GrpcClientSettings
from services.common.tracing import tracer_provider
from services.vad.config import VadSettings
from services.vad.server import VAD_SERVICE_NAME, VadService
from tests.helpers.grpc import (
    TEST_SERVER_SETTINGS,
    RunningService,
    detect_speech,
    kinds,
    pcm_chunks,
    running_service,
    speech_with_silence,
    vad_requests,
    write_all_then_read,
)
from tests.helpers.waits import eventually

pytestmark = pytest.mark.integration

TURN = ["SPEECH_STARTED", "SPEECH_STOPPED"]


def vad_settings(**overrides: object) -> VadSettings:
    return VadSettings(**{**TEST_SERVER_SETTINGS, **overrides})


@pytest.fixture
async def vad() -> AsyncIterator[RunningService]:
    settings = vad_settings()
    async with running_service(VadService(settings), settings) as running:
        yield running


def sample(running: RunningService, name: str, **labels: str) -> float:
    value = running.handle.service.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def expect_rpc_error(
    running: RunningService, requests: list[vad_pb2.DetectSpeechRequest]
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await detect_speech(running.channel, requests)
    return error.value


async def test_health_serving_for_server_and_service(vad: RunningService) -> None:
    assert await check_health(vad.channel, "")
    assert await check_health(vad.channel, VAD_SERVICE_NAME)


async def test_reflection_lists_the_service(vad: RunningService) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(vad.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    replies = [reply async for reply in stub.ServerReflectionInfo(iter([request]), timeout=5)]
    names = {service.name for service in replies[0].list_services_response.service}
    assert {VAD_SERVICE_NAME, "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize(
    "encoding", [audio_pb2.AUDIO_ENCODING_PCM_S16LE, audio_pb2.AUDIO_ENCODING_PCM_F32LE]
)
async def test_clip_in_20ms_chunks_gives_one_turn(vad: RunningService, encoding: int) -> None:
    samples, rate = speech_with_silence(1.0)
    events = await detect_speech(vad.channel, vad_requests(pcm_chunks(samples, rate, 20, encoding)))
    assert kinds(events) == TURN
    started, stopped = events
    assert 0 <= started.audio_ms <= 300 and started.probability >= 0.5
    assert 2_800 <= stopped.audio_ms <= 3_400
    assert stopped.detected_at_ms - stopped.audio_ms >= 600
    assert sample(vad, "stepaudio_vad_decision_seconds_count") > 0
    assert sample(vad, "stepaudio_vad_batch_size_count") > 0


async def test_config_enables_pause_events_at_44k(vad: RunningService) -> None:
    samples, _ = speech_with_silence(1.0)
    audio = pcm_chunks(
        np.interp(
            np.arange(0, len(samples), 16_000 / 44_100), np.arange(len(samples)), samples
        ).astype(np.float32),
        44_100,
    )
    config = vad_pb2.VadConfig(pause_ms=200)
    events = await detect_speech(vad.channel, vad_requests(audio, config))
    assert kinds(events)[:3] == ["SPEECH_STARTED", "SPEECH_PAUSED", "SPEECH_RESUMED"]
    assert kinds(events)[-1] == "SPEECH_STOPPED"


async def test_concurrent_streams_share_batched_steps(vad: RunningService) -> None:
    samples, rate = speech_with_silence(0.8)
    requests = vad_requests(pcm_chunks(samples, rate, 100))
    results = await asyncio.gather(*(detect_speech(vad.channel, requests) for _ in range(4)))
    assert all(kinds(events) == TURN for events in results)
    assert [e.audio_ms for e in results[0]] == [e.audio_ms for e in results[3]]
    steps = sample(vad, "stepaudio_vad_batch_size_count")
    single_frame_steps = sample(vad, "stepaudio_vad_batch_size_bucket", le="1.0")
    assert single_frame_steps < steps  # some steps carried frames of several streams


@pytest.mark.parametrize(
    ("fmt", "code"),
    [
        (audio_pb2.AudioFormat(sample_rate_hz=16_000), "invalid_audio"),  # no encoding
        (audio_pb2.AudioFormat(sample_rate_hz=96_000, encoding=1), "unsupported_sample_rate"),
        (audio_pb2.AudioFormat(sample_rate_hz=16_000, encoding=1, channels=64), "invalid_audio"),
    ],
)
async def test_invalid_format_is_invalid_argument(
    vad: RunningService, fmt: audio_pb2.AudioFormat, code: str
) -> None:
    chunk = audio_pb2.AudioChunk(format=fmt, data=b"\x00" * 640)
    error = await expect_rpc_error(vad, vad_requests([chunk]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"{code}: ")
    assert (ERROR_CODE_METADATA_KEY, code) in tuple(error.trailing_metadata() or ())
    assert code_from_rpc_error(error, service="vad") == code
    assert sample(vad, "stepaudio_vad_errors_total", code=code) == 1


@pytest.mark.parametrize(
    "requests",
    [
        [vad_pb2.DetectSpeechRequest(config=vad_pb2.VadConfig(threshold=2.0))],
        [vad_pb2.DetectSpeechRequest(config=vad_pb2.VadConfig(pause_ms=700))],
        [vad_pb2.DetectSpeechRequest()],
        vad_requests(pcm_chunks(np.zeros(320, np.float32), 16_000))
        + [vad_pb2.DetectSpeechRequest(config=vad_pb2.VadConfig())],  # config after audio
    ],
)
async def test_invalid_requests_are_invalid_argument(
    vad: RunningService, requests: list[vad_pb2.DetectSpeechRequest]
) -> None:
    error = await expect_rpc_error(vad, requests)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("invalid_argument: ")


async def test_sample_rate_change_mid_stream_is_rejected(vad: RunningService) -> None:
    # One chunk each: the rejected chunk is the last write (no write races the abort).
    chunks = pcm_chunks(np.zeros(320, np.float32), 16_000) + pcm_chunks(
        np.zeros(160, np.float32), 8_000
    )
    error = await expect_rpc_error(vad, vad_requests(chunks))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "changed mid-stream" in error.details()


async def test_oversized_chunk_is_frame_too_large(vad: RunningService) -> None:
    long_chunk = pcm_chunks(np.zeros(16_000 * 2, np.float32), 16_000, chunk_ms=2_000)
    error = await expect_rpc_error(vad, vad_requests(long_chunk))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("frame_too_large: ")


async def test_over_limit_message_is_resource_exhausted() -> None:
    settings = vad_settings(grpc_max_message_bytes=4096)
    async with running_service(VadService(settings), settings) as running:
        big = pcm_chunks(np.zeros(4096, np.float32), 16_000, chunk_ms=256)  # 8 KiB of PCM16
        error = await expect_rpc_error(running, vad_requests(big))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_too_many_streams_is_resource_exhausted() -> None:
    settings = vad_settings(max_streams=1)
    async with running_service(VadService(settings), settings) as running:
        samples, rate = speech_with_silence(1.0)
        requests = vad_requests(pcm_chunks(samples, rate))
        first = vad_pb2_grpc.VadServiceStub(running.channel).DetectSpeech(timeout=30)
        await first.write(requests[0])
        await eventually(lambda: running.handle.service.active_streams == 1)

        error = await expect_rpc_error(running, requests)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.details().startswith("overloaded: ")

        for request in requests[1:]:
            await first.write(request)
        await first.done_writing()
        assert kinds([event async for event in first]) == TURN  # the admitted stream is fine
        assert await detect_speech(running.channel, requests)  # the slot is free again


async def test_client_cancel_frees_the_session(vad: RunningService) -> None:
    samples, rate = speech_with_silence(1.0)
    call = vad_pb2_grpc.VadServiceStub(vad.channel).DetectSpeech(timeout=30)
    for request in vad_requests(pcm_chunks(samples, rate))[:50]:
        await call.write(request)
    await eventually(lambda: vad.handle.service.active_streams == 1)
    call.cancel()
    await eventually(lambda: vad.handle.service.active_streams == 0)
    assert sample(vad, "stepaudio_vad_active_streams") == 0
    assert await detect_speech(vad.channel, vad_requests(pcm_chunks(samples, rate)))


async def test_graceful_stop_lets_an_in_flight_stream_finish() -> None:
    settings = vad_settings(drain_delay_s=0.3, shutdown_grace_s=10.0)
    async with running_service(VadService(settings), settings) as running:
        samples, rate = speech_with_silence(1.0)
        requests = vad_requests(pcm_chunks(samples, rate))
        call = vad_pb2_grpc.VadServiceStub(running.channel).DetectSpeech(timeout=30)
        for request in requests[:80]:
            await call.write(request)
        await eventually(lambda: running.handle.service.active_streams == 1)

        shutdown = asyncio.ensure_future(running.handle.shutdown())
        await eventually(  # draining
            lambda: _not(check_health(running.channel, VAD_SERVICE_NAME)), what="NOT_SERVING"
        )
        await asyncio.sleep(0.4)  # past the drain delay: server.stop(grace) has begun
        for request in requests[80:]:
            await call.write(request)
        await call.done_writing()
        assert kinds([event async for event in call]) == TURN
        assert await call.code() == grpc.StatusCode.OK
        await shutdown

        error = await expect_rpc_error(running, requests)
        assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_each_speech_segment_starts_a_trace_named_in_its_events() -> None:
    """The stream's span continues the caller's traceparent (metadata); each speech segment
    is a new trace (one per turn) whose traceparent rides on its events."""
    exporter = InMemorySpanExporter()
    settings = vad_settings()
    provider = tracer_provider("vad", settings.tracing, [exporter])
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    samples, rate = speech_with_silence()
    async with serve(VadService(settings), settings, provider) as handle:
        channel = create_channel(GrpcClientSettings(target=handle.address))
        try:
            call = vad_pb2_grpc.VadServiceStub(channel).DetectSpeech(
                timeout=30, metadata=(("traceparent", caller),)
            )
            events = await write_all_then_read(call, vad_requests(pcm_chunks(samples, rate)))
        finally:
            await channel.close()
    assert kinds(events) == TURN
    assert events[0].traceparent and events[0].traceparent == events[1].traceparent
    spans = {span.name: span for span in exporter.get_finished_spans()}
    stream, speech = spans["VadService/DetectSpeech"], spans["vad.speech"]
    assert stream.parent is not None and stream.parent.is_remote
    assert format_trace_id(stream.context.trace_id) == caller.split("-")[1]
    assert format_span_id(stream.parent.span_id) == caller.split("-")[2]
    assert speech.parent is None  # a trace of its own: the turn's
    assert events[0].traceparent.split("-")[1:3] == [
        format_trace_id(speech.context.trace_id),
        format_span_id(speech.context.span_id),
    ]
    assert [link.context.span_id for link in speech.links] == [stream.context.span_id]
    assert speech.attributes["vad.speech_start_ms"] == events[0].audio_ms
    assert speech.attributes["vad.speech_end_ms"] == events[1].audio_ms


async def _not(check: Awaitable[bool]) -> bool:
    return not await check
