"""POST /v1/realtime/client_secrets: a short-lived secret a browser opens the socket with.

As OpenAI's GA Realtime API: the server side (holding a real key) asks for a secret and hands
it to the browser, which passes it in the ``openai-insecure-api-key.<secret>`` subprotocol
(browsers cannot set an Authorization header on a WebSocket). The secret acts for the key
that minted it (its session cap and quotas) and opens realtime sockets only.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError

from services.common.errors import ErrorCode
from services.controller.auth import ANONYMOUS, Principal
from services.controller.state import ControllerState

router = APIRouter(prefix="/v1/realtime")


class ExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    anchor: Literal["created_at"] = "created_at"
    seconds: int = Field(600, ge=10, le=7200)


class ClientSecretRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expires_after: ExpiresAfter | None = None
    session: dict[str, Any] | None = Field(
        None, description="Accepted for SDK compatibility; configure with session.update."
    )


class ClientSecretResponse(BaseModel):
    value: str
    expires_at: int
    session: dict[str, Any]


@router.post("/client_secrets", response_model=ClientSecretResponse)
async def create_client_secret(
    request: Request, body: ClientSecretRequest | None = None
) -> ClientSecretResponse | JSONResponse:
    state: ControllerState = request.app.state.controller
    principal: Principal = request.scope.get("auth") or ANONYMOUS
    ttl = state.settings.auth.client_secret_ttl_s
    if body is not None and body.expires_after is not None:
        ttl = body.expires_after.seconds
    try:
        value, expires_at = await state.quotas.mint_secret(principal, ttl)
    except (RedisError, OSError):
        error = {"code": ErrorCode.UNAVAILABLE, "message": "the key store is unavailable"}
        return JSONResponse({"error": error}, status_code=503)
    session = {"type": "realtime", **((body.session or {}) if body else {})}
    return ClientSecretResponse(value=value, expires_at=expires_at, session=session)
