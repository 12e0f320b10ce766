"""WS /v1/realtime: admission, then one RealtimeSession per connection (in the client's
dialect: the project's own events, or OpenAI Realtime GA / beta; see openai_events.py)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, WebSocket
from redis.exceptions import RedisError

from services.controller.admission import admitted, attach, resumable
from services.controller.openai_events import dialect_from_handshake
from services.controller.session import RealtimeSession
from services.controller.state import ControllerState

router = APIRouter()
log = logging.getLogger(__name__)


@router.websocket("/v1/realtime")
async def realtime(ws: WebSocket, session_id: str | None = None) -> None:
    state: ControllerState = ws.app.state.controller
    async with admitted(ws, state) as admission:
        if admission is None:  # closed with 1013/1008 and the reason
            return
        session_id = await resumable(state, admission.principal, session_id)
        try:
            dialect = dialect_from_handshake(ws.headers, ws.query_params)
            session, resumed, expired = await RealtimeSession.open(ws, state, session_id, dialect)
        except (RedisError, OSError) as exc:  # no store: no new sessions (readiness is false too)
            log.warning("refusing a session: session store unavailable: %s", exc)
            await ws.close(code=1013, reason="session store unavailable")
            return
        await attach(state, admission, session)
        state.sessions.add(session)
        try:
            await session.run(resumed=resumed, expired=expired)
        finally:
            state.sessions.discard(session)
