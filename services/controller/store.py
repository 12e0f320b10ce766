"""Per-session conversation context in Redis (async client).

Keys share the hash tag ``{session_id}`` so a session lives in one cluster slot:
    sa:{id}:meta    hash   created_at, version, voice, system_prompt, settings (JSON)
    sa:{id}:order   list   turn ids, oldest first
    sa:{id}:turns   hash   turn id → turn JSON
Every write refreshes the TTL of all three. Appending a turn is one Lua script: idempotent by
turn id (a retried write never duplicates a turn), trims to the newest ``max_turns``, bumps the
version. A resumed session reads the same keys, so a reconnect — also to another controller —
continues the conversation.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import redis.asyncio as aioredis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError
from redis.retry import Retry
from redis.typing import EncodableT, FieldT

APPEND_TURN = """
local meta, order, turns = KEYS[1], KEYS[2], KEYS[3]
local turn_id, turn_json, max_turns, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('EXISTS', meta) == 0 then return -1 end
if redis.call('HEXISTS', turns, turn_id) == 1 then
  return tonumber(redis.call('HGET', meta, 'version'))
end
redis.call('HSET', turns, turn_id, turn_json)
redis.call('RPUSH', order, turn_id)
while redis.call('LLEN', order) > max_turns do
  redis.call('HDEL', turns, redis.call('LPOP', order))
end
local version = redis.call('HINCRBY', meta, 'version', 1)
redis.call('EXPIRE', meta, ttl); redis.call('EXPIRE', order, ttl); redis.call('EXPIRE', turns, ttl)
return version
"""

UPDATE_TURN = """
local meta, order, turns = KEYS[1], KEYS[2], KEYS[3]
local turn_id, turn_json, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('HEXISTS', turns, turn_id) == 0 then return -1 end
redis.call('HSET', turns, turn_id, turn_json)
local version = redis.call('HINCRBY', meta, 'version', 1)
redis.call('EXPIRE', meta, ttl); redis.call('EXPIRE', order, ttl); redis.call('EXPIRE', turns, ttl)
return version
"""


class SessionNotFound(KeyError):
    code = "session_expired"


@dataclass
class Turn:
    role: str  # "user" | "assistant"
    text: str = ""
    audio_token_ids: list[int] = field(default_factory=list)
    transcript: str | None = None  # ASR text of a user audio turn, once known
    transcript_tokens: int | None = None  # LLM tokens of that transcript
    interrupted: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Turn:
        data = json.loads(raw)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})  # newer writers may add fields


@dataclass
class SessionRecord:
    session_id: str
    version: int
    created_at: float
    settings: dict[str, Any]
    turns: list[Turn]


def _keys(session_id: str) -> list[str]:
    tag = f"sa:{{{session_id}}}"
    return [f"{tag}:meta", f"{tag}:order", f"{tag}:turns"]


def create_redis(url: str, *, socket_timeout_s: float = 2.0, retries: int = 3) -> aioredis.Redis:
    """A client that retries connection blips and the LOADING state after a restart."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        health_check_interval=15,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries),
        retry_on_error=[ConnectionError, TimeoutError, BusyLoadingError],
        decode_responses=False,
    )


class SessionStore:
    def __init__(self, client: aioredis.Redis, *, ttl_s: int, max_turns: int) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.max_turns = max_turns
        self._append = client.register_script(APPEND_TURN)
        self._update = client.register_script(UPDATE_TURN)

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (ConnectionError, TimeoutError, BusyLoadingError, OSError):
            return False

    async def create(self, settings: dict[str, Any], session_id: str | None = None) -> str:
        session_id = session_id or uuid.uuid4().hex
        meta = _keys(session_id)[0]
        fields: dict[FieldT, EncodableT] = {
            "created_at": str(time.time()),
            "version": "0",
            "settings": json.dumps(settings, ensure_ascii=False),
        }
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(meta, mapping=fields)
            pipe.expire(meta, self.ttl_s)
            await pipe.execute()
        return session_id

    async def exists(self, session_id: str) -> bool:
        return bool(await self.client.exists(_keys(session_id)[0]))

    async def load(self, session_id: str) -> SessionRecord:
        meta_key, order_key, turns_key = _keys(session_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(meta_key)
            pipe.lrange(order_key, 0, -1)
            meta, order = await pipe.execute()
        if not meta:
            raise SessionNotFound(session_id)
        raw_turns = await self.client.hmget(turns_key, order) if order else []
        return SessionRecord(
            session_id=session_id,
            version=int(meta[b"version"]),
            created_at=float(meta[b"created_at"]),
            settings=json.loads(meta.get(b"settings", b"{}")),
            turns=[Turn.from_json(raw) for raw in raw_turns if raw is not None],
        )

    async def save_settings(self, session_id: str, settings: dict[str, Any]) -> None:
        keys = _keys(session_id)
        if not await self.client.exists(keys[0]):
            raise SessionNotFound(session_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(keys[0], "settings", json.dumps(settings, ensure_ascii=False))
            for key in keys:
                pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def append_turn(self, session_id: str, turn: Turn) -> int:
        """Append (idempotently by turn id); returns the session version."""
        version = await self._append(
            keys=_keys(session_id), args=[turn.id, turn.to_json(), self.max_turns, self.ttl_s]
        )
        if int(version) < 0:
            raise SessionNotFound(session_id)
        return int(version)

    async def update_turn(self, session_id: str, turn: Turn) -> bool:
        """Replace a stored turn (e.g. to add its transcript); False if it is gone."""
        version = await self._update(
            keys=_keys(session_id), args=[turn.id, turn.to_json(), self.ttl_s]
        )
        return int(version) >= 0

    async def ttl(self, session_id: str) -> int:
        return int(await self.client.ttl(_keys(session_id)[0]))

    async def delete(self, session_id: str) -> None:
        await self.client.delete(*_keys(session_id))
