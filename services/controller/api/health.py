"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.controller.state import ControllerState

router = APIRouter()


def controller(request: Request) -> ControllerState:
    return request.app.state.controller  # type: ignore[no-any-return]


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive and its event loop answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready when Redis answers and every service reports SERVING, and not draining."""
    state = controller(request)
    services = await state.clients.health()
    redis_ok = await state.store.ping()
    ready = redis_ok and all(services.values()) and not state.draining
    body = {"ready": ready, "redis": redis_ok, "services": services, "draining": state.draining}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(
        generate_latest(controller(request).metrics.registry), media_type=CONTENT_TYPE_LATEST
    )


LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@router.post("/admin/drain")
async def drain(request: Request) -> JSONResponse:
    """Kubernetes preStop calls this from inside the pod, with the admin key when auth is on
    (docs/security.md; cross-site requests are refused before this): readiness turns false,
    new sessions are refused (1013), replies in progress get ``drain_timeout_s`` to finish,
    then every socket is closed with 1012 so clients resume on another controller.
    """
    principal = request.scope.get("auth")
    admin_key = principal is not None and principal.limited and principal.role == "admin"
    loopback = request.client is not None and request.client.host in LOOPBACK
    if not (admin_key or loopback):  # without keys (auth off): the pod itself only
        return JSONResponse({"error": {"code": "permission_denied",
                                       "message": "drain needs an admin key or the pod itself"}},
                            status_code=403)  # fmt: skip
    state = controller(request)
    state.draining = True
    replies = [s.reply.task for s in state.sessions if s.reply is not None and s.reply.task]
    if replies:
        await asyncio.wait(replies, timeout=state.settings.limits.drain_timeout_s)
    sessions = list(state.sessions)
    await asyncio.gather(*(s.close_for_restart() for s in sessions))
    return JSONResponse({"draining": True, "closed_sessions": len(sessions)})
