"""The batched vocoder: one thread per device owns the Token2Wav models and decodes every
active stream's due chunks together, tick after tick.

Each request opens a ``VocoderStream`` (admission: at most ``max_streams`` per loop, else
``Overloaded`` before any work starts), pushes audio codes into it from the event loop as the
LM (or a Vocode client) delivers them, and reads ``VocoderOutput``s back. The loop thread
repeatedly takes every stream that has new codes (or was finished), hands them to
``step_streams`` in one call per model — one batched flow + HiFT step across streams — and
posts each stream's audio to its consumer as soon as that stream's chunk group is decoded.

Handoffs are bounded both ways: ``push`` waits while a stream already holds
``max_inbox_codes`` codes the loop has not taken, and the loop skips a stream whose consumer
has ``max_undelivered`` outputs it has not read yet. ``close`` (the client left) removes the
stream from the loop at once; a step already running finishes, and its audio is dropped.

Per stream, the audio equals what the stream's own ``feed``/``finish`` calls would give, up to
float summation order of the padded batch (docs/token2wav.md, "Batching").
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from services.common.audio import StreamResampler
from services.common.worker import Overloaded, WorkerClosed, observe_step
from services.models.token2wav import Token2Wav, Token2WavStream
from services.models.token2wav.batching import StreamStep, step_streams
from services.models.token2wav.streaming import ChunkJob

log = logging.getLogger(__name__)

StepObserver = Callable[[int, float], None]  # (streams in the step, step seconds)


@dataclass(frozen=True)
class VocoderOutput:
    """Audio of one decoded chunk (or the final flush) of one stream."""

    samples: np.ndarray  # float32 at the stream's output rate
    codes_used: int  # the stream's codes [0, codes_used) made this audio and what came before
    final: bool = False


@dataclass
class _Take:
    """What one tick takes from a stream: its new codes and whether they are the last."""

    stream: VocoderStream
    codes: list[int]
    finish: bool


class VocoderStream:
    """One utterance in the loop. ``push``/``finish``/``get``/``close`` run on the event loop;
    the Token2WavStream and the resampler are used by the loop thread only."""

    def __init__(
        self,
        owner: VocoderLoop,
        model: Token2Wav,
        open_stream: Callable[[], Token2WavStream],
        resampler: StreamResampler,
    ) -> None:
        self._owner = owner
        self.model = model
        self._open_stream = open_stream
        self._resampler = resampler
        self._stream: Token2WavStream | None = None  # made by the loop thread on first use
        self._aio_loop = asyncio.get_running_loop()
        self._outputs: asyncio.Queue[VocoderOutput | BaseException] = asyncio.Queue()
        self._room = asyncio.Event()
        # guarded by the owner's lock:
        self._inbox: list[int] = []
        self._finish_requested = False
        self._finish_taken = False
        self._undelivered = 0
        self._closed = False

    # ----- event-loop side -----

    async def push(self, codes: Sequence[int]) -> None:
        """Hand codes to the loop; waits while the loop has not taken the previous ones."""
        if not codes:
            return
        cond = self._owner._cond
        while True:
            with cond:
                self._check_open()
                if len(self._inbox) < self._owner.max_inbox_codes:
                    self._inbox.extend(codes)
                    cond.notify()
                    return
                self._room.clear()
            await self._room.wait()

    async def finish(self, codes: Sequence[int] = ()) -> None:
        """The last codes (possibly none): the loop decodes everything left, then the final
        output (``final=True``) follows."""
        await self.push(codes)
        with self._owner._cond:
            self._check_open()
            self._finish_requested = True
            self._owner._cond.notify()

    async def get(self) -> VocoderOutput:
        """The next output; raises the error that ended the stream, if one did."""
        item = await self._outputs.get()
        if isinstance(item, BaseException):
            raise item
        with self._owner._cond:
            self._undelivered -= 1
            self._owner._cond.notify()
        return item

    def abort(self, error: BaseException) -> None:
        """End the stream with ``error`` (raised by the consumer's next ``get``)."""
        self.close()
        self._outputs.put_nowait(error)

    def close(self) -> None:
        """Leave the loop now (idempotent); later outputs are dropped."""
        self._owner._remove(self)

    def _check_open(self) -> None:
        if self._closed:
            raise WorkerClosed("the vocoder stream is closed")

    # ----- loop-thread side -----

    def _ready(self, max_undelivered: int) -> bool:
        if self._finish_taken or self._undelivered >= max_undelivered:
            return False
        return bool(self._inbox) or self._finish_requested

    def _take(self) -> _Take:
        codes, self._inbox = self._inbox, []
        finish = self._finish_taken = self._finish_requested
        self._aio_loop.call_soon_threadsafe(self._room.set)
        return _Take(self, codes, finish)

    def _token2wav(self) -> Token2WavStream:
        if self._stream is None:
            self._stream = self._open_stream()
        return self._stream

    def _post_audio(self, audio: np.ndarray, codes_used: int, final: bool) -> None:
        """Chunk audio (before volume) → resampled output for the consumer."""
        stream = self._token2wav()
        samples = self._resampler.process(stream.join([audio]) if audio.size else audio, final)
        self._post(VocoderOutput(samples, codes_used, final))

    def _post(self, item: VocoderOutput | BaseException) -> None:
        with self._owner._cond:
            if self._closed:
                return
            if isinstance(item, VocoderOutput):
                self._undelivered += 1
        try:
            self._aio_loop.call_soon_threadsafe(self._outputs.put_nowait, item)
        except RuntimeError:  # the consumer's event loop is closed; nobody is waiting
            pass


class VocoderLoop:
    """The thread owning one device's Token2Wav models (see the module docstring)."""

    def __init__(
        self,
        *,
        max_streams: int,
        max_inbox_codes: int,
        max_undelivered: int,
        name: str = "tts-vocoder",
        on_step: StepObserver | None = None,
    ) -> None:
        if min(max_streams, max_inbox_codes, max_undelivered) < 1:
            raise ValueError("max_streams, max_inbox_codes and max_undelivered must be >= 1")
        self.max_streams = max_streams
        self.max_inbox_codes = max_inbox_codes
        self.max_undelivered = max_undelivered
        self._on_step = on_step
        self._cond = threading.Condition()
        self._streams: list[VocoderStream] = []  # admission order
        self._closed = False
        self._thread = threading.Thread(target=self._run_thread, name=name, daemon=True)

    @property
    def active(self) -> int:
        return len(self._streams)

    def start(self) -> None:
        self._thread.start()

    def open(
        self,
        model: Token2Wav,
        open_stream: Callable[[], Token2WavStream],
        output_hz: int,
    ) -> VocoderStream:
        """Admit a stream (call on the event loop); ``Overloaded`` when the loop is full.

        ``open_stream`` makes the Token2WavStream on the loop thread, at the first tick that
        has codes for it, so admission never waits for a running step.
        """
        stream = VocoderStream(
            self, model, open_stream, StreamResampler(model.sample_rate_hz, output_hz)
        )
        with self._cond:
            if self._closed:
                raise WorkerClosed(f"{self._thread.name} is shutting down")
            if len(self._streams) >= self.max_streams:
                raise Overloaded(
                    f"the vocoder is full ({self.max_streams} streams on this device); retry later"
                )
            self._streams.append(stream)
        return stream

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Refuse new streams, end the open ones with ``WorkerClosed``, wait for the thread."""
        with self._cond:
            self._closed = True
            streams, self._streams = self._streams, []
            self._cond.notify_all()
        for stream in streams:
            stream._post(WorkerClosed(f"{self._thread.name} shut down"))
            with self._cond:
                stream._closed = True
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, timeout_s)
        if self._thread.is_alive():
            log.warning("vocoder thread did not stop name=%s", self._thread.name)

    def _remove(self, stream: VocoderStream) -> None:
        with self._cond:
            stream._closed = True
            if stream in self._streams:
                self._streams.remove(stream)

    # ----- loop thread -----

    def _next_tick(self) -> list[_Take] | None:
        with self._cond:
            while not self._closed:
                ready = [s for s in self._streams if s._ready(self.max_undelivered)]
                if ready:
                    return [stream._take() for stream in ready]
                self._cond.wait()
            return None

    def _run_thread(self) -> None:
        while (takes := self._next_tick()) is not None:
            started = time.perf_counter()
            models: dict[int, list[_Take]] = {}
            for take in takes:
                models.setdefault(id(take.stream.model), []).append(take)
            for group in models.values():
                self._step(group)
            self._observe(len(takes), time.perf_counter() - started)

    def _step(self, takes: list[_Take]) -> None:
        """One batched token2wav step for the streams of one model."""
        live: list[_Take] = []
        steps: list[StreamStep] = []
        for take in takes:
            try:
                steps.append(StreamStep(take.stream._token2wav(), take.codes, take.finish))
                live.append(take)
            except Exception as exc:  # a bad stream fails alone
                self._fail(take.stream, exc)
        if not steps:
            return

        finished: set[int] = set()

        def on_chunk(index: int, job: ChunkJob, audio: np.ndarray) -> None:
            if job.final:
                finished.add(index)
            live[index].stream._post_audio(audio, job.stop, final=job.final)

        try:
            step_streams(live[0].stream.model, steps, on_chunk)
        except Exception as exc:  # stream state is unknown after a failed step: end them all
            log.debug("vocoder step failed streams=%d", len(live), exc_info=True)
            for take in live:
                self._fail(take.stream, exc)
            return
        for index, take in enumerate(live):
            if take.finish and index not in finished:  # finished without codes: say final
                take.stream._post_audio(np.zeros(0, dtype=np.float32), 0, final=True)

    def _fail(self, stream: VocoderStream, error: BaseException) -> None:
        stream._post(error)
        self._remove(stream)

    def _observe(self, size: int, seconds: float) -> None:
        observe_step(self._on_step, size, seconds, "vocoder on_step")
