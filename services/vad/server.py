"""gRPC front of the VAD engine: validation, limits, batching loop, metrics.

One ``DetectSpeech`` stream = one ``VadSession``. Its 32 ms frames go one at a time through a
shared ``BatchStepLoop`` whose thread runs one batched silero call over the frames of all
streams waiting at that moment. A stream has at most one frame queued, so the queue holds at
most ``max_streams`` frames.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import numpy as np
from opentelemetry import context as otel_context
from opentelemetry import trace
from prometheus_client import CollectorRegistry
from stepaudio.serving.v1 import audio_pb2, vad_pb2, vad_pb2_grpc

from services.common import tracing
from services.common.audio import AudioError
from services.common.audio_proto import decode_chunk
from services.common.errors import (
    ErrorCode,
    ServiceError,
)
from services.common.grpc_server import StreamAdmission
from services.common.metrics import BATCH_SIZE_BUCKETS, ServiceMetrics
from services.common.worker import BatchStepLoop, WorkerClosed
from services.vad.config import VadSettings
from services.vad.engine import FrameJob, SileroVad, VadEvent, VadEventKind, VadParams, VadSession

log = logging.getLogger(__name__)

VAD_SERVICE_NAME: str = vad_pb2.DESCRIPTOR.services_by_name["VadService"].full_name

_EVENT_KINDS = {
    VadEventKind.SPEECH_STARTED: vad_pb2.SpeechEvent.SPEECH_STARTED,
    VadEventKind.SPEECH_PAUSED: vad_pb2.SpeechEvent.SPEECH_PAUSED,
    VadEventKind.SPEECH_RESUMED: vad_pb2.SpeechEvent.SPEECH_RESUMED,
    VadEventKind.SPEECH_STOPPED: vad_pb2.SpeechEvent.SPEECH_STOPPED,
}


def to_proto(event: VadEvent) -> vad_pb2.SpeechEvent:
    return vad_pb2.SpeechEvent(
        kind=_EVENT_KINDS[event.kind],
        audio_ms=event.audio_ms,
        detected_at_ms=event.detected_at_ms,
        probability=event.probability,
    )


class SpeechSpans:
    """One stream's speech segments as spans: each is a new trace (the turn's root) whose
    ``traceparent`` rides on its events, linked to the long-lived stream's own span."""

    def __init__(self) -> None:
        self._tracer = tracing.handler_tracer()
        self._stream = trace.get_current_span().get_span_context()
        self._span: trace.Span | None = None

    def annotate(self, event: VadEvent, message: vad_pb2.SpeechEvent) -> None:
        if event.kind == VadEventKind.SPEECH_STARTED:
            self.close()
            links = [trace.Link(self._stream)] if self._stream.is_valid else []
            self._span = self._tracer.start_span(
                "vad.speech",
                context=otel_context.Context(),  # a new trace: one per turn
                links=links,
                attributes={"vad.speech_start_ms": event.audio_ms},
            )
        if self._span is None:
            return
        message.traceparent = tracing.traceparent(self._span)
        if event.kind == VadEventKind.SPEECH_STOPPED:
            self._span.set_attribute("vad.speech_end_ms", event.audio_ms)
            self.close()
        else:
            self._span.add_event(event.kind.name.lower(), {"vad.audio_ms": event.audio_ms})

    def close(self) -> None:
        if self._span is not None:
            self._span.end()
            self._span = None


class VadService:
    """Engine, batching loop and metrics of the VAD service (a ``GrpcService``)."""

    name = "vad"
    service_names = (VAD_SERVICE_NAME,)

    def __init__(self, settings: VadSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics(self.name, registry)
        self.registry = self.metrics.registry
        self.decision_seconds = self.metrics.histogram(
            "decision", "Latency of one batched VAD model step."
        )
        self.batch_size = self.metrics.histogram(
            "batch", "Frames per batched VAD model step.", unit="size", buckets=BATCH_SIZE_BUCKETS
        )
        self.admission = StreamAdmission(
            self.metrics, settings.max_streams, settings.max_stream_s, "VAD"
        )
        self.step_loop: BatchStepLoop[FrameJob, float] | None = None

    @property
    def active_streams(self) -> int:
        return self.admission.active

    def register(self, server: grpc.aio.Server) -> None:
        vad_pb2_grpc.add_VadServiceServicer_to_server(VadServicer(self), server)

    async def start(self) -> None:
        model = await asyncio.to_thread(
            SileroVad, self.settings.model_path, self.settings.engine_threads
        )
        self.step_loop = BatchStepLoop(
            model.step,
            max_batch=self.settings.max_batch,
            max_pending=self.settings.engine_queue_size,
            name="vad-step",
            on_step=self._observe_step,
        )
        self.step_loop.start()
        log.info("vad model loaded max_batch=%d", self.settings.max_batch)

    async def stop(self) -> None:
        if self.step_loop is not None:
            await self.step_loop.aclose()

    def _observe_step(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.decision_seconds.observe(seconds)


class VadStream:
    """One DetectSpeech call: optional config first, then audio; events out."""

    def __init__(self, service: VadService) -> None:
        self._service = service
        self._params: VadParams = service.settings.vad_params()
        self._session: VadSession | None = None

    async def run(
        self,
        requests: AsyncIterator[vad_pb2.DetectSpeechRequest],
        write: Callable[[VadEvent], Awaitable[None]],
    ) -> None:
        first = True
        async for request in requests:
            kind = request.WhichOneof("request")
            if kind == "config":
                self._configure(request.config, first)
            elif kind == "audio":
                for event in await self._on_audio(request.audio):
                    await write(event)
            else:
                raise ServiceError(
                    ErrorCode.INVALID_ARGUMENT, "request has neither config nor audio"
                )
            first = False
        for event in await self._on_end():
            await write(event)

    def _configure(self, config: vad_pb2.VadConfig, first: bool) -> None:
        if not first:
            raise ServiceError(ErrorCode.INVALID_ARGUMENT, "config must be the first message")
        self._params = self._params.with_overrides(
            threshold=config.threshold,
            min_speech_ms=config.min_speech_ms,
            min_silence_ms=config.min_silence_ms,
            pause_ms=config.pause_ms,
        )

    async def _on_audio(self, chunk: audio_pb2.AudioChunk) -> list[VadEvent]:
        samples, rate = decode_chunk(chunk, self._service.settings.max_chunk_ms)
        if self._session is None:
            self._session = VadSession(self._params, rate)
        elif rate != self._session.input_rate_hz:
            raise AudioError(
                "invalid_audio",
                f"sample rate changed mid-stream ({self._session.input_rate_hz} -> {rate} Hz)",
            )
        return await self._run_frames(self._session.push(samples))

    async def _on_end(self) -> list[VadEvent]:
        if self._session is None:
            return []
        events = await self._run_frames(self._session.flush())
        return events + self._session.finish()

    async def _run_frames(self, frames: list[np.ndarray]) -> list[VadEvent]:
        session, step_loop = self._session, self._service.step_loop
        if session is None or step_loop is None:
            raise WorkerClosed("vad engine is not running")
        events: list[VadEvent] = []
        for frame in frames:  # one at a time: the next frame needs this frame's state
            probability = await step_loop.run(self, FrameJob(session.model_state, frame))
            events.extend(session.on_probability(probability))
        return events


class VadServicer(vad_pb2_grpc.VadServiceServicer):
    def __init__(self, service: VadService) -> None:
        self._service = service

    async def DetectSpeech(  # type: ignore[override]  # context.write handler: returns None
        self,
        request_iterator: AsyncIterator[vad_pb2.DetectSpeechRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        service = self._service

        async def stream() -> None:
            spans = SpeechSpans()

            async def write(event: VadEvent) -> None:
                message = to_proto(event)
                spans.annotate(event, message)
                await context.write(message)

            try:
                await VadStream(service).run(request_iterator, write)
            finally:
                spans.close()

        await service.admission.run(context, stream)
