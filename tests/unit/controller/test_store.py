"""Redis session store against a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.controller.store import SessionNotFound, SessionStore, Turn, create_redis
from tests.helpers.redis import RedisServer


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[SessionStore]:
    client = create_redis(redis_server.url)
    yield SessionStore(client, ttl_s=600, max_turns=4)
    await client.aclose()


async def test_turns_append_in_order_and_trim(store: SessionStore) -> None:
    session = await store.create({"voice": "Tingting"})
    for index in range(6):
        await store.append_turn(session, Turn(role="user", text=f"t{index}"))
    record = await store.load(session)
    assert [t.text for t in record.turns] == ["t2", "t3", "t4", "t5"]
    assert record.version == 6 and record.settings == {"voice": "Tingting"}
    assert 590 <= await store.ttl(session) <= 600


async def test_append_is_idempotent_by_turn_id(store: SessionStore) -> None:
    session = await store.create({})
    turn = Turn(role="user", audio_token_ids=[65536, 66560])
    first = await store.append_turn(session, turn)
    again = await store.append_turn(session, turn)  # a retried write
    assert first == again == 1
    assert len((await store.load(session)).turns) == 1


async def test_update_turn_and_missing_session(store: SessionStore) -> None:
    session = await store.create({})
    turn = Turn(role="user", audio_token_ids=[65540])
    await store.append_turn(session, turn)
    turn.transcript = "hello"
    assert await store.update_turn(session, turn)
    assert (await store.load(session)).turns[0].transcript == "hello"
    assert not await store.update_turn(session, Turn(role="user"))
    with pytest.raises(SessionNotFound):
        await store.load("no-such-session")
    with pytest.raises(SessionNotFound):
        await store.append_turn("no-such-session", Turn(role="user"))
    await store.delete(session)
    assert not await store.exists(session)


async def test_context_survives_a_redis_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    client = create_redis(server.url)
    try:
        store = SessionStore(client, ttl_s=600, max_turns=10)
        session = await store.create({"voice": "v"})
        await store.append_turn(session, Turn(role="assistant", text="kept"))
        server.stop(kill=True)  # SIGKILL: only the AOF keeps the data
        assert not await store.ping()
        server.start()
        record = await store.load(session)  # the same client reconnects by itself
        assert [t.text for t in record.turns] == ["kept"]
        assert await store.ttl(session) > 590
    finally:
        await client.aclose()
        server.stop()
