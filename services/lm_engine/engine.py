"""LLM engines behind one interface: the torch reference engine here, vLLM in vllm_engine.py.

``TorchLlmEngine`` is synchronous with an explicit ``step()``: continuous batching over a slot
KV cache (admit and prefill one waiting request per step, then decode one token for every
running request in one batched forward). ``AsyncLlmEngine`` runs those steps on a dedicated
thread and hands each request's new ids to asyncio; it is the interface the gRPC server
uses, and the vLLM engine implements the same one. No grpc import here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import torch

from services.models.step1 import SamplingParams, Step1ForCausalLM, select_token

log = logging.getLogger(__name__)


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"


class EngineOverloaded(RuntimeError):
    """The waiting queue is full (maps to RESOURCE_EXHAUSTED / ``overloaded``)."""

    code = "overloaded"


class EngineClosed(RuntimeError):
    code = "unavailable"


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_ids: Sequence[int]
    params: SamplingParams


@dataclass(frozen=True)
class GenerationOutput:
    """New ids of one request since its previous output."""

    request_id: str
    token_ids: list[int]
    finished: bool = False
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None  # set when the engine failed the request


@dataclass
class _Sequence:
    request: GenerationRequest
    generator: torch.Generator
    history: list[int]
    slot: int = -1
    generated: int = 0
    next_logits: torch.Tensor | None = None
    stops: frozenset[int] = field(default_factory=frozenset)


class TorchLlmEngine:
    """Continuous batching over ``Step1ForCausalLM`` (CPU reference; also runs on CUDA)."""

    def __init__(
        self,
        model: Step1ForCausalLM,
        *,
        max_running: int = 8,
        max_waiting: int = 64,
        cache_capacity: int = 512,
    ) -> None:
        self.model = model
        self.config = model.config
        self.max_waiting = max_waiting
        self.cache = model.new_cache(max_running, capacity=cache_capacity)
        self._free_slots = list(range(max_running))
        self._waiting: deque[_Sequence] = deque()
        self._running: dict[str, _Sequence] = {}
        self._aborts: set[str] = set()
        self._lock = threading.Lock()  # guards _waiting and _aborts (touched from other threads)

    @classmethod
    def from_pretrained(cls, folder: Path, *, device: str = "cpu", **limits: int) -> TorchLlmEngine:
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        return cls(Step1ForCausalLM.from_pretrained(folder, dtype=dtype, device=device), **limits)

    # -- requests (any thread) -------------------------------------------------------------

    def validate(self, request: GenerationRequest) -> None:
        prompt = request.prompt_ids
        if not prompt:
            raise ValueError("the prompt is empty")
        if max(prompt) >= self.config.vocab_size or min(prompt) < 0:
            raise ValueError(f"prompt ids must be in [0, {self.config.vocab_size})")
        if len(prompt) >= self.config.max_seq_len:
            raise ValueError(
                f"prompt of {len(prompt)} tokens leaves no room under max_seq_len "
                f"{self.config.max_seq_len}"
            )

    def add_request(self, request: GenerationRequest) -> None:
        self.validate(request)
        eos = set() if request.params.ignore_eos else {self.config.eos_token_id}
        stops = frozenset({*eos, *request.params.stop_token_ids})
        sequence = _Sequence(
            request, request.params.make_generator(), list(request.prompt_ids), stops=stops
        )
        with self._lock:
            # free slots take waiting requests at the next steps; beyond them, max_waiting
            if len(self._waiting) >= self.max_waiting + len(self._free_slots):
                raise EngineOverloaded(
                    f"{self.num_running} running and {len(self._waiting)} waiting requests"
                )
            self._waiting.append(sequence)

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._aborts.add(request_id)

    def has_work(self) -> bool:
        with self._lock:
            return bool(self._waiting or self._running or self._aborts)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def fail_all(self, message: str) -> list[GenerationOutput]:
        """End every request with an error (after a failed step left their state unknown)."""
        with self._lock:
            waiting, self._waiting = list(self._waiting), deque()
        outputs = [self._finish_output(s, FinishReason.CANCELLED) for s in waiting]
        outputs += [self._release(s, FinishReason.CANCELLED) for s in list(self._running.values())]
        return [dataclasses.replace(o, error=message) for o in outputs]

    # -- the step (engine thread only) ------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[GenerationOutput]:
        outputs = self._apply_aborts()
        admitted = self._admit_one()
        decoding = [s for s in self._running.values() if s.next_logits is None]
        if decoding:
            self._decode(decoding)
        for sequence in [*([admitted] if admitted else []), *decoding]:
            outputs.append(self._sample(sequence))
        return outputs

    def _apply_aborts(self) -> list[GenerationOutput]:
        with self._lock:
            aborts, self._aborts = self._aborts, set()
            kept = deque(s for s in self._waiting if s.request.request_id not in aborts)
            dropped = [s for s in self._waiting if s.request.request_id in aborts]
            self._waiting = kept
        outputs = [self._finish_output(s, FinishReason.CANCELLED) for s in dropped]
        for request_id in aborts & self._running.keys():
            outputs.append(self._release(self._running[request_id], FinishReason.CANCELLED))
        return outputs

    def _admit_one(self) -> _Sequence | None:
        if not self._free_slots:
            return None
        with self._lock:
            if not self._waiting:
                return None
            sequence = self._waiting.popleft()
        sequence.slot = self._free_slots.pop()
        self.cache.reset(sequence.slot)
        prompt = torch.tensor([sequence.history], device=self.cache.lengths.device)
        slots = torch.tensor([sequence.slot], device=self.cache.lengths.device)
        sequence.next_logits = self.model(prompt, self.cache, slots, last_only=True)[0, -1]
        self._running[sequence.request.request_id] = sequence
        return sequence

    def _decode(self, sequences: list[_Sequence]) -> None:
        device = self.cache.lengths.device
        tokens = torch.tensor([[s.history[-1]] for s in sequences], device=device)
        slots = torch.tensor([s.slot for s in sequences], device=device)
        logits = self.model(tokens, self.cache, slots)[:, -1]
        for row, sequence in enumerate(sequences):
            sequence.next_logits = logits[row]

    def _sample(self, sequence: _Sequence) -> GenerationOutput:
        assert sequence.next_logits is not None
        params = sequence.request.params
        token = select_token(
            sequence.next_logits.cpu(), params, sequence.generator, sequence.history
        )
        sequence.next_logits = None
        if token in sequence.stops:
            return self._release(sequence, FinishReason.STOP)
        sequence.history.append(token)
        sequence.generated += 1
        full = len(sequence.history) >= self.config.max_seq_len
        if sequence.generated >= params.max_tokens or full:
            return self._release(sequence, FinishReason.LENGTH, [token])
        return GenerationOutput(
            sequence.request.request_id,
            [token],
            prompt_tokens=len(sequence.request.prompt_ids),
            completion_tokens=sequence.generated,
        )

    def _release(
        self, sequence: _Sequence, reason: FinishReason, tokens: list[int] | None = None
    ) -> GenerationOutput:
        del self._running[sequence.request.request_id]
        self.cache.reset(sequence.slot)
        self._free_slots.append(sequence.slot)
        return self._finish_output(sequence, reason, tokens or [])

    @staticmethod
    def _finish_output(
        sequence: _Sequence, reason: FinishReason, tokens: list[int] | None = None
    ) -> GenerationOutput:
        return GenerationOutput(
            sequence.request.request_id,
            tokens or [],
            finished=True,
            finish_reason=reason,
            prompt_tokens=len(sequence.request.prompt_ids),
            completion_tokens=sequence.generated,
        )


class LlmEngine(Protocol):
    """What the LLM and TTS services need from an engine (torch or vLLM)."""

    engine_name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationOutput, None]: ...

    async def abort(self, request_id: str) -> bool: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def max_seq_len(self) -> int: ...


class AsyncLlmEngine:
    """Runs ``TorchLlmEngine.step`` on its own thread; outputs stream to asyncio consumers."""

    engine_name = "torch"

    def __init__(self, engine: TorchLlmEngine, *, name: str = "llm-engine") -> None:
        self.engine = engine
        self._name = name
        self._streams: dict[str, asyncio.Queue[GenerationOutput]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_step_seconds = 0.0

    @property
    def vocab_size(self) -> int:
        return self.engine.config.vocab_size

    @property
    def max_seq_len(self) -> int:
        return self.engine.config.max_seq_len

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    async def close(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10.0)
        for queue in self._streams.values():
            queue.put_nowait(
                GenerationOutput("", [], finished=True, finish_reason=FinishReason.CANCELLED)
            )

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationOutput, None]:
        if self._stopping.is_set() or self._loop is None:
            raise EngineClosed("the engine is not running")
        if request.request_id in self._streams:
            raise ValueError(f"request id {request.request_id!r} is already running")
        # one output per engine step and at most max_tokens steps: the queue is bounded by that
        queue: asyncio.Queue[GenerationOutput] = asyncio.Queue()
        self.engine.add_request(request)
        self._streams[request.request_id] = queue
        self._wake.set()
        finished = False
        try:
            while not finished:
                output = await queue.get()
                finished = output.finished
                yield output
        finally:
            self._streams.pop(request.request_id, None)
            if not finished:
                self.engine.abort(request.request_id)
                self._wake.set()

    async def abort(self, request_id: str) -> bool:
        found = request_id in self._streams
        if found:
            self.engine.abort(request_id)
            self._wake.set()
        return found

    def _run(self) -> None:
        while not self._stopping.is_set():
            if not self.engine.has_work():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            started = time.perf_counter()
            try:
                outputs = self.engine.step()
            except Exception as exc:  # fail the requests, keep the thread serving new ones
                log.exception("engine step failed")
                outputs = self.engine.fail_all(f"engine step failed: {exc}")
            self.last_step_seconds = time.perf_counter() - started
            if outputs and self._loop is not None:
                self._loop.call_soon_threadsafe(self._deliver, outputs)

    def _deliver(self, outputs: list[GenerationOutput]) -> None:
        for output in outputs:
            queue = self._streams.get(output.request_id)
            if queue is not None:
                queue.put_nowait(output)
