"""Suite-wide fixtures: the tiny model pack (generated once per session), leaked-task check."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.helpers.redis import RedisServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every async test gets the leaked-task check."""
    for item in items:
        if inspect.iscoroutinefunction(getattr(item, "function", None)):
            item.fixturenames.insert(0, "no_leaked_tasks")  # type: ignore[attr-defined]


@pytest.fixture
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail an async test that leaves asyncio tasks running behind it (livekit's check)."""
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()  # the fixture's own teardown task

    def running() -> list[asyncio.Task[object]]:
        return [t for t in asyncio.all_tasks() - before if not t.done() and t is not current]

    for _ in range(50):  # cancelled tasks (grpc call cleanup) need a few loop turns to finish
        if not running():
            break
        await asyncio.sleep(0.01)
    leaked = running()
    for task in leaked:
        task.cancel()
    assert not leaked, f"test leaked asyncio tasks: {leaked}"


@pytest.fixture(scope="session")
def tiny_pack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The complete tiny model pack (+ the end-to-end AQAA folder), written once."""
    from services.models.tiny import write_tiny_pack

    root = tmp_path_factory.mktemp("tiny-pack")
    write_tiny_pack(root, variant="aqaa")
    yield root


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server (AOF on) shared by the session's tests."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone: counters kept per key and per address (failed
    authentications, quotas) never reach another test."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
