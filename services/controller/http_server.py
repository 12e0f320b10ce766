"""uvicorn configured against slow and greedy clients.

uvicorn closes idle keep-alive connections but has no deadline for a request's head and no
cap on its size with httptools, so a slowloris client (headers trickled a byte at a time)
holds a connection for ever. ``guarded_protocol`` adds both: a request head must be complete
within ``header_timeout_s`` and within ``max_header_bytes``, else the connection is closed
(431 for an oversize head). Bodies are bounded by BodyLimitMiddleware; the connection count
by uvicorn's ``limit_concurrency`` (503 beyond it).

Against clients that stop reading: ``send_buffer_bytes`` sets each connection's SO_SNDBUF
(the kernel otherwise autotunes it up to 4 MiB on loopback and fast links, which hides a
stalled client behind megabytes), and ``GuardedWebSocketProtocol`` lets the app close a
socket whose write buffer the client never drains (``close_socket``): uvicorn's own close
waits until the transport is writable again, for ever with a stalled client.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any

import uvicorn
from fastapi import WebSocket
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from services.controller.config import ControllerSettings

TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: 78\r\n\r\n"
    b'{"error": {"code": "request_too_large", "message": "request head too large"}}\n'
)


LINGER_RESET = struct.pack("ii", 1, 0)  # struct linger {l_onoff = 1, l_linger = 0}
# the scope extension (ASGI "extensions") that holds GuardedWebSocketProtocol.close_now
CLOSE_NOW = "stepaudio.close_now"


def guarded_protocol(
    header_timeout_s: float, max_header_bytes: int, send_buffer_bytes: int = 0
) -> type[HttpToolsProtocol]:
    class GuardedHttpProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0  # of the parsed head (one read may hold all of it)
        _raw_head_bytes = 0  # received while the head is incomplete
        _in_head = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if send_buffer_bytes:  # a WebSocket upgrade keeps this socket, and the setting
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
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


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol plus ``close_now`` in the scope's extensions."""

    _abort_timer: asyncio.TimerHandle | None = None

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # set only when the handshake is accepted
        if scope is not None:
            scope.setdefault("extensions", {})[CLOSE_NOW] = {"close": self.close_now}

    def close_now(self, code: int, reason: str, grace_s: float) -> None:
        """Queue the close frame behind the data already buffered without waiting for the
        peer to drain it; abort the connection if the peer has not taken it all and answered
        within ``grace_s``. The app's next receive() is the disconnect."""
        if self.close_sent or self.transport.is_closing():
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:  # the peer's answer to the close must be read
            self.read_paused = False
            self.transport.resume_reading()
        self._abort_timer = self.loop.call_later(grace_s, self._abort)

    def _abort(self) -> None:
        """Reset the connection: a close would wait for the peer to drain the buffers (the
        transport's, then the kernel's), for ever if it never reads."""
        self._abort_timer = None
        sock = self.transport.get_extra_info("socket")
        if sock is not None:  # linger 0: close() sends RST and drops the unsent data
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        self.transport.abort()

    def handle_close(self, event: Any) -> None:
        if self.close_sent and self._abort_timer is not None:  # the peer answered close_now
            self._abort_timer.cancel()
            self._abort_timer = None
            self.transport.close()
            return
        super().handle_close(event)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        super().connection_lost(exc)


async def close_socket(ws: WebSocket, code: int, reason: str, grace_s: float) -> None:
    """Close from the server's side, bounded: a client that does not read gets ``grace_s``
    to take the close frame, then its connection is aborted."""
    close_now = ws.scope.get("extensions", {}).get(CLOSE_NOW, {}).get("close")
    if close_now is not None:
        close_now(code, reason, grace_s)
        return
    with contextlib.suppress(Exception):  # another ASGI server (tests): its own close, bounded
        async with asyncio.timeout(grace_s):
            await ws.close(code=code, reason=reason)


def uvicorn_config(app: Any, settings: ControllerSettings, **overrides: Any) -> uvicorn.Config:
    http = settings.http
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "http": guarded_protocol(
            http.header_timeout_s, http.max_header_bytes, http.send_buffer_bytes
        ),
        "ws": GuardedWebSocketProtocol,
        "ws_max_size": settings.limits.ws_max_message_bytes,
        "ws_per_message_deflate": False,  # PCM does not compress; deflate only costs CPU
        "timeout_keep_alive": http.keepalive_timeout_s,
        "limit_concurrency": http.max_connections,
        "timeout_graceful_shutdown": 10,
        "lifespan": "on",
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
