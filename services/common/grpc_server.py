"""Build and run a grpc.aio server with health, reflection, limits, keepalive and a drain.

A service implements ``GrpcService`` (register its servicer, load/start its engine, stop it)
and is run either by ``run_service`` (``__main__``: signals, metrics endpoint) or inside
``serve`` (tests: an in-process server, port 0, stopped cleanly on exit).

Lifecycle (reliability.md, vLLM's order):
  bind + start → health NOT_SERVING → ``service.start()`` (load weights) → SERVING
  SIGTERM/SIGINT → NOT_SERVING (callers notice) → sleep ``drain_delay_s`` →
  ``server.stop(shutdown_grace_s)`` (new RPCs refused, in-flight ones get the grace) →
  ``service.stop()`` (engine threads joined).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from services.common import tracing
from services.common.errors import ErrorCode, abort, abort_for_exception, error_code_of
from services.common.interceptors import RpcMetrics, ServerObserver
from services.common.metrics import ServiceMetrics, start_metrics_server
from services.common.settings import BaseServiceSettings, ServerTlsSettings

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class GrpcService(Protocol):
    """What ``serve``/``run_service`` need from a service."""

    name: str  # short name: "vad", "llm" (logs, metrics)
    registry: CollectorRegistry  # its metrics, served when metrics_port != 0

    @property
    def service_names(self) -> Sequence[str]:
        """Full proto names, for health and reflection (read-only: a tuple will do)."""

    def register(self, server: grpc.aio.Server) -> None:
        """Add the servicer(s) to the (not yet started) server."""

    async def start(self) -> None:
        """Load models and start engine workers; health stays NOT_SERVING until it returns."""

    async def stop(self) -> None:
        """Release the engine after the server has stopped; must tolerate a failed start."""


def server_options(settings: BaseServiceSettings) -> list[tuple[str, Any]]:
    """Channel args: finite message limits, keepalive that lets clients ping every ~15 s."""
    keepalive = settings.keepalive
    return [
        ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
        ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        ("grpc.keepalive_time_ms", keepalive.time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", keepalive.min_ping_interval_ms),
        # long one-way streams (client audio in, rare events out) made the default 2 strikes
        # GOAWAY our own controller with too_many_pings; callers here are trusted internal peers
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.http2.max_pings_without_data", 0),
        # SO_REUSEPORT would let a second server silently share a busy port.
        ("grpc.so_reuseport", 0),
    ]


def bind_address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    return f"{host}:{port}"


class ServerHandle:
    """A started server: its bound port, health servicer and an idempotent ``shutdown``."""

    def __init__(
        self,
        server: grpc.aio.Server,
        health_servicer: HealthServicer,
        service: GrpcService,
        settings: BaseServiceSettings,
        port: int,
        rpc_metrics: RpcMetrics | None = None,
    ) -> None:
        self.server = server
        self.rpc_metrics = rpc_metrics
        self.health = health_servicer
        self.service = service
        self.settings = settings
        self.port = port
        self.serving = False
        self._stop_requested = asyncio.Event()
        self._shutdown_lock = asyncio.Lock()
        self._stopped = False

    @property
    def address(self) -> str:
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "::") else self.settings.host
        return bind_address(host, self.port)

    async def set_serving(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        for name in ("", *self.service.service_names):
            await self.health.set(name, status)
        self.serving = serving
        if self.rpc_metrics is not None:
            self.rpc_metrics.serving.set(1 if serving else 0)

    async def start_service(self) -> None:
        """Load the service (``service.start()``), then report SERVING."""
        await self.service.start()
        await self.set_serving(True)
        log.info("serving name=%s", self.service.name)

    def request_stop(self) -> None:
        """Ask ``run_service`` to drain and stop (signal handlers call this)."""
        self._stop_requested.set()

    async def wait_stop_requested(self) -> None:
        await self._stop_requested.wait()

    async def shutdown(
        self, grace_s: float | None = None, drain_delay_s: float | None = None
    ) -> None:
        """NOT_SERVING → drain delay → stop(grace) → service.stop(); runs once."""
        async with self._shutdown_lock:
            if self._stopped:
                return
            grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
            drain = self.settings.drain_delay_s if drain_delay_s is None else drain_delay_s
            was_serving, self.serving = self.serving, False
            if self.rpc_metrics is not None:
                self.rpc_metrics.serving.set(0)
            await self.health.enter_graceful_shutdown()
            if was_serving and drain > 0:
                log.info("draining name=%s delay_s=%.1f", self.service.name, drain)
                await asyncio.sleep(drain)
            await self.server.stop(grace)
            await self.service.stop()
            self._stopped = True
            log.info("stopped name=%s", self.service.name)


def build_server(
    service: GrpcService,
    settings: BaseServiceSettings,
    rpc_metrics: RpcMetrics | None = None,
    provider: TracerProvider | None = None,
) -> tuple[grpc.aio.Server, HealthServicer]:
    """A configured, not yet started server with health, reflection and the service."""
    interceptors = []
    if rpc_metrics is not None:
        tracer = tracing.get_tracer(provider) if provider is not None else None
        interceptors.append(ServerObserver(rpc_metrics, tracer))
    server = grpc.aio.server(
        options=server_options(settings),
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
        interceptors=interceptors,
    )
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service.register(server)
    reflected = (*service.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(reflected, server)
    return server, health_servicer


def server_credentials(tls: ServerTlsSettings) -> grpc.ServerCredentials | None:
    """TLS credentials when a certificate is configured (mTLS with a client CA), else None."""
    if not tls.cert_file:
        return None
    if not tls.key_file:
        raise ValueError("TLS: cert_file needs key_file")
    pair = (Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())
    client_ca = Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def start_server(
    service: GrpcService, settings: BaseServiceSettings, provider: TracerProvider | None = None
) -> ServerHandle:
    """Bind and start the server, health NOT_SERVING; ``handle.start_service()`` comes next.

    ``provider``: the component's tracer provider (``serve`` makes one); None: no spans."""
    rpc_metrics = RpcMetrics(service.name, service.registry)
    server, health_servicer = build_server(service, settings, rpc_metrics, provider)
    address = bind_address(settings.host, settings.port)
    credentials = server_credentials(settings.tls)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    handle = ServerHandle(server, health_servicer, service, settings, port, rpc_metrics)
    await handle.set_serving(False)  # loading: callers must wait
    await server.start()
    log.info("listening name=%s address=%s", service.name, handle.address)
    return handle


@asynccontextmanager
async def serve(
    service: GrpcService, settings: BaseServiceSettings, provider: TracerProvider | None = None
) -> AsyncIterator[ServerHandle]:
    """Start ``service`` in-process; SERVING once ``service.start()`` returned; stop on exit.

    Without a ``provider``, one is made from ``settings.tracing`` and flushed at the end."""
    own = provider is None
    provider = provider or tracing.tracer_provider(service.name, settings.tracing)
    try:
        handle = await start_server(service, settings, provider)
        try:
            await handle.start_service()
            yield handle
        finally:
            await handle.shutdown()
    finally:
        if own:
            await asyncio.to_thread(provider.shutdown)  # flushes spans not yet exported


def _install_signal_handlers(handle: ServerHandle) -> list[signal.Signals]:
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handle.request_stop)
        installed.append(sig)
    return installed


async def run_service(service: GrpcService, settings: BaseServiceSettings) -> None:
    """Run until SIGTERM/SIGINT, then drain and stop (the body of every ``__main__``)."""
    metrics = start_metrics_server(settings.metrics_port, settings.host, service.registry)
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    try:
        async with serve(service, settings) as handle:
            installed = _install_signal_handlers(handle)
            await handle.wait_stop_requested()
            log.info("stop requested name=%s", service.name)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        if metrics is not None:
            metrics.close()


class StreamAdmission:
    """Admission, lifetime cap and error mapping around each long streaming RPC of a service.

    Over ``max_streams`` the call is refused with RESOURCE_EXHAUSTED (``overloaded``). An
    admitted call gets its response headers at once, so a client that awaits
    ``initial_metadata()`` before its first write sees a later abort with its real status
    (grpc/grpc#36066). The body runs under ``max_stream_s``; coded engine errors become their
    status, anything else ``internal_error``.
    """

    def __init__(self, metrics: ServiceMetrics, max_streams: int, max_stream_s: float, what: str):
        self.metrics = metrics
        self.max_streams = max_streams
        self.max_stream_s = max_stream_s
        self.what = what
        self.active = 0

    async def run(
        self, context: grpc.aio.ServicerContext[Any, Any], body: Callable[[], Awaitable[None]]
    ) -> None:
        if self.active >= self.max_streams:
            await self._fail(context, ErrorCode.OVERLOADED, f"too many {self.what} streams; retry")
        self.active += 1
        self.metrics.active_streams.inc()
        try:
            await context.send_initial_metadata(())
            async with asyncio.timeout(self.max_stream_s):
                await body()
        except grpc.aio.AbortError:
            raise
        except TimeoutError:
            message = f"stream exceeded {self.max_stream_s} s"
            await self._fail(context, ErrorCode.DEADLINE_EXCEEDED, message)
        except Exception as exc:  # coded validation/engine errors → their status
            self.metrics.record_error(error_code_of(exc))
            await abort_for_exception(context, exc)
        finally:
            self.active -= 1
            self.metrics.active_streams.dec()

    async def _fail(
        self, context: grpc.aio.ServicerContext[Any, Any], code: ErrorCode, message: str
    ) -> None:
        self.metrics.record_error(code)
        await abort(context, code, message)
