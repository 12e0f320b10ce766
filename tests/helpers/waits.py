"""Deadline-bounded waits for state that other tasks, threads or processes change.

CI runs on a loaded 2-core machine: a cancellation that crosses a gRPC hop, a counter bumped
by a server task or a turn stored after a disconnect lands some time after the event that
caused it. Tests wait for such state with a deadline instead of asserting it at once.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 15.0  # generous: only a real fault (a leak, a lost event) takes this long
POLL_S = 0.02


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    what: str = "condition",
) -> None:
    """Wait until ``predicate()`` (sync or async) holds; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s:.0f} s")
        await asyncio.sleep(POLL_S)


async def value_when(
    read: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    what: str = "value",
) -> T:
    """Poll ``read()`` until ``accept`` takes its value; return it (the last one read fails)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await read()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s:.0f} s: {value!r}")
        await asyncio.sleep(POLL_S)
