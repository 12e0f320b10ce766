"""The controller's security layer, as plain ASGI middleware (HTTP and WebSocket alike).

``SecurityMiddleware``: Origin allow-list, cross-site refusal on /admin, API keys (Bearer
header; on the realtime socket also a client secret or key in the
``openai-insecure-api-key.<secret>`` subprotocol, as the OpenAI SDKs send it from browsers),
roles, per-key request rate and a per-address limit on failed authentications.
``BodyLimitMiddleware``: request bodies are capped while they are read (Content-Length first,
then the streamed bytes) and must arrive within a deadline. ``install_error_shape`` puts
every framework error (404, 405, ...) in the documented ``{"error": {code, message}}`` shape.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common.errors import ErrorCode
from services.controller.auth import (
    ANONYMOUS,
    SECRET_PREFIX,
    SUBPROTOCOL_KEY_PREFIX,
    KeyRing,
    Principal,
    Quotas,
)
from services.controller.config import ControllerSettings

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC, API, REALTIME, ADMIN, METRICS = "public", "api", "realtime", "admin", "metrics"
REALTIME_PATH = "/v1/realtime"
SPEECH_PATH = "/v1/audio/speech"
# content types a cross-site <form> or fetch() may send without a CORS preflight
SIMPLE_CONTENT_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")


def access_for(path: str, settings: ControllerSettings) -> str:
    if path == REALTIME_PATH:
        return REALTIME
    if path.startswith("/v1/"):
        return API
    if path.startswith("/admin"):
        return ADMIN
    if path == "/metrics" and settings.auth.metrics_key:
        return METRICS
    return PUBLIC  # /healthz, /readyz, /docs, /openapi.json, the browser client's files


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def allowed_origins(settings: ControllerSettings) -> list[str]:
    return [o.strip().rstrip("/") for o in settings.auth.allowed_origins.split(",") if o.strip()]


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def same_origin(origin: str, headers: dict[str, str]) -> bool:
    """The page comes from this controller: its Origin's host[:port] is our Host header. The
    scheme is not compared: behind a TLS-terminating proxy we see http, the browser https."""
    host = headers.get("host", "").lower()
    return bool(host) and urlsplit(origin.strip()).netloc.lower() == host


def offered_subprotocols(scope: Scope) -> list[str]:
    return [str(p) for p in scope.get("subprotocols", ())]


def presented_credential(scope: Scope, headers: dict[str, str]) -> str | None:
    """A Bearer token, or (WebSocket) the one in the openai-insecure-api-key subprotocol."""
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if scope["type"] == "websocket":
        for protocol in offered_subprotocols(scope):
            if protocol.startswith(SUBPROTOCOL_KEY_PREFIX):
                return protocol[len(SUBPROTOCOL_KEY_PREFIX) :] or None
    return None


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, settings: ControllerSettings, keyring: KeyRing) -> None:
        self.app = app
        self.settings = settings
        self.keyring = keyring
        self.origins = set(allowed_origins(settings))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        access = access_for(scope["path"], self.settings)
        refusal = await self._check(scope, access)
        if refusal is not None:
            status, code, message, extra = refusal
            scope["app"].state.controller.metrics.record_error(code)
            await deny(scope, receive, send, status, code, message, extra)
            return
        await self.app(scope, receive, send)

    async def _check(
        self, scope: Scope, access: str
    ) -> tuple[int, str, str, list[tuple[str, str]]] | None:
        headers = _headers(scope)
        origin = headers.get("origin")
        if origin is not None and (access != PUBLIC or scope["type"] == "websocket"):
            own = same_origin(origin, headers)
            if not own and (access == ADMIN or origin.rstrip("/") not in self.origins):
                return 403, ErrorCode.PERMISSION_DENIED, f"origin {origin!r} is not allowed", []
        if access == ADMIN and scope.get("method", "GET") not in ("GET", "HEAD"):
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type in SIMPLE_CONTENT_TYPES:
                message = f"admin requests never carry {content_type} (cross-site form)"
                return 403, ErrorCode.PERMISSION_DENIED, message, []
        if access == PUBLIC:
            return None
        if not self.settings.auth.enabled:
            scope["auth"] = ANONYMOUS
            return None
        return await self._authenticate(scope, access, headers)

    async def _authenticate(
        self, scope: Scope, access: str, headers: dict[str, str]
    ) -> tuple[int, str, str, list[tuple[str, str]]] | None:
        quotas: Quotas = scope["app"].state.controller.quotas
        client = scope["client"][0] if scope.get("client") else "unknown"
        try:
            if await quotas.auth_blocked(client):
                message = "too many failed authentications from this address; wait a minute"
                return 429, ErrorCode.RATE_LIMITED, message, [("retry-after", "60")]
            principal = await self._principal(presented_credential(scope, headers), access, quotas)
            if principal is None:
                await quotas.auth_failure(client)
                message = "a valid API key is needed: Authorization: Bearer <key>"
                return 401, ErrorCode.UNAUTHENTICATED, message, [("www-authenticate", "Bearer")]
            need = {ADMIN: "admin", METRICS: "metrics"}.get(access, "user")
            if not principal.can(need):
                message = f"this key may not use {need} endpoints"
                return 403, ErrorCode.PERMISSION_DENIED, message, []
            retry_after = await quotas.count_request(principal)
            if access == API and scope["path"] == SPEECH_PATH:
                if await quotas.audio_left_s(principal) <= 0:
                    message = "this key's audio minutes for today are used"
                    return 429, ErrorCode.RATE_LIMITED, message, [("retry-after", "3600")]
        except (RedisError, OSError) as exc:
            log.warning("auth: key store unavailable: %s", exc)
            return 503, ErrorCode.UNAVAILABLE, "the key store is unavailable; retry", []
        if retry_after is not None:
            message = f"over {principal.requests_per_minute} requests per minute for this key"
            return 429, ErrorCode.RATE_LIMITED, message, [("retry-after", str(retry_after))]
        scope["auth"] = principal
        return None

    async def _principal(
        self, credential: str | None, access: str, quotas: Quotas
    ) -> Principal | None:
        if not credential:
            return None
        if credential.startswith(SECRET_PREFIX):  # client secrets open realtime sockets only
            if access != REALTIME:
                return None
            owner = await quotas.secret_owner(credential)
            entry = self.keyring.by_id(owner) if owner else None
        else:
            entry = self.keyring.match(credential)
        return self.keyring.principal(entry) if entry is not None else None


async def deny(
    scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str,
    extra: list[tuple[str, str]] | None = None,
) -> None:  # fmt: skip
    """An HTTP error response; for a WebSocket the handshake's own HTTP response."""
    body = error_body(code, message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in extra or ()]
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008, "reason": code})
            return
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Cap request bodies before the app parses them (a 1 GiB upload is refused with 413
    after at most the cap has been read, never spooled), and bound how long a body may take."""

    def __init__(self, app: ASGIApp, settings: ControllerSettings) -> None:
        self.app = app
        self.settings = settings

    def limit_for(self, path: str) -> int:
        if path.startswith("/v1/voices"):  # the multipart wrapper adds a little
            return self.settings.limits.max_voice_upload_bytes + 64 * 1024
        return self.settings.http.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        length = _headers(scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            message = f"body over {limit} bytes"
            await deny(scope, receive, send, 413, ErrorCode.REQUEST_TOO_LARGE, message)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.http.body_timeout_s
        received = 0
        failure: tuple[int, str, str] | None = None
        started = False

        async def limited_receive() -> Message:
            nonlocal received, failure
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                failure = (408, ErrorCode.REQUEST_TIMEOUT, "the request body took too long")
                raise BodyTooLarge() from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    failure = (413, ErrorCode.REQUEST_TOO_LARGE, f"body over {limit} bytes")
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if failure is not None:
                return  # the app's own answer to the aborted read is replaced below
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            pass
        if failure is not None and not started:
            status, code, message = failure
            headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": error_body(code, message)})


HTTP_CODES = {
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.REQUEST_TOO_LARGE,
}


def install_error_shape(app: FastAPI) -> None:
    """Framework errors (unknown path, wrong method, ...) in the documented error shape."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code: ErrorCode | str | None = HTTP_CODES.get(exc.status_code)
        if code is None:
            code = ErrorCode.INVALID_ARGUMENT if exc.status_code < 500 else "internal_error"
        body = {"error": {"code": code, "message": str(exc.detail)}}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


__all__ = [
    "BodyLimitMiddleware",
    "SecurityMiddleware",
    "deny",
    "install_error_shape",
]
