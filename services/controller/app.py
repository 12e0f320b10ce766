"""FastAPI application factory and lifespan (Redis, gRPC clients, metrics)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from services.common import tracing
from services.controller.api import health, rest, ws
from services.controller.auth import Quotas
from services.controller.clients import ServiceClients
from services.controller.config import ControllerSettings
from services.controller.metrics import ControllerMetrics
from services.controller.security import install_security
from services.controller.state import ControllerState, SessionSlots, SpeculationGate
from services.controller.store import SessionStore, create_redis

STATIC_DIR = Path(__file__).with_name("static")


def create_app(
    settings: ControllerSettings,
    registry: CollectorRegistry | None = None,
    provider: TracerProvider | None = None,
) -> FastAPI:
    """``provider``: the controller's tracer provider (default: one from ``settings.tracing``,
    flushed when the app stops)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tracer_provider = provider or tracing.tracer_provider("controller", settings.tracing)
        tracer = tracing.get_tracer(tracer_provider)
        redis = create_redis(settings.redis.url, socket_timeout_s=settings.redis.socket_timeout_s)
        clients = ServiceClients.connect(settings, tracer)
        app.state.controller = ControllerState(
            settings=settings,
            clients=clients,
            store=SessionStore(
                redis, ttl_s=settings.redis.session_ttl_s, max_turns=settings.redis.max_stored_turns
            ),
            metrics=ControllerMetrics(registry),
            slots=SessionSlots(settings.limits.max_sessions),
            speculation=SpeculationGate(settings.limits.max_speculations),
            tracer=tracer,
            quotas=Quotas(redis),
        )
        try:
            yield
        finally:
            await clients.close()
            await redis.aclose()
            if provider is None:
                await asyncio.to_thread(tracer_provider.shutdown)  # flushes unexported spans

    app = FastAPI(
        title="Step-Audio serving controller",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
    )

    install_security(app, settings)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ())[1:])
        code = "invalid_json" if first.get("type") == "json_invalid" else "invalid_argument"
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=400)

    app.include_router(health.router)
    app.include_router(rest.router)
    app.include_router(ws.router)
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="client")
    return app
