"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

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
