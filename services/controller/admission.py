"""Admission of realtime sessions: drain, pod capacity, per-key session cap, audio quota.

A refused connect is accepted and then closed with a code and a reason a browser can read
(1013 "try again later"; 1008 for a used-up daily quota), never an empty HTTP 403 at the
handshake. Per-key session slots are leases in Redis (shared by replicas, freed by expiry if
a replica dies); a keeper task renews the lease and meters the session's audio against the
key's daily quota.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import WebSocket
from redis.exceptions import RedisError

from services.controller.auth import ANONYMOUS, SESSION_LEASE_MS, SUBPROTOCOL_KEY_PREFIX, Principal
from services.controller.http_server import close_socket
from services.controller.state import ControllerState

log = logging.getLogger(__name__)

TRY_AGAIN_LATER, POLICY = 1013, 1008
KEEPER_INTERVAL_S = SESSION_LEASE_MS / 1000 / 3
# a session id that is never found: resuming another key's session starts a fresh one
FOREIGN_SESSION = "not-yours"


@dataclass
class Admission:
    principal: Principal
    lease_id: str
    session: Any = None  # the RealtimeSession, once open (its audio_seconds are metered)
    metered_s: float = 0.0


def choose_subprotocol(ws: WebSocket) -> str | None:
    """Browsers fail a socket whose server picks none of the offered subprotocols; the
    OpenAI SDKs offer ``realtime`` next to the credential-bearing one, which is never echoed."""
    offered = [str(p) for p in ws.scope.get("subprotocols", ())]
    plain = [p for p in offered if not p.startswith(SUBPROTOCOL_KEY_PREFIX)]
    if "realtime" in plain:
        return "realtime"
    return plain[0] if plain else None


async def refuse(ws: WebSocket, state: ControllerState, code: int, reason: str) -> None:
    state.metrics.sessions_rejected.labels(reason=reason.split(":")[0]).inc()
    # bounded like every server-side close: a client that stopped reading (a used-up quota
    # mid-call) must not hold this task until uvicorn's ping gives up
    grace_s = state.settings.limits.slow_consumer_timeout_s
    with contextlib.suppress(Exception):  # a close reason is at most 123 bytes
        await close_socket(ws, code, reason[:120], grace_s)


@contextlib.asynccontextmanager
async def admitted(ws: WebSocket, state: ControllerState) -> AsyncIterator[Admission | None]:
    """Accept the socket; yield an Admission, or None after closing it with the reason."""
    principal: Principal = ws.scope.get("auth") or ANONYMOUS
    await ws.accept(subprotocol=choose_subprotocol(ws))
    if state.draining:
        await refuse(ws, state, TRY_AGAIN_LATER, "draining: reconnect to another controller")
        yield None
        return
    if not state.slots.try_acquire():
        await refuse(ws, state, TRY_AGAIN_LATER, f"overloaded: {state.slots.limit} sessions open")
        yield None
        return
    try:
        admission = await _lease(ws, state, principal)
        if admission is None:
            yield None
            return
        state.metrics.active_sessions.inc()
        keeper = asyncio.create_task(_keep(ws, state, admission), name="session-lease")
        try:
            yield admission
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            with contextlib.suppress(RedisError, OSError):
                await _claim(state, admission)  # outlives the session's last write
                await _meter(state, admission)
                await state.quotas.release_session(principal, admission.lease_id)
            state.metrics.active_sessions.dec()
    finally:
        state.slots.release()


async def _lease(ws: WebSocket, state: ControllerState, principal: Principal) -> Admission | None:
    lease_id = uuid.uuid4().hex
    try:
        if await state.quotas.audio_left_s(principal) <= 0:
            await refuse(ws, state, POLICY, "quota: this key's audio minutes for today are used")
            return None
        if not await state.quotas.acquire_session(principal, lease_id):
            reason = f"key_sessions: this key already has {principal.max_sessions} sessions open"
            await refuse(ws, state, TRY_AGAIN_LATER, reason)
            return None
    except (RedisError, OSError) as exc:
        log.warning("refusing a session: key store unavailable: %s", exc)
        await refuse(ws, state, TRY_AGAIN_LATER, "store: session store unavailable")
        return None
    return Admission(principal, lease_id)


def owner_key(session_id: str) -> str:
    return f"sa:{{{session_id}}}:owner"  # the session's hash tag: same cluster slot


async def resumable(
    state: ControllerState, principal: Principal, session_id: str | None
) -> str | None:
    """The session id to resume: another key's session is not found (OWASP API1)."""
    if not session_id or not principal.limited:
        return session_id
    try:
        owner = await state.quotas.redis.get(owner_key(session_id))
    except (RedisError, OSError):
        return session_id  # the session store is down too: opening fails on its own
    if isinstance(owner, bytes):
        owner = owner.decode()
    if owner is not None and owner != principal.key_id:
        return FOREIGN_SESSION
    return session_id


async def attach(state: ControllerState, admission: Admission, session: Any) -> None:
    """The session runs under this admission: its audio is metered, its id owned."""
    admission.session = session
    with contextlib.suppress(RedisError, OSError):
        await _claim(state, admission)


async def _claim(state: ControllerState, admission: Admission) -> None:
    """Mark the session as the key's, a little longer than the session itself lives."""
    if admission.principal.limited and admission.session is not None:
        ttl = state.settings.redis.session_ttl_s + 60
        key = owner_key(admission.session.session_id)
        await state.quotas.redis.set(key, admission.principal.key_id, ex=ttl)


async def _meter(state: ControllerState, admission: Admission) -> float:
    """Add the session's new audio seconds to the key's day; the seconds left."""
    used = float(getattr(admission.session, "audio_seconds", 0.0))
    await state.quotas.add_audio(admission.principal, used - admission.metered_s)
    admission.metered_s = used
    return await state.quotas.audio_left_s(admission.principal)


async def _keep(ws: WebSocket, state: ControllerState, admission: Admission) -> None:
    """Renew the lease and meter audio; close the socket once the daily quota is used."""
    while True:
        await asyncio.sleep(KEEPER_INTERVAL_S)
        try:
            await state.quotas.renew_session(admission.principal, admission.lease_id)
            await _claim(state, admission)
            left = await _meter(state, admission)
        except (RedisError, OSError) as exc:  # the live call goes on; the lease lives 30 s
            log.info("session lease not renewed: %s", exc)
            continue
        if left <= 0:
            log.info("audio quota used key=%s: closing", admission.principal.key_id)
            if admission.session is not None:
                admission.session.closed = True
            await refuse(ws, state, POLICY, "quota: this key's audio minutes for today are used")
            return


async def metered_speech(
    state: ControllerState, principal: Principal | None, chunks: AsyncIterator[Any], rate_hz: int
) -> AsyncIterator[Any]:
    """REST synthesis counts against the key's daily audio (bulk TTS is a quota, API6)."""
    seconds = 0.0
    try:
        async for pcm in chunks:
            seconds += pcm.size / rate_hz
            yield pcm
    finally:
        if principal is not None and seconds:
            with contextlib.suppress(RedisError, OSError):
                await state.quotas.add_audio(principal, seconds)
