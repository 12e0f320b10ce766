"""gRPC server interceptor: per-method latency by status code, RPCs in flight, SERVING gauge,
and a SERVER span per call continuing the caller's trace (``traceparent`` metadata).

A small interceptor of our own rather than a library's: the metric names must follow
``stepaudio_<service>_<thing>_<unit>`` on the service's own registry (tests run several
services in one process), and grpc.aio handlers come in two shapes (coroutines that call
``context.write`` and async generators), which the wrapper must mirror because grpc.aio picks
its code path with ``inspect.isasyncgenfunction`` on the handler.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Gauge, Histogram

from services.common import tracing
from services.common.metrics import LATENCY_BUCKETS_S, metric_name

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]


def status_name(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException | None) -> str:
    """The status the call ended with: what the handler set, else what its exception means."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int) and code:
        return grpc.StatusCode(_STATUS_BY_VALUE[code]).name
    if exc is None:
        return "OK"
    if isinstance(exc, grpc.aio.AbortError):
        return "UNKNOWN"
    if isinstance(exc, BaseException) and not isinstance(exc, Exception):
        return "CANCELLED"  # CancelledError / GeneratorExit: the caller went away
    return "UNKNOWN"  # an unhandled exception: grpc.aio answers UNKNOWN


_STATUS_BY_VALUE = {status.value[0]: status.value for status in grpc.StatusCode}
# server-side failures: the span is marked as an error (client mistakes and cancels are not)
_ERROR_CODES = {"INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED", "DATA_LOSS"}


class RpcMetrics:
    """``stepaudio_<svc>_rpc_seconds{method,code}``, ``_rpcs_in_flight{method}``, ``_serving``."""

    def __init__(self, service: str, registry: CollectorRegistry) -> None:
        self.seconds = Histogram(
            metric_name(service, "rpc", "seconds"),
            "gRPC call duration (server side, headers in to status out), by method and code.",
            labelnames=["method", "code"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.in_flight = Gauge(
            metric_name(service, "rpcs_in_flight"),
            "gRPC calls being served now (queued or running), by method.",
            labelnames=["method"],
            registry=registry,
        )
        self.serving = Gauge(
            metric_name(service, "serving"),
            "1 while the service's health status is SERVING, else 0 (loading or draining).",
            registry=registry,
        )


class ServerObserver(grpc.aio.ServerInterceptor):
    """Wraps every handler of a server with ``RpcMetrics`` bookkeeping and a span."""

    def __init__(self, metrics: RpcMetrics, tracer: trace.Tracer | None = None) -> None:
        self.metrics = metrics
        self.tracer = tracer

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        full_method = handler_call_details.method
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behavior = getattr(handler, kind)
            if behavior is not None:
                return handler._replace(**{kind: self._wrap(full_method, behavior)})  # type: ignore[attr-defined,no-any-return]
        return handler

    @contextlib.asynccontextmanager
    async def observe(
        self, full_method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        method = full_method.rsplit("/", 1)[-1]
        started = time.perf_counter()
        in_flight = self.metrics.in_flight.labels(method=method)
        in_flight.inc()
        span = self._start_span(full_method, context)
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            in_flight.dec()
            code = status_name(context, error)
            elapsed = time.perf_counter() - started
            self.metrics.seconds.labels(method=method, code=code).observe(elapsed)
            if span is not None:
                span.set_attribute("rpc.grpc.status_code", code)
                if code in _ERROR_CODES:
                    span.set_status(trace.StatusCode.ERROR, code)
                span.end()

    def _start_span(
        self, full_method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> trace.Span | None:
        """The call's span, made current (with the component's tracer) in the call's task."""
        if self.tracer is None or full_method.startswith(tracing.UNTRACED_SERVICES):
            return None
        service, _, method = full_method.lstrip("/").rpartition("/")
        span = self.tracer.start_span(
            f"{service.rsplit('.', 1)[-1]}/{method}",
            context=tracing.context_from_metadata(tuple(context.invocation_metadata() or ())),
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        )
        # grpc.aio serves each call in its own task: nothing of this outlives the call
        otel_context.attach(trace.set_span_in_context(span))
        tracing.set_handler_tracer(self.tracer)
        return span

    def _wrap(self, full_method: str, behavior: Behavior) -> Behavior:
        if inspect.isasyncgenfunction(behavior):

            async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                async with self.observe(full_method, context):
                    async for response in behavior(request, context):
                        yield response

            return streaming

        async def plain(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with self.observe(full_method, context):
                return await behavior(request, context)

        return plain
