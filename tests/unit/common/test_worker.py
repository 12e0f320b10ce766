from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Generator

import pytest

from services.common.worker import (
    BatchStepLoop,
    EngineWorker,
    Overloaded,
    RoundLoop,
    WorkerClosed,
)


@pytest.fixture
async def worker() -> AsyncIterator[EngineWorker]:
    engine_worker = EngineWorker("test-worker", max_queue=2)
    engine_worker.start()
    yield engine_worker
    await engine_worker.aclose()


async def test_worker_runs_off_the_event_loop(worker: EngineWorker) -> None:
    loop_thread = threading.get_ident()
    thread_id = await worker.run(threading.get_ident)
    assert thread_id != loop_thread
    assert await worker.run(divmod, 7, 2) == (3, 1)


async def test_worker_propagates_exceptions(worker: EngineWorker) -> None:
    with pytest.raises(ZeroDivisionError):
        await worker.run(lambda: 1 / 0)
    assert await worker.run(lambda: "still alive") == "still alive"


async def test_worker_overload_when_queue_full(worker: EngineWorker) -> None:
    started, gate = threading.Event(), threading.Event()

    def hold() -> bool:
        started.set()
        return gate.wait(5)

    busy = asyncio.ensure_future(worker.run(hold))  # occupies the thread
    assert await asyncio.to_thread(started.wait, 5)
    queued = [asyncio.ensure_future(worker.run(lambda: "queued")) for _ in range(2)]
    await asyncio.sleep(0)  # let them enqueue
    with pytest.raises(Overloaded, match="queue is full"):
        await worker.run(lambda: "one too many")
    gate.set()
    assert await busy is True
    assert await asyncio.gather(*queued) == ["queued", "queued"]


async def test_worker_refuses_work_after_close() -> None:
    engine_worker = EngineWorker("closing", max_queue=4)
    engine_worker.start()
    await engine_worker.aclose()
    with pytest.raises(WorkerClosed):
        await engine_worker.run(lambda: None)


class RecordingStep:
    """A batched step that records its batches and can be held at a gate."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, items: list[tuple[str, int]]) -> list[int]:
        self.entered.set()
        self.gate.wait(5)
        self.batches.append(list(items))
        return [value * 10 for _, value in items]


async def _hold_first_step(loop: BatchStepLoop[tuple[str, int], int], step: RecordingStep):
    """Submit a blocker and wait until the thread is inside the step."""
    step.entered.clear()
    step.gate.clear()
    blocker = loop.submit("blocker", ("blocker", 0))
    assert await asyncio.to_thread(step.entered.wait, 5)
    return blocker


async def test_batch_loop_batches_across_keys_one_item_per_key() -> None:
    step = RecordingStep()
    loop = BatchStepLoop(step, max_batch=3, max_pending=16, name="test-step")
    loop.start()
    try:
        blocker = await _hold_first_step(loop, step)
        futures = [
            loop.submit("a", ("a", 1)),
            loop.submit("a", ("a", 2)),  # same key: must wait for a later step
            loop.submit("b", ("b", 1)),
            loop.submit("c", ("c", 1)),
            loop.submit("d", ("d", 1)),  # over max_batch: next step
        ]
        step.gate.set()
        assert await blocker == 0
        assert await asyncio.gather(*futures) == [10, 20, 10, 10, 10]
    finally:
        await loop.aclose()
    assert step.batches[1] == [("a", 1), ("b", 1), ("c", 1)]
    assert step.batches[2] == [("a", 2), ("d", 1)]
    assert all(len(batch) <= 3 for batch in step.batches)


async def test_batch_loop_overload_and_observer() -> None:
    step = RecordingStep()
    observed: list[tuple[int, float]] = []
    loop = BatchStepLoop(
        step,
        max_batch=8,
        max_pending=2,
        name="test-step",
        on_step=lambda size, seconds: observed.append((size, seconds)),
    )
    loop.start()
    try:
        blocker = await _hold_first_step(loop, step)
        first, second = loop.submit("a", ("a", 1)), loop.submit("b", ("b", 1))
        with pytest.raises(Overloaded):
            loop.submit("c", ("c", 1))
        step.gate.set()
        await asyncio.gather(blocker, first, second)
    finally:
        await loop.aclose()
    assert [size for size, _ in observed] == [1, 2]
    assert all(seconds >= 0 for _, seconds in observed)


async def test_batch_loop_step_error_fails_its_batch_only() -> None:
    def step(items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("unlucky batch")
        return items

    loop = BatchStepLoop(step, max_batch=4, max_pending=8, name="test-step")
    loop.start()
    try:
        with pytest.raises(ValueError, match="unlucky"):
            await loop.run("a", 13)
        assert await loop.run("a", 7) == 7
    finally:
        await loop.aclose()


async def test_batch_loop_skips_cancelled_items_and_fails_leftovers_on_close() -> None:
    step = RecordingStep()
    loop = BatchStepLoop(step, max_batch=4, max_pending=8, name="test-step")
    loop.start()
    blocker = await _hold_first_step(loop, step)
    cancelled = loop.submit("x", ("x", 1))
    cancelled.cancel()
    step.gate.set()
    await blocker
    await loop.run("y", ("y", 1))
    assert [key for batch in step.batches for key, _ in batch] == ["blocker", "y"]

    blocker = await _hold_first_step(loop, step)
    leftover = loop.submit("z", ("z", 1))
    close = asyncio.ensure_future(loop.aclose())
    await asyncio.sleep(0.01)
    step.gate.set()
    await close
    assert await blocker == 0  # the running step completes
    with pytest.raises(WorkerClosed):
        await leftover
    assert loop.closed


# ----- RoundLoop -----


def doubling(n_jobs: int) -> Generator[int, int, list[int]]:
    """A call that needs the model ``n_jobs`` times (jobs 0, 11, 22, ...)."""
    out = []
    for i in range(n_jobs):
        out.append((yield 11 * i))
    return out


class GatedRounds:
    """round_fn recording each round's jobs; rounds wait for ``gate`` once it is cleared."""

    def __init__(self) -> None:
        self.rounds: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, jobs: list[int]) -> list[int]:
        self.entered.set()
        self.gate.wait(5)
        if any(job < 0 for job in jobs):
            raise RuntimeError("bad round")
        self.rounds.append(list(jobs))
        return [2 * job for job in jobs]


async def test_round_loop_batches_calls_that_join_mid_way() -> None:
    rounds = GatedRounds()
    loop = RoundLoop(rounds, max_pending=4, name="test-rounds")
    rounds.gate.clear()
    loop.start()
    first = asyncio.ensure_future(loop.run(doubling(3)))
    await asyncio.to_thread(rounds.entered.wait, 5)  # round 1 (a alone) is running
    second = asyncio.ensure_future(loop.run(doubling(2)))
    await asyncio.sleep(0)  # b is submitted while a's round runs
    rounds.gate.set()
    assert await first == [0, 22, 44]
    assert await second == [0, 22]
    # a alone, then a's later jobs and b's in the same rounds
    assert rounds.rounds == [[0], [11, 0], [22, 11]]
    assert loop.pending == 0
    await loop.aclose()


async def test_round_loop_errors_cancellation_overload_and_close() -> None:
    rounds = GatedRounds()
    loop = RoundLoop(rounds, max_pending=2, name="test-rounds")
    loop.start()

    def failing() -> Generator[int, int, int]:
        yield 1
        raise ValueError("bad audio")

    with pytest.raises(ValueError, match="bad audio"):  # fails only its own call
        await loop.run(failing())

    def bad_job() -> Generator[int, int, int]:
        return (yield -1)

    with pytest.raises(RuntimeError, match="bad round"):  # a failed round fails its calls
        await loop.run(bad_job())

    closed = []

    def endless() -> Generator[int, int, int]:
        try:
            while True:
                yield 1
        finally:
            closed.append(True)

    rounds.gate.clear()
    left = asyncio.ensure_future(loop.run(endless()))
    busy = asyncio.ensure_future(loop.run(endless()))
    await asyncio.to_thread(rounds.entered.wait, 5)
    with pytest.raises(Overloaded):
        await loop.run(doubling(1))
    left.cancel()  # the caller leaves: its generator is closed at the next round
    rounds.gate.set()
    for _ in range(500):
        if closed:
            break
        await asyncio.sleep(0.01)
    assert closed == [True]
    await loop.aclose()
    with pytest.raises(WorkerClosed):
        await busy
    with pytest.raises(WorkerClosed):
        await loop.run(doubling(1))
