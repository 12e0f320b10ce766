"""API keys, client secrets and per-key limits.

Keys are configured as SHA-256 hashes only (``stepaudio keys new`` prints a key and its
entry); a presented key is hashed and compared with every entry in constant time. Counters
live in Redis (hash-tagged per key, so a cluster keeps one key's counters in one slot), so
every controller replica enforces the same limits and no process keeps per-session state:

    sa:key:{id}:rpm:<minute>    requests in that minute (fixed window)
    sa:key:{id}:sessions        sorted set: session lease id → expiry (server time, ms)
    sa:key:{id}:audio:<day>     audio seconds used that UTC day
    sa:secret:<sha256>          a client secret's key id, expiring with the secret
    sa:authfail:<ip>:<minute>   failed authentications from one address
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, TypeAdapter, field_validator

from services.controller.config import AuthSettings

KEY_PREFIX = "sa-"
SECRET_PREFIX = "ek_"
SUBPROTOCOL_KEY_PREFIX = "openai-insecure-api-key."
SESSION_LEASE_MS = 30_000  # a crashed replica's sessions free their slots after this
AUTH_FAILURES_PER_MINUTE = 30  # per client address, then 429
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")

Role = Literal["user", "admin", "metrics"]


class ApiKey(BaseModel):
    """One configured key: its id, the SHA-256 of the key, its role and its own limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    sha256: str
    role: Role = "user"
    max_sessions: int | None = None
    requests_per_minute: int | None = None
    audio_minutes_per_day: float | None = None

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        if not _KEY_ID.fullmatch(value):
            raise ValueError("id: 1..64 of A-Z a-z 0-9 _ . -")
        return value

    @field_validator("sha256")
    @classmethod
    def _valid_hash(cls, value: str) -> str:
        value = value.lower()
        if not _SHA256.fullmatch(value):
            raise ValueError("sha256: 64 hex digits (the hash of the key, never the key)")
        return value


_KEYS = TypeAdapter(list[ApiKey])


@dataclass(frozen=True)
class Principal:
    """Who is calling, with the limits that apply to them."""

    key_id: str
    role: str
    max_sessions: int = 0
    requests_per_minute: int = 0
    audio_seconds_per_day: float = 0.0
    limited: bool = True  # False when authentication is off

    def can(self, need: str) -> bool:
        if self.role == "admin":
            return True
        return self.role == need


ANONYMOUS = Principal("anonymous", "admin", limited=False)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_entry(key_id: str, key: str, role: str = "user") -> dict[str, str]:
    return {"id": key_id, "sha256": hash_key(key), "role": role}


class KeyRing:
    """The configured keys (from CONTROLLER_AUTH__KEYS and/or the keys file)."""

    def __init__(self, entries: list[ApiKey], settings: AuthSettings) -> None:
        ids = [e.id for e in entries]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate API key ids: {duplicates}")
        self.entries = entries
        self.settings = settings
        self._by_id = {e.id: e for e in entries}

    @classmethod
    def load(cls, settings: AuthSettings) -> KeyRing:
        entries: list[ApiKey] = []
        sources = [("CONTROLLER_AUTH__KEYS", settings.keys)]
        if settings.keys_file:
            path = Path(settings.keys_file)
            try:
                sources.append((str(path), path.read_text(encoding="utf-8")))
            except OSError as exc:
                raise ValueError(f"cannot read the API keys file {path}: {exc}") from exc
        for where, text in sources:
            if not text.strip():
                continue
            try:
                entries += _KEYS.validate_python(json.loads(text))
            except ValueError as exc:  # JSON and validation errors name the source
                raise ValueError(f"invalid API keys in {where}: {exc}") from exc
        return cls(entries, settings)

    def match(self, presented: str) -> ApiKey | None:
        """The entry whose hash equals the presented key's; every entry is compared."""
        digest = hash_key(presented)
        found = None
        for entry in self.entries:
            if hmac.compare_digest(digest, entry.sha256):
                found = entry
        return found

    def by_id(self, key_id: str) -> ApiKey | None:
        return self._by_id.get(key_id)

    def principal(self, entry: ApiKey) -> Principal:
        s = self.settings
        minutes = entry.audio_minutes_per_day or s.audio_minutes_per_day
        return Principal(
            key_id=entry.id,
            role=entry.role,
            max_sessions=entry.max_sessions or s.max_sessions_per_key,
            requests_per_minute=entry.requests_per_minute or s.requests_per_minute,
            audio_seconds_per_day=minutes * 60,
        )


ACQUIRE_SESSION = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1
"""

RENEW_SESSION = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], 'XX', now_ms + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 1
"""


class Quotas:
    """Per-key counters and client secrets in Redis."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._acquire = redis.register_script(ACQUIRE_SESSION)
        self._renew = redis.register_script(RENEW_SESSION)

    @staticmethod
    def _key(principal: Principal, what: str) -> str:
        return f"sa:key:{{{principal.key_id}}}:{what}"

    async def count_request(self, principal: Principal) -> int | None:
        """Count one request; the seconds to wait when over the per-minute limit, else None."""
        if not principal.limited:
            return None
        now = time.time()
        key = self._key(principal, f"rpm:{int(now // 60)}")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, 120)
            count, _ = await pipe.execute()
        if int(count) > principal.requests_per_minute:
            return max(1, 60 - int(now % 60))
        return None

    async def auth_failure(self, client: str) -> None:
        key = f"sa:authfail:{client}:{int(time.time() // 60)}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, 120)
            await pipe.execute()

    async def auth_blocked(self, client: str) -> bool:
        count = await self.redis.get(f"sa:authfail:{client}:{int(time.time() // 60)}")
        return count is not None and int(count) >= AUTH_FAILURES_PER_MINUTE

    async def acquire_session(self, principal: Principal, lease_id: str) -> bool:
        if not principal.limited:
            return True
        keys = [self._key(principal, "sessions")]
        args: list[str | int] = [principal.max_sessions, SESSION_LEASE_MS, lease_id]
        return bool(await self._acquire(keys=keys, args=args))

    async def renew_session(self, principal: Principal, lease_id: str) -> None:
        if principal.limited:
            keys = [self._key(principal, "sessions")]
            await self._renew(keys=keys, args=[SESSION_LEASE_MS, lease_id])

    async def release_session(self, principal: Principal, lease_id: str) -> None:
        if principal.limited:
            await self.redis.zrem(self._key(principal, "sessions"), lease_id)

    def _audio_key(self, principal: Principal) -> str:
        return self._key(principal, f"audio:{time.strftime('%Y%m%d', time.gmtime())}")

    async def audio_left_s(self, principal: Principal) -> float:
        if not principal.limited:
            return float("inf")
        used = await self.redis.get(self._audio_key(principal))
        return principal.audio_seconds_per_day - float(used or 0)

    async def add_audio(self, principal: Principal, seconds: float) -> None:
        if not principal.limited or seconds <= 0:
            return
        key = self._audio_key(principal)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incrbyfloat(key, seconds)
            pipe.expire(key, 2 * 86_400)
            await pipe.execute()

    async def mint_secret(self, principal: Principal, ttl_s: int) -> tuple[str, int]:
        """A client secret for the browser: (value, expires_at epoch seconds)."""
        value = SECRET_PREFIX + secrets.token_urlsafe(32)
        await self.redis.set(f"sa:secret:{hash_key(value)}", principal.key_id, ex=ttl_s)
        return value, int(time.time()) + ttl_s

    async def secret_owner(self, value: str) -> str | None:
        owner = await self.redis.get(f"sa:secret:{hash_key(value)}")
        if owner is None:
            return None
        return owner.decode() if isinstance(owner, bytes) else str(owner)
