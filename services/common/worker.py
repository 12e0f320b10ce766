"""Engine work off the event loop, through bounded queues.

Two primitives, both owning one dedicated thread:

``BatchStepLoop`` — continuous batching. Callers (one per session/stream/sequence) submit
items with a key; the thread repeatedly takes everything pending (up to ``max_batch``, at most
ONE item per key, oldest first), runs one batched engine step on the lot, and resolves each
caller's future with its own result. A key's next item waits for the next step, so a step may
update per-key state (a recurrent state, a KV cache slot) and the following item sees it. The
loop never waits to fill a batch: batches grow by themselves under load, because callers
arriving while a step runs are all taken by the next one. Used by VAD (one 32 ms frame per
session per step); meant for the LLM decode step and token2wav chunks too.

    loop = BatchStepLoop(engine.step, max_batch=64, max_pending=256, name="vad-step")
    loop.start()
    result = await loop.run(session_key, item)   # Overloaded when 256 items already wait
    await loop.aclose()

``RoundLoop`` — continuous batching of calls that need the model several times (a tokenizer
feed: one encoder chunk per 240 ms stride): each call is a step generator yielding jobs; every
round runs the current job of all active calls in one batched function, and a call resolves as
soon as its generator returns. Used by the tokenizer service.

``EngineWorker`` — the unbatched case: ``await worker.run(fn, *args)`` runs ``fn`` on the
worker's thread, one call at a time, FIFO.

Both raise ``Overloaded`` (code "overloaded") at once when the queue is full, rather than
queueing without limit, and ``WorkerClosed`` (code "unavailable") after ``aclose()``. A caller
that is cancelled while waiting just leaves: its item is skipped if its step has not started.
Step functions must not block forever: ``aclose`` waits for the running step to end.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")
T = TypeVar("T")


def observe_step(observer: StepObserver | None, size: int, seconds: float, what: str) -> None:
    """Report one step (batch size, seconds) to a metrics observer; metrics must never break
    the engine loop that calls this, so a failing observer is logged and ignored."""
    if observer is None:
        return
    try:
        observer(size, seconds)
    except Exception:
        log.exception("%s observer failed", what)


class Overloaded(RuntimeError):
    """The engine queue is full; the caller should shed the request (RESOURCE_EXHAUSTED)."""

    code = "overloaded"


class WorkerClosed(RuntimeError):
    """The worker is shutting down or stopped; no new work is taken (UNAVAILABLE)."""

    code = "unavailable"


@dataclass(eq=False)
class _Job(Generic[ItemT, ResultT]):
    key: Hashable
    item: ItemT
    future: asyncio.Future[ResultT]
    loop: asyncio.AbstractEventLoop


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _post(job: _Job[Any, Any], result: Any, error: BaseException | None) -> None:
    try:
        job.loop.call_soon_threadsafe(_settle, job.future, result, error)
    except RuntimeError:  # the caller's loop is closed; nobody is waiting any more
        pass


StepFn = Callable[[list[ItemT]], Sequence[ResultT]]
StepObserver = Callable[[int, float], None]


class BatchStepLoop(Generic[ItemT, ResultT]):
    """One thread running ``step(items) -> results`` over all pending items, one per key."""

    def __init__(
        self,
        step: StepFn[ItemT, ResultT],
        *,
        max_batch: int,
        max_pending: int,
        name: str,
        on_step: StepObserver | None = None,
    ) -> None:
        if max_batch < 1 or max_pending < 1:
            raise ValueError("max_batch and max_pending must be >= 1")
        self._step = step
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._on_step = on_step  # (batch size, step seconds), called on the worker thread
        self._pending: deque[_Job[ItemT, ResultT]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run_thread, name=name, daemon=True)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        self._thread.start()

    def submit(self, key: Hashable, item: ItemT) -> asyncio.Future[ResultT]:
        """Queue ``item`` for ``key``'s next step; await the returned future for its result."""
        loop = asyncio.get_running_loop()
        job: _Job[ItemT, ResultT] = _Job(key, item, loop.create_future(), loop)
        with self._cond:
            if self._closed:
                raise WorkerClosed(f"{self._thread.name} is shutting down")
            if len(self._pending) >= self._max_pending:
                raise Overloaded(f"{self._thread.name} queue is full ({self._max_pending} items)")
            self._pending.append(job)
            self._cond.notify()
        return job.future

    async def run(self, key: Hashable, item: ItemT) -> ResultT:
        future = self.submit(key, item)
        try:
            return await future
        finally:
            future.cancel()  # no-op when done; marks the job skippable if we were cancelled

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Stop taking work, fail what is still queued, wait for the running step to end."""
        with self._cond:
            self._closed = True
            leftovers, self._pending = list(self._pending), deque()
            self._cond.notify_all()
        for job in leftovers:
            _post(job, None, WorkerClosed(f"{self._thread.name} shut down"))
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, timeout_s)  # join() would block the loop
        if self._thread.is_alive():
            log.warning("worker thread did not stop name=%s", self._thread.name)

    # ----- worker thread -----

    def _next_batch(self) -> list[_Job[ItemT, ResultT]] | None:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            batch: list[_Job[ItemT, ResultT]] = []
            keys: set[Hashable] = set()
            waiting: deque[_Job[ItemT, ResultT]] = deque()
            while self._pending and len(batch) < self._max_batch:
                job = self._pending.popleft()
                if job.key in keys:
                    waiting.append(job)  # one item per key per step; order kept
                else:
                    batch.append(job)
                    keys.add(job.key)
            waiting.extend(self._pending)
            self._pending = waiting
            return batch

    def _run_thread(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = [job for job in batch if not job.future.cancelled()]
            if live:
                self._run_step(live)

    def _run_step(self, jobs: list[_Job[ItemT, ResultT]]) -> None:
        started = time.perf_counter()
        try:
            results = self._step([job.item for job in jobs])
            if len(results) != len(jobs):
                raise RuntimeError(f"step returned {len(results)} results for {len(jobs)} items")
        except Exception as exc:  # one failed step fails its batch, not the loop
            # Callers get the exception and decide how loud to be (servers log internal errors).
            log.debug("step failed name=%s size=%d", self._thread.name, len(jobs), exc_info=True)
            for job in jobs:
                _post(job, None, exc)
            return
        self._observe(len(jobs), time.perf_counter() - started)
        for job, result in zip(jobs, results, strict=True):
            _post(job, result, None)

    def _observe(self, size: int, seconds: float) -> None:
        observe_step(self._on_step, size, seconds, "on_step")


class EngineWorker:
    """Runs blocking engine calls one at a time on a dedicated thread, behind a bounded queue."""

    def __init__(self, name: str, max_queue: int) -> None:
        self._loop: BatchStepLoop[Callable[[], Any], Any] = BatchStepLoop(
            self._call_one, max_batch=1, max_pending=max_queue, name=name
        )

    @staticmethod
    def _call_one(calls: list[Callable[[], Any]]) -> list[Any]:
        return [calls[0]()]

    @property
    def pending(self) -> int:
        return self._loop.pending

    def start(self) -> None:
        self._loop.start()

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the worker thread; Overloaded if the queue is full."""
        call = functools.partial(fn, *args, **kwargs)
        result: T = await self._loop.run(object(), call)  # a fresh key: no per-key ordering
        return result

    async def aclose(self, timeout_s: float = 10.0) -> None:
        await self._loop.aclose(timeout_s)


@dataclass(eq=False)
class _Task:
    steps: Generator[Any, Any, Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    job: Any = None
    started: bool = False
    done: bool = False  # resolved (set on the worker thread; the future follows on its loop)


RoundFn = Callable[[list[Any]], Sequence[Any]]


class RoundLoop:
    """One thread driving step generators in lock-step rounds: continuous batching for
    calls that need the model several times (a tokenizer feed: one encoder chunk per stride).

    ``await loop.run(steps)`` submits a generator that yields jobs and receives their results;
    each round the thread takes the current job of every task (tasks submitted meanwhile join
    at the next round), runs ``round_fn(jobs) -> results`` once, sends each result into its
    generator and resolves the caller's future as soon as its generator returns. The code
    between yields runs on the thread too. A generator that raises fails only its own call; a
    failed round fails the tasks in it. A cancelled caller's generator is closed at the next
    round. More than ``max_pending`` tasks at once → ``Overloaded``.
    """

    def __init__(
        self,
        round_fn: RoundFn,
        *,
        max_pending: int,
        name: str,
        on_round: StepObserver | None = None,
    ) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        self._round_fn = round_fn
        self._max_pending = max_pending
        self._on_round = on_round  # (jobs in the round, round seconds), on the worker thread
        self._incoming: deque[_Task] = deque()
        self._active: list[_Task] = []  # thread-owned
        self._count = 0  # submitted and not finished (guarded by the condition)
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run_thread, name=name, daemon=True)

    @property
    def pending(self) -> int:
        """Calls submitted and not finished."""
        return self._count

    def start(self) -> None:
        self._thread.start()

    async def run(self, steps: Generator[Any, Any, T]) -> T:
        loop = asyncio.get_running_loop()
        task = _Task(steps, loop.create_future(), loop)
        with self._cond:
            if self._closed:
                steps.close()
                raise WorkerClosed(f"{self._thread.name} is shutting down")
            if self._count >= self._max_pending:
                steps.close()
                raise Overloaded(f"{self._thread.name} queue is full ({self._max_pending} calls)")
            self._count += 1
            self._incoming.append(task)
            self._cond.notify()
        try:
            result: T = await task.future
            return result
        finally:
            task.future.cancel()  # no-op when done; the thread then drops the task

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Stop taking work, fail what is queued or running, wait for the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, timeout_s)
        if self._thread.is_alive():
            log.warning("worker thread did not stop name=%s", self._thread.name)

    # ----- worker thread -----

    def _admit(self) -> bool:
        """Move submitted tasks into the round set; False once closed."""
        with self._cond:
            while not self._incoming and not self._active and not self._closed:
                self._cond.wait()
            if self._closed:
                leftovers = [*self._active, *self._incoming]
                self._active, self._incoming = [], deque()
                self._count = 0
            else:
                self._active.extend(self._incoming)
                self._incoming.clear()
                return True
        for task in leftovers:
            task.steps.close()
            self._resolve(task, None, WorkerClosed(f"{self._thread.name} shut down"), counted=False)
        return False

    def _run_thread(self) -> None:
        while self._admit():
            for task in [t for t in self._active if not t.started]:
                task.started = True
                self._advance(task, None)
            self._active = [t for t in self._active if self._keep(t)]
            if self._active:
                self._run_round()

    def _keep(self, task: _Task) -> bool:
        if not task.done and task.future.cancelled():  # its caller left
            task.steps.close()
            self._resolve(task, None, None)
        return not task.done

    def _run_round(self) -> None:
        tasks = list(self._active)
        started = time.perf_counter()
        try:
            results = self._round_fn([task.job for task in tasks])
            if len(results) != len(tasks):
                raise RuntimeError(f"round returned {len(results)} results for {len(tasks)} jobs")
        except Exception as exc:  # one failed round fails its tasks, not the loop
            log.debug("round failed name=%s size=%d", self._thread.name, len(tasks), exc_info=True)
            for task in tasks:
                task.steps.close()
                if not task.done:
                    self._resolve(task, None, exc)
            self._active = []
            return
        observe_step(self._on_round, len(tasks), time.perf_counter() - started, "on_round")
        for task, result in zip(tasks, results, strict=True):
            self._advance(task, result)
        self._active = [t for t in self._active if self._keep(t)]

    def _advance(self, task: _Task, value: Any) -> None:
        """Send ``value``; the task then holds its next job, or is resolved."""
        try:
            task.job = task.steps.send(value)
        except StopIteration as stop:
            self._resolve(task, stop.value, None)
        except Exception as exc:  # this call's own error (bad audio, ...)
            self._resolve(task, None, exc)

    def _resolve(
        self, task: _Task, result: Any, error: BaseException | None, counted: bool = True
    ) -> None:
        task.done = True
        if counted:
            with self._cond:
                self._count -= 1
        try:
            task.loop.call_soon_threadsafe(_settle, task.future, result, error)
        except RuntimeError:  # the caller's loop is closed
            pass
