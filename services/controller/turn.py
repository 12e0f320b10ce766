"""One assistant response: LLM → (clauses) → TTS → paced audio out, as a task.

Two pipelines share the output side:
  cascade     Chat LLM text → first complete clause → TTS Synthesize (per clause, in order)
  end_to_end  AQAA-style LLM → its text pieces as text deltas, its audio groups → TTS Vocode
A response can be *held* (speculative): its events are buffered, TTS stops after the first
clause, and nothing reaches the client until ``release()``; ``discard`` is a plain cancel.
Cancelling the task cancels the in-flight gRPC calls, so the services see the cancellation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from stepaudio.serving.v1 import audio_pb2, llm_pb2, llm_pb2_grpc, tts_pb2

from services.common.audio import StreamResampler
from services.controller.audio_formats import encode_output
from services.controller.clients import ServiceClients
from services.controller.config import OUTPUT_RATES_HZ
from services.controller.input_audio import QueueRequests
from services.controller.protocol import error_event

# A clause ends at CJK punctuation or ?!; at once; Latin , : . only once the next character is
# a space (the stream may still continue "3." into "3.5").
_CLAUSE_END = re.compile(r"[。！？；，、：!?;]|[,:.](?=\s)")
MIN_FIRST_CLAUSE_CHARS = 2
AUDIO_AHEAD = 1024  # decoded chunks waiting for paced playback (TTS runs ahead of real time)
MAX_CLAUSE_CHARS = 120


class ClauseSplitter:
    """Cuts streamed text into speakable clauses as soon as each one is complete."""

    def __init__(self, min_chars: int = MIN_FIRST_CLAUSE_CHARS) -> None:
        self._buffer = ""
        self._min_chars = min_chars

    def push(self, text: str) -> list[str]:
        self._buffer += text
        clauses: list[str] = []
        while True:
            cut = self._find_cut()
            if cut is None:
                return clauses
            clause, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            if clause:
                clauses.append(clause)

    def _find_cut(self) -> int | None:
        for match in _CLAUSE_END.finditer(self._buffer):
            if len(self._buffer[: match.end()].strip()) >= self._min_chars:
                return match.end()
        if len(self._buffer) >= MAX_CLAUSE_CHARS:
            space = self._buffer.rfind(" ", 0, MAX_CLAUSE_CHARS)
            return space + 1 if space > 0 else MAX_CLAUSE_CHARS
        return None

    def flush(self) -> list[str]:
        clause, self._buffer = self._buffer.strip(), ""
        return [clause] if clause else []


Send = Callable[[dict[str, Any] | bytes, str | None], Awaitable[None]]


@dataclass
class ResponseProgress:
    """What the client actually got, for the stored turn and response.done."""

    text_generated: str = ""
    spoken_clauses: list[str] = field(default_factory=list)  # clauses whose audio was sent
    audio_seconds_sent: float = 0.0
    audio_token_ids: int = 0  # end to end: whole-group audio ids sent to the vocoder
    invalid_audio_ids: int = 0
    marks: dict[str, float] = field(default_factory=dict)  # stage → monotonic time (first)

    def mark(self, stage: str) -> None:
        self.marks.setdefault(stage, time.monotonic())

    def timings_ms(self, origin: float) -> dict[str, float]:
        """Stage times relative to ``origin`` (end of speech); negative = before it."""
        return {k: round((v - origin) * 1000, 1) for k, v in self.marks.items()}

    failed_service: str = ""  # the stage whose failure ended the reply ("llm", "tts")
    text_with_audio: bool = False  # end to end: text and audio come interleaved from one model
    text_only: bool = False  # output_modalities ["text"]: no TTS, the text is what was sent
    prompt_tokens: int = 0  # usage, as the LLM service reports it
    completion_tokens: int = 0
    tts_audio_tokens: int = 0  # cascade: audio ids the TTS LM generated for what was spoken

    def count_usage(self, reply: llm_pb2.GenerateResponse) -> None:
        self.prompt_tokens = reply.prompt_tokens or self.prompt_tokens
        self.completion_tokens = reply.completion_tokens or self.completion_tokens

    @property
    def text_sent(self) -> str:
        if self.text_only:
            return self.text_generated
        if self.text_with_audio:  # no clause alignment: the text generated while audio flowed
            return self.text_generated if self.audio_seconds_sent else ""
        return " ".join(self.spoken_clauses) if self.spoken_clauses else ""


class ResponseSink:
    """Sends (or holds) one response's events; paces audio to real time plus a lead."""

    def __init__(
        self,
        send: Send,
        response_id: str,
        *,
        output_rate_hz: int,
        binary_audio: bool,
        lead_s: float,
        held: bool,
        progress: ResponseProgress,
        item_id: str = "",
        text_type: str = "response.text.delta",
        encoding: str = "pcm16",
    ) -> None:
        self._send = send
        self.response_id = response_id
        self.item_id = item_id  # the assistant item this reply fills
        self.text_type = text_type  # the transcript's event name in the client's dialect
        self.encoding = encoding
        self.output_rate_hz = output_rate_hz
        self.binary_audio = binary_audio
        self.lead_s = lead_s
        self.held = held
        self.released = asyncio.Event()
        if not held:
            self.released.set()
        self.progress = progress
        self._held_events: list[tuple[dict[str, Any] | bytes, float]] = []
        self._playback_start: float | None = None
        self._flush: asyncio.Task[None] | None = None  # a commit's held audio beyond the lead

    def mark(self, stage: str) -> None:
        self.progress.mark(stage)

    async def event(self, event: dict[str, Any]) -> None:
        if self.held:
            self._held_events.append((event, 0.0))
        else:
            await self._send(event, self.response_id)

    async def text_delta(self, delta: str) -> None:
        await self.event({"type": self.text_type, **self._part_ids(), "delta": delta})

    def _part_ids(self) -> dict[str, Any]:
        return {
            "response_id": self.response_id,
            "item_id": self.item_id,
            "output_index": 0,
            "content_index": 0,
        }

    async def audio(self, pcm: np.ndarray, clause: str | None) -> None:
        """float32 mono at the output rate; sent in ≤100 ms slices so pacing is fine-grained."""
        if not pcm.size:
            return
        if clause is not None and clause not in self.progress.spoken_clauses[-1:]:
            self.progress.spoken_clauses.append(clause)
        step = max(1, self.output_rate_hz // 10)
        for start in range(0, pcm.size, step):
            piece = pcm[start : start + step]
            seconds = piece.size / self.output_rate_hz
            payload = self._audio_payload(piece)
            if self.held:
                self._held_events.append((payload, seconds))
            else:
                await self.drained()  # a committed reply's held audio goes first
                await self._send_audio(payload, seconds)

    def _audio_payload(self, pcm: np.ndarray) -> dict[str, Any] | bytes:
        data = encode_output(pcm, self.encoding)
        if self.binary_audio:
            return data
        return {
            "type": "response.audio.delta",
            **self._part_ids(),
            "delta": base64.b64encode(data).decode("ascii"),
            "sample_rate_hz": self.output_rate_hz,
        }

    async def _send_audio(self, payload: dict[str, Any] | bytes, seconds: float) -> None:
        now = time.monotonic()
        if self._playback_start is None:
            self._playback_start = now
            self.mark("first_audio")
        ahead = self._playback_start + self.progress.audio_seconds_sent - self.lead_s - now
        if ahead > 0:  # the client has enough buffered: wait, so an interruption loses little
            await asyncio.sleep(ahead)
        await self._send(payload, self.response_id)
        self.progress.audio_seconds_sent += seconds

    def _wait_s(self) -> float:
        """How long the next audio must wait to stay within the lead (≤ 0: send now)."""
        if self._playback_start is None:
            return 0.0
        sent = self.progress.audio_seconds_sent
        return self._playback_start + sent - self.lead_s - time.monotonic()

    async def release(self) -> None:
        """Commit a held response: its events and its audio up to the lead go out now; the
        rest of its audio is paced by a flush task, and live audio queues behind that.

        Never waits for pacing: the caller is the session's VAD loop, which must stay free to
        see a barge-in, and live audio must not overtake the held audio.
        """
        self.held = False
        held, self._held_events = self._held_events, []
        self.progress.audio_seconds_sent = 0.0
        self.released.set()
        audio = [(payload, seconds) for payload, seconds in held if seconds]
        for payload, seconds in held:
            if not seconds:
                await self._send(payload, self.response_id)
        while audio and self._wait_s() <= 0:
            await self._send_audio(*audio.pop(0))
        if audio:
            self._flush = asyncio.create_task(self._send_paced(audio))

    async def _send_paced(self, audio: list[tuple[dict[str, Any] | bytes, float]]) -> None:
        for payload, seconds in audio:
            await self._send_audio(payload, seconds)

    async def drained(self) -> None:
        """Wait until a commit's held audio is all sent, or its flush was stopped (a waiter
        that is cancelled leaves the flush running: only stop() ends it)."""
        if self._flush is not None and not self._flush.done():
            await asyncio.wait([self._flush])

    def stop(self) -> None:
        """Cancel the flush of held audio (the response was interrupted)."""
        if self._flush is not None:
            self._flush.cancel()


@dataclass
class ResponsePlan:
    response_id: str
    pipeline: str
    messages: list[llm_pb2.ChatMessage]
    voice: str
    temperature: float
    max_tokens: int
    max_prompt_tokens: int
    rpc_timeout_s: float
    seed: int | None = None
    audio: bool = True  # False: text only, no TTS
    speed: float = 1.0


def pcm_from_chunk(chunk: audio_pb2.AudioChunk) -> np.ndarray:
    if chunk.format.encoding == audio_pb2.AUDIO_ENCODING_PCM_F32LE:
        return np.frombuffer(chunk.data, dtype="<f4").astype(np.float32)
    return np.frombuffer(chunk.data, dtype="<i2").astype(np.float32) / 32768.0


class ResponseRunner:
    def __init__(self, clients: ServiceClients, plan: ResponsePlan, sink: ResponseSink) -> None:
        self.clients = clients
        self.plan = plan
        self.sink = sink
        self.progress = sink.progress
        self._resampler: StreamResampler | None = None

    async def run(self) -> None:
        if self.plan.pipeline == "end_to_end":
            await self._run_end_to_end()
        else:
            await self._run_cascade()

    def _generate_request(self) -> llm_pb2.GenerateRequest:
        sampling = llm_pb2.SamplingParams(
            temperature=self.plan.temperature, max_tokens=self.plan.max_tokens
        )
        if self.plan.seed is not None:
            sampling.seed = self.plan.seed
        return llm_pb2.GenerateRequest(
            request_id=self.plan.response_id,
            chat=llm_pb2.ChatPrompt(messages=self.plan.messages),
            sampling=sampling,
            max_prompt_tokens=self.plan.max_prompt_tokens,
        )

    @contextlib.asynccontextmanager
    async def _llm_stream(
        self, stub: llm_pb2_grpc.LlmServiceAsyncStub
    ) -> AsyncIterator[AsyncGenerator[llm_pb2.GenerateResponse]]:
        """The Generate call's replies; leaving the block cancels the call at once (a reply
        cancelled elsewhere must free its LLM slot now, not when the call is collected)."""
        call = stub.Generate(self._generate_request(), timeout=self.plan.rpc_timeout_s)

        async def replies() -> AsyncGenerator[llm_pb2.GenerateResponse]:
            async for reply in call:
                if reply.token_ids:
                    self.sink.mark("llm_first_token")
                self.progress.count_usage(reply)
                yield reply

        stream = replies()
        try:
            yield stream
        finally:
            call.cancel()
            await stream.aclose()

    # -- cascade ---------------------------------------------------------------------------

    async def _run_cascade(self) -> None:
        """LLM → clauses → TTS (runs ahead) → audio queue → paced playback, all concurrent;
        the first stage to fail ends the reply at once (a dead TTS cancels the LLM call)."""
        if not self.plan.audio:
            await self._run_text_only()
            return
        clauses: asyncio.Queue[str | None] = asyncio.Queue(maxsize=64)
        audio: asyncio.Queue[tuple[np.ndarray, str] | None] = asyncio.Queue(maxsize=AUDIO_AHEAD)
        await watch_stages(
            self.progress,
            llm=self._generate_clauses(clauses),
            tts=self._speak_clauses(clauses, audio),
            playback=self._play(audio),
        )

    async def _generate_clauses(self, clauses: asyncio.Queue[str | None]) -> None:
        splitter = ClauseSplitter()
        async with self._llm_stream(self.clients.llm) as replies:
            async for reply in replies:
                if not reply.text:
                    continue
                self.progress.text_generated += reply.text
                await self.sink.text_delta(reply.text)
                for clause in splitter.push(reply.text):
                    self.sink.mark("first_clause")
                    await clauses.put(clause)
        for clause in splitter.flush():  # a reply without a clause end is one clause
            self.sink.mark("first_clause")
            await clauses.put(clause)
        await clauses.put(None)

    async def _run_text_only(self) -> None:
        self.progress.text_only = True
        async with self._llm_stream(self.clients.llm) as replies:
            async for reply in replies:
                if reply.text:
                    self.progress.text_generated += reply.text
                    await self.sink.text_delta(reply.text)

    async def _speak_clauses(
        self,
        clauses: asyncio.Queue[str | None],
        audio: asyncio.Queue[tuple[np.ndarray, str] | None],
    ) -> None:
        index, clause_text = 0, ""
        while (clause := await clauses.get()) is not None:
            clause_text = clause
            if index > 0:  # a held (speculative) response speaks only its first clause
                await self.sink.released.wait()
            await self._synthesize(clause, index, audio)
            index += 1
        if (tail := self._flush_output()).size:
            await audio.put((tail, clause_text))
        await audio.put(None)

    async def _synthesize(
        self, clause: str, index: int, audio: asyncio.Queue[tuple[np.ndarray, str] | None]
    ) -> None:
        options = tts_pb2.SynthesisOptions(
            output_sample_rate_hz=self._tts_rate_hz(), speed=self.plan.speed
        )
        if self.plan.seed is not None:
            options.seed = self.plan.seed + index
        request = tts_pb2.SynthesizeRequest(
            request_id=f"{self.plan.response_id}-{index}",
            text=clause,
            voice=self.plan.voice,
            options=options,
        )
        call = self.clients.tts.Synthesize(request, timeout=self.plan.rpc_timeout_s)
        try:
            async for reply in call:
                if reply.audio.data:
                    self.sink.mark("tts_first_chunk")
                    self.progress.tts_audio_tokens += len(reply.token_ids)
                    await audio.put((self._to_output(reply.audio), clause))
        finally:
            call.cancel()  # cancelled while waiting on the queue: the TTS must stop now

    async def _play(self, audio: asyncio.Queue[tuple[np.ndarray, str] | None]) -> None:
        while (item := await audio.get()) is not None:
            await self.sink.audio(*item)

    def _tts_rate_hz(self) -> int:
        """The TTS speaks at the output rate where it can; 8 kHz (G.711) is resampled here."""
        rate = self.sink.output_rate_hz
        return rate if rate in OUTPUT_RATES_HZ else 16_000

    def _flush_output(self) -> np.ndarray:
        """The resampler's last samples (its filter delay), once the audio has ended."""
        if self._resampler is None:
            return np.zeros(0, dtype=np.float32)
        return self._resampler.process(np.zeros(0, dtype=np.float32), last=True)

    def _to_output(self, chunk: audio_pb2.AudioChunk) -> np.ndarray:
        rate = chunk.format.sample_rate_hz
        if self._resampler is None or self._resampler.from_hz != rate:
            self._resampler = StreamResampler(rate, self.sink.output_rate_hz)
        return self._resampler.process(pcm_from_chunk(chunk))

    # -- end to end ------------------------------------------------------------------------

    async def _run_end_to_end(self) -> None:
        """The LLM's pieces: text → text deltas; whole audio groups → the TTS service's Vocode.

        The LLM service sorts the ids; this side knows no id ranges.
        """
        stub = self.clients.e2e_llm
        if stub is None:
            raise E2eUnavailable(
                "this deployment has no end-to-end LLM (CONTROLLER_SERVICES__E2E_LLM)"
            )
        self.progress.text_with_audio = True
        groups: asyncio.Queue[list[int] | None] = asyncio.Queue(maxsize=256)
        malformed: list[llm_pb2.MalformedAudio] = []
        await watch_stages(
            self.progress,
            llm=self._generate_groups(stub, groups, malformed),
            tts=self._vocode(groups),
        )
        for report in malformed:  # after the reply's audio, before response.done
            await self._report_malformed(report)

    async def _generate_groups(
        self,
        stub: llm_pb2_grpc.LlmServiceAsyncStub,
        groups: asyncio.Queue[list[int] | None],
        malformed: list[llm_pb2.MalformedAudio],
    ) -> None:
        """The end-to-end LLM's pieces: text deltas to the client, whole audio groups to the
        vocoder; a malformed-audio report (from the LLM service) is kept for after the audio."""
        async with self._llm_stream(stub) as replies:
            async for reply in replies:
                text, audio_ids, end = split_pieces(reply.pieces)
                if text:
                    self.progress.text_generated += text
                    await self.sink.text_delta(text)
                if audio_ids:  # one reply's groups go to the vocoder together
                    self.progress.audio_token_ids += len(audio_ids)
                    await groups.put(audio_ids)
                if end is not None and end.HasField("malformed_audio"):
                    malformed.append(end.malformed_audio)
        await groups.put(None)

    async def _report_malformed(self, malformed: llm_pb2.MalformedAudio) -> None:
        """Malformed audio from the LLM is named to the client; the reply and session go on."""
        self.progress.invalid_audio_ids += malformed.invalid_ids
        await self.sink.event(error_event(malformed.code, malformed.message))

    async def _vocode(self, groups: asyncio.Queue[list[int] | None]) -> None:
        config = tts_pb2.VocodeRequest.VocodeConfig(
            request_id=self.plan.response_id,
            voice=self.plan.voice,
            options=tts_pb2.SynthesisOptions(output_sample_rate_hz=self._tts_rate_hz()),
        )
        requests = QueueRequests(
            groups,
            lambda ids: tts_pb2.VocodeRequest(
                tokens=tts_pb2.VocodeRequest.AudioTokens(token_ids=ids)
            ),
            first=tts_pb2.VocodeRequest(config=config),
        )
        call = self.clients.tts.Vocode(requests, timeout=self.plan.rpc_timeout_s)
        try:
            async for reply in call:
                if reply.audio.data:
                    self.sink.mark("tts_first_chunk")
                    await self.sink.audio(self._to_output(reply.audio), None)
        finally:
            call.cancel()
        await self.sink.audio(self._flush_output(), None)


def split_pieces(
    pieces: Iterable[llm_pb2.StreamPiece],
) -> tuple[str, list[int], llm_pb2.StreamEnd | None]:
    """One reply's text, its whole audio groups' ids, and its end piece (if it has one)."""
    text, audio_ids = "", list[int]()
    end: llm_pb2.StreamEnd | None = None
    for piece in pieces:
        kind = piece.WhichOneof("kind")
        if kind == "text":
            text += piece.text
        elif kind == "audio_group":
            audio_ids += piece.audio_group.token_ids
        elif kind == "end":
            end = piece.end
    return text, audio_ids, end


async def watch_stages(progress: ResponseProgress, **stages: Coroutine[Any, Any, None]) -> None:
    """Run a reply's stages concurrently until all finish; the first that fails cancels the
    others and its error is raised, its service named in ``progress.failed_service``."""
    tasks = {asyncio.create_task(coro): name for name, coro in stages.items()}
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    progress.failed_service = "tts" if tasks[task] == "tts" else "llm"
                    raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class E2eUnavailable(RuntimeError):
    code = "llm_unavailable"


__all__ = [
    "ClauseSplitter",
    "E2eUnavailable",
    "ResponsePlan",
    "ResponseProgress",
    "ResponseRunner",
    "ResponseSink",
]
