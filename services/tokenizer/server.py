"""gRPC front of the Step-Audio audio tokenizer: validation, limits, worker threads, metrics.

The engine is ``AudioTokenizer`` itself (services/models/audio_tokenizer): stateless and shared;
each ``TokenizeStream`` call owns one ``AudioTokenizerStream``. Every model call (a stream's
``feed``/``finish``, a whole-clip ``tokenize``) is a step generator run by a ``RoundLoop``
thread (``engine_workers`` of them; one per device on a GPU): each round runs the Paraformer
chunks of all active calls as one batch and their vq06 windows in one pass
(audio_tokenizer/batching.py), never on the event loop. A stream awaits each feed before
reading its next chunk, so it has at most one call queued and its calls run in order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
import numpy as np
from prometheus_client import CollectorRegistry
from stepaudio.serving.v1 import tokenizer_pb2, tokenizer_pb2_grpc

from services.common.audio import AudioError
from services.common.audio_proto import decode_chunk
from services.common.errors import (
    ErrorCode,
    ServiceError,
    abort_for_exception,
    error_code_of,
)
from services.common.grpc_server import StreamAdmission
from services.common.metrics import ServiceMetrics
from services.common.worker import RoundLoop, StepObserver, WorkerClosed
from services.models.audio_tokenizer import AudioTokenizer, AudioTokenizerStream
from services.models.audio_tokenizer.batching import Steps, run_round
from services.tokenizer.config import TokenizerSettings

log = logging.getLogger(__name__)

TOKENIZER_SERVICE_NAME: str = tokenizer_pb2.DESCRIPTOR.services_by_name[
    "TokenizerService"
].full_name
# compute seconds per audio second: 0.01 (GPU) .. 10 (badly overloaded CPU)
REALTIME_FACTOR_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0)
ROUND_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
WARMUP_SECONDS = 1.0
T = TypeVar("T")


class LoopPool:
    """``size`` RoundLoops over one tokenizer; each call goes to the least busy loop."""

    def __init__(
        self, tokenizer: AudioTokenizer, size: int, max_pending: int, on_round: StepObserver
    ) -> None:
        self._loops = [
            RoundLoop(
                functools.partial(run_round, tokenizer),
                max_pending=max_pending,
                name=f"tokenizer-{i}",
                on_round=on_round,
            )
            for i in range(size)
        ]

    def start(self) -> None:
        for loop in self._loops:
            loop.start()

    async def run(self, steps: Steps[T]) -> T:
        loop = min(self._loops, key=lambda candidate: candidate.pending)
        return await loop.run(steps)

    async def aclose(self) -> None:
        await asyncio.gather(*(loop.aclose() for loop in self._loops))


def _timed(steps: Steps[T]) -> Steps[tuple[T, float]]:
    """A step generator's result and its loop time (first resume to return: its own code and
    the rounds it took part in, shared with the other calls of those rounds)."""
    started = time.perf_counter()
    result = yield from steps
    return result, time.perf_counter() - started


class TokenizerService:
    """Tokenizer model, worker threads and metrics (a ``GrpcService``)."""

    name = "tokenizer"
    service_names = (TOKENIZER_SERVICE_NAME,)

    def __init__(
        self, settings: TokenizerSettings, registry: CollectorRegistry | None = None
    ) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics(self.name, registry)
        self.registry = self.metrics.registry
        self.tail_seconds = self.metrics.histogram(
            "tail",
            "TokenizeStream half-close to its final response (latency left at end of speech).",
        )
        self.feed_seconds = self.metrics.histogram(
            "feed",
            "Loop time of one model call (a stream feed/finish or a whole clip), batched "
            "with the other calls of its rounds.",
        )
        self.realtime_factor = self.metrics.histogram(
            "realtime_factor",
            "Compute seconds per audio second, per finished stream or clip.",
            unit="",
            buckets=REALTIME_FACTOR_BUCKETS,
        )
        self.audio_seconds = self.metrics.counter("audio_seconds", "Audio tokenised (s).")
        self.admission = StreamAdmission(
            self.metrics, settings.max_streams, settings.max_stream_s, "tokenizer"
        )
        self.round_size = self.metrics.histogram(
            "round",
            "Model jobs (encoder chunks + vq06 windows of all streams) run in one round.",
            unit="jobs",
            buckets=ROUND_BUCKETS,
        )
        self.tokenizer: AudioTokenizer | None = None
        self.workers: LoopPool | None = None

    @property
    def active_streams(self) -> int:
        return self.admission.active

    def register(self, server: grpc.aio.Server) -> None:
        tokenizer_pb2_grpc.add_TokenizerServiceServicer_to_server(TokenizerServicer(self), server)

    async def start(self) -> None:
        s = self.settings
        self.tokenizer = await asyncio.to_thread(
            AudioTokenizer.from_pretrained,
            s.tokenizer_path,
            num_threads=s.engine_threads,
            device=s.device,
            semantic_batch=s.semantic_batch,
        )
        # The first model call pays seconds of one-off initialisation; pay it before SERVING.
        noise = np.random.default_rng(0).uniform(-0.1, 0.1, int(16_000 * WARMUP_SECONDS))
        await asyncio.to_thread(self.tokenizer.tokenize, noise.astype(np.float32), 16_000)
        self.workers = LoopPool(
            self.tokenizer, s.engine_workers, s.engine_queue_size, self._observe_round
        )
        self.workers.start()
        log.info("tokenizer loaded path=%s workers=%d", s.tokenizer_path, s.engine_workers)

    async def stop(self) -> None:
        if self.workers is not None:
            await self.workers.aclose()

    def _observe_round(self, jobs: int, _seconds: float) -> None:
        self.round_size.observe(jobs)

    async def compute(self, steps: Steps[T]) -> tuple[T, float]:
        """Run a model call (a step generator) in a batching loop; (result, loop seconds)."""
        if self.workers is None:
            steps.close()
            raise WorkerClosed("the tokenizer is not running")
        result, seconds = await self.workers.run(_timed(steps))
        self.feed_seconds.observe(seconds)
        return result, seconds

    def observe_finished(self, audio_seconds: float, compute_seconds: float) -> None:
        self.audio_seconds.inc(audio_seconds)
        if audio_seconds > 0:
            self.realtime_factor.observe(compute_seconds / audio_seconds)


class TokenizeStreamSession:
    """One TokenizeStream call: the first chunk fixes the rate; ids out as groups complete."""

    def __init__(self, service: TokenizerService) -> None:
        self._service = service
        self._stream: AudioTokenizerStream | None = None
        self._compute_seconds = 0.0

    async def run(
        self,
        requests: AsyncIterator[tokenizer_pb2.TokenizeStreamRequest],
        write: Callable[[tokenizer_pb2.TokenizeStreamResponse], Awaitable[None]],
    ) -> None:
        async for request in requests:
            ids = await self._on_audio(request)
            if ids:
                await write(self._response(ids, final=False))
        half_closed = time.perf_counter()
        ids = await self._on_end()
        await write(self._response(ids, final=True))
        self._service.tail_seconds.observe(time.perf_counter() - half_closed)
        audio = 0.0 if self._stream is None else self._stream.audio_seconds
        self._service.observe_finished(audio, self._compute_seconds)

    def _response(self, ids: list[int], final: bool) -> tokenizer_pb2.TokenizeStreamResponse:
        audio = 0.0 if self._stream is None else self._stream.audio_seconds
        return tokenizer_pb2.TokenizeStreamResponse(token_ids=ids, final=final, audio_seconds=audio)

    async def _on_audio(self, request: tokenizer_pb2.TokenizeStreamRequest) -> list[int]:
        if not request.HasField("audio"):
            raise ServiceError(ErrorCode.INVALID_ARGUMENT, "request has no audio")
        settings = self._service.settings
        samples, rate = decode_chunk(request.audio, settings.max_chunk_ms)
        stream = self._open(rate)
        if stream.audio_seconds + samples.size / rate > settings.max_clip_s:
            raise AudioError(
                "frame_too_large", f"the stream's audio is longer than {settings.max_clip_s} s"
            )
        if samples.size == 0:
            return []
        return await self._compute(stream.feed_steps(samples))

    def _open(self, rate: int) -> AudioTokenizerStream:
        if self._stream is None:
            assert self._service.tokenizer is not None
            self._stream = self._service.tokenizer.stream(rate)
        elif rate != self._stream.sample_rate_hz:
            raise AudioError(
                "invalid_audio",
                f"sample rate changed mid-stream ({self._stream.sample_rate_hz} -> {rate} Hz)",
            )
        return self._stream

    async def _on_end(self) -> list[int]:
        if self._stream is None:  # half-closed before any audio
            return []
        return await self._compute(self._stream.finish_steps())

    async def _compute(self, steps: Steps[list[int]]) -> list[int]:
        ids, seconds = await self._service.compute(steps)
        self._compute_seconds += seconds
        return ids


class TokenizerServicer(tokenizer_pb2_grpc.TokenizerServiceServicer):
    def __init__(self, service: TokenizerService) -> None:
        self._service = service

    async def TokenizeStream(  # type: ignore[override]  # context.write handler: returns None
        self,
        request_iterator: AsyncIterator[tokenizer_pb2.TokenizeStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        service = self._service

        async def stream() -> None:
            await TokenizeStreamSession(service).run(request_iterator, context.write)

        await service.admission.run(context, stream)

    async def Tokenize(
        self, request: tokenizer_pb2.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> tokenizer_pb2.TokenizeResponse:
        service = self._service
        try:
            max_ms = int(service.settings.max_clip_s * 1000)
            samples, rate = decode_chunk(request.audio, max_ms)
            if samples.size == 0:
                raise AudioError("empty_audio", "audio is empty")
            assert service.tokenizer is not None
            ids, seconds = await service.compute(
                service.tokenizer.tokenize_steps(samples, rate, trim=request.trim_silence)
            )
        except Exception as exc:
            service.metrics.record_error(error_code_of(exc))
            await abort_for_exception(context, exc)
        audio_seconds = samples.size / rate
        service.observe_finished(audio_seconds, seconds)
        return tokenizer_pb2.TokenizeResponse(token_ids=ids, audio_seconds=audio_seconds)
