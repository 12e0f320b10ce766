"""A session's incoming audio: 16 kHz conversion, pre-roll, the VAD stream, utterance capture.

All audio is resampled once to 16 kHz (both the VAD and the tokenizer work at that rate), with
upstream's filter (torchaudio ``Resample`` numerics, services/common/resample.py), and
counted in samples since the session started, so VAD timestamps map onto captured audio.
While the user speaks, the utterance is streamed to the tokenizer as it arrives (overlap), so
at end of speech only the tail remains to be tokenized.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

import numpy as np
from stepaudio.serving.v1 import audio_pb2, tokenizer_pb2, vad_pb2

from services.common.audio import float_to_pcm16
from services.common.resample import SincStreamResampler
from services.controller.clients import ServiceClients

log = logging.getLogger(__name__)
T = TypeVar("T")
ItemT = TypeVar("ItemT")

RATE_HZ = 16_000
PREROLL_S = 1.5  # audio kept before speech start (VAD confirms speech after min_speech_ms)
SPEECH_PAD_MS = 200  # audio before the detected start that still goes to the tokenizer
QUEUE_CHUNKS = 256  # ≈ 5 s of 20 ms chunks between the socket reader and a gRPC stream


def pcm16_chunk(samples: np.ndarray) -> audio_pb2.AudioChunk:
    fmt = audio_pb2.AudioFormat(
        sample_rate_hz=RATE_HZ, encoding=audio_pb2.AUDIO_ENCODING_PCM_S16LE, channels=1
    )
    return audio_pb2.AudioChunk(format=fmt, data=float_to_pcm16(samples))


class QueueRequests(Generic[ItemT, T]):
    """Request iterator for a streaming call: messages from a queue until ``None``.

    A plain class rather than an async generator: grpc.aio consumes request iterators in its
    own task, and closing a cancelled call must not try to ``aclose()`` a running generator.
    """

    def __init__(
        self, queue: asyncio.Queue[ItemT | None], make: Callable[[ItemT], T], first: T | None = None
    ) -> None:
        self._queue, self._make, self._first = queue, make, first

    def __aiter__(self) -> QueueRequests[ItemT, T]:
        return self

    async def __anext__(self) -> T:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        chunk = await self._queue.get()
        if chunk is None:
            raise StopAsyncIteration
        return self._make(chunk)


def _put_latest(queue: asyncio.Queue[np.ndarray | None], item: np.ndarray | None) -> None:
    """Bounded hand-off: if the consumer fell 5 s behind, drop the oldest audio."""
    if queue.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            queue.get_nowait()
        log.warning("audio queue full: dropped a chunk")
    queue.put_nowait(item)


class TokenizerStream:
    """One utterance streamed to the tokenizer service while it is spoken."""

    def __init__(self, clients: ServiceClients, timeout_s: float) -> None:
        self._queue: asyncio.Queue[np.ndarray | None] = asyncio.Queue(maxsize=QUEUE_CHUNKS)
        self.token_ids: list[int] = []
        self._task = asyncio.create_task(self._run(clients, timeout_s))

    async def _run(self, clients: ServiceClients, timeout_s: float) -> list[int]:
        requests = QueueRequests(
            self._queue, lambda chunk: tokenizer_pb2.TokenizeStreamRequest(audio=pcm16_chunk(chunk))
        )
        call = clients.tokenizer.TokenizeStream(requests, timeout=timeout_s)
        async for reply in call:
            self.token_ids.extend(reply.token_ids)
        return self.token_ids

    def feed(self, samples: np.ndarray) -> None:
        if samples.size:
            _put_latest(self._queue, samples)

    async def finish(self) -> list[int]:
        """Half-close and wait for the final ids."""
        _put_latest(self._queue, None)
        return await self._task

    async def cancel(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class InputAudio:
    def __init__(self, clients: ServiceClients, rpc_timeout_s: float) -> None:
        self.clients = clients
        self.rpc_timeout_s = rpc_timeout_s
        self.total_samples = 0  # 16 kHz samples received this session
        self._resampler: SincStreamResampler | None = None
        self._preroll: deque[tuple[int, np.ndarray]] = deque()  # (start sample, chunk)
        self._vad_queue: asyncio.Queue[np.ndarray | None] | None = None
        self.vad_origin = 0  # session sample where the current VAD stream began
        self.utterance: list[np.ndarray] = []
        self.utterance_samples = 0
        self.capturing = False
        self.tokenizer: TokenizerStream | None = None

    def set_input_rate(self, rate_hz: int) -> None:
        if self._resampler is None or self._resampler.from_hz != rate_hz:
            self._resampler = SincStreamResampler(rate_hz, RATE_HZ)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Client audio at the session's input rate → 16 kHz, to VAD, pre-roll and capture."""
        assert self._resampler is not None
        chunk = self._resampler.process(samples)
        if not chunk.size:
            return chunk
        self._preroll.append((self.total_samples, chunk))
        self.total_samples += chunk.size
        while self._preroll and self._preroll[0][0] < self.total_samples - PREROLL_S * RATE_HZ:
            self._preroll.popleft()
        if self._vad_queue is not None:
            _put_latest(self._vad_queue, chunk)
        if self.capturing:
            self.utterance.append(chunk)
            self.utterance_samples += chunk.size
            if self.tokenizer is not None:
                self.tokenizer.feed(chunk)
        return chunk

    # -- VAD -------------------------------------------------------------------------------

    async def vad_events(self, config: vad_pb2.VadConfig) -> AsyncIterator[vad_pb2.SpeechEvent]:
        """Run one DetectSpeech stream from now on; yields its events."""
        queue: asyncio.Queue[np.ndarray | None] = asyncio.Queue(maxsize=QUEUE_CHUNKS)
        self._vad_queue, self.vad_origin = queue, self.total_samples

        requests = QueueRequests(
            queue,
            lambda chunk: vad_pb2.DetectSpeechRequest(audio=pcm16_chunk(chunk)),
            first=vad_pb2.DetectSpeechRequest(config=config),
        )
        call = self.clients.vad.DetectSpeech(requests)
        try:
            async for event in call:
                yield event
        finally:
            if self._vad_queue is queue:
                self._vad_queue = None
            call.cancel()

    def session_sample(self, vad_ms: int) -> int:
        return self.vad_origin + vad_ms * RATE_HZ // 1000

    # -- utterances ------------------------------------------------------------------------

    def start_utterance(
        self, start_sample: int | None, *, stream_tokens: bool, pad_ms: int = SPEECH_PAD_MS
    ) -> None:
        """Capture from ``start_sample`` less ``pad_ms`` (from the pre-roll) onwards;
        None = from now."""
        self.utterance = []
        if start_sample is not None:
            first = max(0, start_sample - pad_ms * RATE_HZ // 1000)
            for chunk_start, chunk in self._preroll:
                if chunk_start + chunk.size > first:
                    self.utterance.append(chunk[max(0, first - chunk_start) :])
        self.utterance_samples = sum(c.size for c in self.utterance)
        self.capturing = True
        if stream_tokens:
            self.tokenizer = TokenizerStream(self.clients, self.rpc_timeout_s)
            for chunk in self.utterance:
                self.tokenizer.feed(chunk)

    def utterance_audio(self) -> np.ndarray:
        return np.concatenate(self.utterance) if self.utterance else np.zeros(0, np.float32)

    async def end_utterance(self) -> tuple[list[int], np.ndarray]:
        """Stop capturing; the utterance's ids (streamed, or tokenized now) and its audio."""
        self.capturing = False
        audio = self.utterance_audio()
        self.utterance, self.utterance_samples = [], 0
        stream, self.tokenizer = self.tokenizer, None
        if stream is not None:
            return await stream.finish(), audio
        return await self.tokenize(audio), audio

    async def tokenize(self, audio: np.ndarray) -> list[int]:
        if not audio.size:
            return []
        request = tokenizer_pb2.TokenizeRequest(audio=pcm16_chunk(audio))
        reply = await self.clients.tokenizer.Tokenize(request, timeout=self.rpc_timeout_s)
        return list(reply.token_ids)

    async def abandon_utterance(self) -> None:
        self.capturing = False
        self.utterance, self.utterance_samples = [], 0
        stream, self.tokenizer = self.tokenizer, None
        if stream is not None:
            await stream.cancel()
