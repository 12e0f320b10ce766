"""uvicorn configured against slow and greedy clients.

uvicorn closes idle keep-alive connections but has no deadline for a request's head and no
cap on its size with httptools, so a slowloris client (headers trickled a byte at a time)
holds a connection for ever. ``guarded_protocol`` adds both: a request head must be complete
within ``header_timeout_s`` and within ``max_header_bytes``, else the connection is closed
(431 for an oversize head). Bodies are bounded by BodyLimitMiddleware; the connection count
by uvicorn's ``limit_concurrency`` (503 beyond it).
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from services.controller.config import ControllerSettings

TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: 78\r\n\r\n"
    b'{"error": {"code": "request_too_large", "message": "request head too large"}}\n'
)


def guarded_protocol(header_timeout_s: float, max_header_bytes: int) -> type[HttpToolsProtocol]:
    class GuardedHttpProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0  # of the parsed head (one read may hold all of it)
        _raw_head_bytes = 0  # received while the head is incomplete
        _in_head = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._start_head()

        def _start_head(self) -> None:
            self._in_head, self._head_bytes, self._raw_head_bytes = True, 0, 0
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(header_timeout_s, self._head_timed_out)

        def _end_head(self) -> None:
            self._in_head = False
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self._in_head and not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)  # parse first: a head and its body may share a read
            if self._in_head and not self.transport.is_closing():
                self._raw_head_bytes += len(data)
                if self._raw_head_bytes > max_header_bytes:
                    self._end_head()
                    self.transport.write(TOO_LARGE)
                    self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._start_head()

        def on_url(self, url: bytes) -> None:
            self._head_bytes += len(url)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_bytes += len(name) + len(value) + 4
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._end_head()
            if self._head_bytes > max_header_bytes:  # the whole head came in one read
                self.transport.write(TOO_LARGE)
                self.transport.close()
                return
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._end_head()
            super().connection_lost(exc)

    return GuardedHttpProtocol


def uvicorn_config(app: Any, settings: ControllerSettings, **overrides: Any) -> uvicorn.Config:
    http = settings.http
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "http": guarded_protocol(http.header_timeout_s, http.max_header_bytes),
        "ws_max_size": settings.limits.ws_max_message_bytes,
        "ws_per_message_deflate": False,  # PCM does not compress; deflate only costs CPU
        "timeout_keep_alive": http.keepalive_timeout_s,
        "limit_concurrency": http.max_connections,
        "timeout_graceful_shutdown": 10,
        "lifespan": "on",
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
