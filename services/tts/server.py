"""gRPC front of the TTS engine: validation, admission, deadlines, PCM encoding, metrics.

Streaming handlers are coroutines that ``context.write`` each response (not async generators):
a client cancel then raises CancelledError inside the handler wherever it waits, and the
engine's iterator is closed right there, which aborts the LM request and stops token2wav.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing

import grpc
from opentelemetry import trace
from prometheus_client import CollectorRegistry
from stepaudio.serving.v1 import audio_pb2, tts_pb2, tts_pb2_grpc

from services.common.audio_proto import decode_chunk, encode_chunk, output_encoding
from services.common.errors import (
    ErrorCode,
    ServiceError,
    abort,
    abort_for_exception,
    error_code_of,
)
from services.common.metrics import ServiceMetrics
from services.tts.config import TtsSettings
from services.tts.engine import (
    AudioPiece,
    InvalidTokensError,
    SynthesisOptions,
    TtsEngine,
    TtsModels,
)
from services.tts.voices import Voice

log = logging.getLogger(__name__)

TTS_SERVICE_NAME: str = tts_pb2.DESCRIPTOR.services_by_name["TtsService"].full_name
MAX_REQUEST_ID_CHARS = 128
# wall seconds per audio second of a whole request: 0.05 (GPU) .. 10 (overloaded CPU)
REALTIME_FACTOR_BUCKETS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
VOCODER_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CANCELLED = "cancelled"
ERROR = "error"


def options_from_proto(options: tts_pb2.SynthesisOptions) -> SynthesisOptions:
    """Proto zeros mean defaults (rate 0 = native, speed/volume 0 = 1.0)."""
    return SynthesisOptions(
        output_sample_rate_hz=options.output_sample_rate_hz,
        speed=options.speed or 1.0,
        volume=options.volume or 1.0,
        seed=options.seed if options.HasField("seed") else None,
    )


def voice_to_proto(voice: Voice) -> tts_pb2.Voice:
    return tts_pb2.Voice(
        name=voice.name,
        prompt_text=voice.prompt_text,
        prompt_seconds=voice.prompt_seconds,
        builtin=voice.builtin,
    )


class TtsService:
    """TTS engine and metrics (a ``GrpcService``)."""

    name = "tts"
    service_names = (TTS_SERVICE_NAME,)

    def __init__(self, settings: TtsSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics(self.name, registry)
        self.registry = self.metrics.registry
        m = self.metrics
        self.first_chunk_seconds = m.histogram(
            "first_chunk", "Request arrival to its first PCM chunk (Synthesize and Vocode)."
        )
        self.realtime_factor = m.histogram(
            "realtime_factor",
            "Request wall seconds per audio second, per finished request.",
            unit="",
            buckets=REALTIME_FACTOR_BUCKETS,
        )
        self.vocoder_seconds = m.histogram(
            "vocoder", "Compute time of one batched token2wav step (all streams of the tick)."
        )
        self.vocoder_batch = m.histogram(
            "vocoder_batch",
            "Streams decoded together in one token2wav step.",
            unit="streams",
            buckets=VOCODER_BATCH_BUCKETS,
        )
        self.requests = m.counter(
            "requests", "Finished Synthesize/Vocode calls by reason.", ["reason"]
        )
        self.invalid_tokens = m.counter("invalid_tokens", "Vocode ids outside the audio range.")
        self.dropped_tokens = m.counter("dropped_tokens", "Non-audio ids from the TTS LM dropped.")
        self.audio_seconds = m.counter("audio_seconds", "Audio produced (s).")
        self.active_streams = 0
        self.engine: TtsEngine | None = None
        self.ready = False  # set once loaded and warmed up; calls before that are UNAVAILABLE

    def register(self, server: grpc.aio.Server) -> None:
        tts_pb2_grpc.add_TtsServiceServicer_to_server(TtsServicer(self), server)

    async def start(self) -> None:
        models = await asyncio.to_thread(TtsModels.load, self.settings)
        engine = TtsEngine(models, self.settings, on_vocoder_step=self._observe_vocoder_step)
        self.engine = engine  # from here on stop() closes it, also after a failed start
        await engine.start()
        if self.settings.warm_up:
            started = time.perf_counter()
            await engine.warm_up()
            log.info("tts warmed up seconds=%.2f", time.perf_counter() - started)
        self.ready = True
        names = [voice.name for voice in engine.list_voices()]
        log.info("tts ready engine=%s voices=%s", models.lm.engine_name, names)

    def _observe_vocoder_step(self, streams: int, seconds: float) -> None:
        self.vocoder_seconds.observe(seconds)
        self.vocoder_batch.observe(streams)

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.close()

    def require_engine(self) -> TtsEngine:
        if self.engine is None or not self.ready:
            raise ServiceError(ErrorCode.UNAVAILABLE, "the TTS engine is not running")
        return self.engine


class AudioStreamCall:
    """One Synthesize or Vocode call: pieces → SynthesizeResponse messages, and its metrics."""

    def __init__(self, service: TtsService, context: grpc.aio.ServicerContext) -> None:
        self.service = service
        self.context = context
        self.started = time.perf_counter()
        self.audio_seconds = 0.0
        self.first_chunk_sent = False
        self.reason = "stop"

    async def send(
        self, pieces: AsyncGenerator[AudioPiece, None], encoding: audio_pb2.AudioEncoding.ValueType
    ) -> None:
        async with aclosing(pieces):  # closing it aborts the LM request / stops token2wav
            async for piece in pieces:
                await self.context.write(self.response(piece, encoding))
                if piece.final and piece.finish_reason:
                    self.reason = piece.finish_reason

    def response(
        self, piece: AudioPiece, encoding: audio_pb2.AudioEncoding.ValueType
    ) -> tts_pb2.SynthesizeResponse:
        service = self.service
        if piece.dropped_ids:
            service.dropped_tokens.inc(piece.dropped_ids)
        seconds = piece.samples.size / piece.sample_rate_hz
        self.audio_seconds += seconds
        service.audio_seconds.inc(seconds)
        if piece.samples.size and not self.first_chunk_sent:
            self.first_chunk_sent = True
            service.first_chunk_seconds.observe(time.perf_counter() - self.started)
        return tts_pb2.SynthesizeResponse(
            audio=encode_chunk(piece.samples, piece.sample_rate_hz, encoding),
            token_ids=piece.token_ids,
            final=piece.final,
            audio_seconds=self.audio_seconds,
        )

    def finished(self) -> None:
        self.service.requests.labels(reason=self.reason).inc()
        if self.audio_seconds > 0:
            wall = time.perf_counter() - self.started
            self.service.realtime_factor.observe(wall / self.audio_seconds)


class TtsServicer(tts_pb2_grpc.TtsServiceServicer):
    def __init__(self, service: TtsService) -> None:
        self._service = service

    async def Synthesize(  # type: ignore[override]  # context.write handler: returns None
        self, request: tts_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> None:
        async def run(call: AudioStreamCall) -> None:
            engine = self._service.require_engine()
            request_id = self._request_id(request.request_id)
            options = options_from_proto(request.options)
            encoding = output_encoding(request.options.encoding)
            pieces = engine.synthesize(request.text, request.voice, options, request_id=request_id)
            await call.send(pieces, encoding)

        await self._stream(context, run)

    async def Vocode(  # type: ignore[override]  # context.write handler: returns None
        self,
        request_iterator: AsyncIterator[tts_pb2.VocodeRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        async def run(call: AudioStreamCall) -> None:
            engine = self._service.require_engine()
            requests = aiter(request_iterator)
            first = await anext(requests, None)
            config = tts_pb2.VocodeRequest.VocodeConfig()
            if first is not None and first.WhichOneof("request") == "config":
                config, first = first.config, None
            self._request_id(config.request_id)
            encoding = output_encoding(config.options.encoding)
            options = options_from_proto(config.options)
            async with aclosing(_token_batches(first, requests)) as batches:
                await call.send(engine.vocode(batches, config.voice, options), encoding)

        await self._stream(context, run)

    async def _stream(
        self, context: grpc.aio.ServicerContext, run: Callable[[AudioStreamCall], Awaitable[None]]
    ) -> None:
        """Admission, deadline, error mapping and metrics around one audio stream."""
        service = self._service
        if service.active_streams >= service.settings.max_streams:
            await self._fail(context, ErrorCode.OVERLOADED, "too many TTS streams; retry later")
        service.active_streams += 1
        service.metrics.active_streams.inc()
        call = AudioStreamCall(service, context)
        try:
            # Admitted: headers now, so a client awaiting initial_metadata() sees a later
            # abort with its real status (grpc/grpc#36066).
            await context.send_initial_metadata(())
            async with asyncio.timeout(service.settings.max_request_s):
                await run(call)
            call.finished()
        except asyncio.CancelledError:
            call.reason = CANCELLED  # the client cancelled, or its deadline passed
            call.finished()
            raise
        except grpc.aio.AbortError:
            raise
        except TimeoutError:
            call.reason = ERROR
            call.finished()
            limit = service.settings.max_request_s
            await self._fail(context, ErrorCode.DEADLINE_EXCEEDED, f"call exceeded {limit} s")
        except Exception as exc:  # coded validation/engine errors → their status
            call.reason = ERROR
            call.finished()
            if isinstance(exc, InvalidTokensError):
                service.invalid_tokens.inc(exc.count)
            service.metrics.record_error(error_code_of(exc))
            await abort_for_exception(context, exc)
        finally:
            service.active_streams -= 1
            service.metrics.active_streams.dec()

    async def RegisterVoice(
        self, request: tts_pb2.RegisterVoiceRequest, context: grpc.aio.ServicerContext
    ) -> tts_pb2.Voice:
        service = self._service
        try:
            engine = service.require_engine()
            max_ms = int(service.settings.max_prompt_s * 1000)
            samples, rate = decode_chunk(request.prompt_audio, max_ms)
            voice = await engine.register_voice(
                request.name, request.prompt_text, samples, rate, overwrite=request.overwrite
            )
        except Exception as exc:
            service.metrics.record_error(error_code_of(exc))
            await abort_for_exception(context, exc)
        return voice_to_proto(voice)

    async def ListVoices(
        self, request: tts_pb2.ListVoicesRequest, context: grpc.aio.ServicerContext
    ) -> tts_pb2.ListVoicesResponse:
        try:
            voices = self._service.require_engine().list_voices()
        except Exception as exc:
            await abort_for_exception(context, exc)
        return tts_pb2.ListVoicesResponse(voices=[voice_to_proto(v) for v in voices])

    async def DeleteVoice(
        self, request: tts_pb2.DeleteVoiceRequest, context: grpc.aio.ServicerContext
    ) -> tts_pb2.DeleteVoiceResponse:
        service = self._service
        try:
            await service.require_engine().delete_voice(request.name)
        except Exception as exc:
            service.metrics.record_error(error_code_of(exc))
            await abort_for_exception(context, exc)
        return tts_pb2.DeleteVoiceResponse()

    def _request_id(self, request_id: str) -> str:
        if len(request_id) > MAX_REQUEST_ID_CHARS:
            raise ServiceError(ErrorCode.INVALID_ARGUMENT, "request_id is too long")
        request_id = request_id or uuid.uuid4().hex
        trace.get_current_span().set_attribute("stepaudio.request_id", request_id)
        return request_id

    async def _fail(self, context: grpc.aio.ServicerContext, code: ErrorCode, message: str) -> None:
        self._service.metrics.record_error(code)
        await abort(context, code, message)


async def _token_batches(
    first: tts_pb2.VocodeRequest | None, requests: AsyncIterator[tts_pb2.VocodeRequest]
) -> AsyncGenerator[list[int], None]:
    """The ids of each ``tokens`` message (``first`` is one already read, if any)."""
    if first is not None:
        yield _tokens_of(first)
    async for request in requests:
        yield _tokens_of(request)


def _tokens_of(request: tts_pb2.VocodeRequest) -> list[int]:
    kind = request.WhichOneof("request")
    if kind == "tokens":
        return list(request.tokens.token_ids)
    if kind == "config":
        raise ServiceError(ErrorCode.INVALID_ARGUMENT, "config must be the first message")
    raise ServiceError(ErrorCode.INVALID_ARGUMENT, "request has neither config nor tokens")
