from __future__ import annotations

import asyncio
import threading

from services.tokenizer.server import WorkerPool


async def test_pool_spreads_calls_and_closes() -> None:
    pool = WorkerPool("test-pool", size=2, max_queue=4)
    pool.start()
    gate = threading.Event()

    def blocked() -> str:
        gate.wait(5)
        return threading.current_thread().name

    first = asyncio.ensure_future(pool.run(blocked))
    second = asyncio.ensure_future(pool.run(blocked))
    await asyncio.sleep(0.05)
    gate.set()
    names = [await first, await second]
    assert sorted(names) == ["test-pool-0", "test-pool-1"]  # the idle worker took the second
    await pool.aclose()
