"""ServiceClients.until_serving: what a session waits on before reopening a stream after an
outage (the VAD loop): one shared health poll per service, woken when the service serves."""

from __future__ import annotations

import asyncio

from services.common.grpc_server import start_server
from services.controller.clients import ServiceClients
from services.controller.config import ControllerSettings
from tests.unit.common.test_grpc_server import StubService, stub_settings


def polls(name: str) -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name() == f"serving-{name}" and not t.done()]


async def test_waiters_share_one_poll_and_wake_when_the_service_serves() -> None:
    service = StubService()  # loads until the test says so: NOT_SERVING meanwhile
    handle = await start_server(service, stub_settings())
    clients = ServiceClients.connect(ControllerSettings(services={"vad": handle.address}))
    try:
        waiters = [asyncio.ensure_future(clients.until_serving("vad")) for _ in range(20)]
        quitter = asyncio.ensure_future(clients.until_serving("vad"))
        await asyncio.sleep(0.6)  # several polls
        assert not any(w.done() for w in waiters)
        assert len(polls("vad")) == 1  # one health check per poll, not one per session
        quitter.cancel()  # a session that closes meanwhile leaves the poll to the others
        await asyncio.sleep(0.3)
        assert len(polls("vad")) == 1
        service.loaded.set()
        await handle.start_service()
        await asyncio.wait_for(asyncio.gather(*waiters), timeout=5)
        await asyncio.wait_for(clients.until_serving("vad"), timeout=5)  # serving: at once
        assert not polls("vad")
    finally:
        await clients.close()
        await handle.shutdown()


async def test_close_ends_a_poll_for_a_service_that_never_comes() -> None:
    clients = ServiceClients.connect(ControllerSettings(services={"vad": "127.0.0.1:1"}))
    waiter = asyncio.ensure_future(clients.until_serving("vad"))
    await asyncio.sleep(0.3)
    assert not waiter.done() and len(polls("vad")) == 1
    waiter.cancel()
    await clients.close()
    assert not polls("vad")
