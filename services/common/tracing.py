"""OpenTelemetry traces: one trace per turn across the controller and the four gRPC services.

Each process (in tests, each in-process component) has its own SDK ``TracerProvider`` whose
resource names the component (``service.name = stepaudio-<name>``). Spans always get real ids,
so context crosses gRPC and logs carry a trace id; they leave the process only when an OTLP
endpoint is set (``<PREFIX>TRACING__OTLP_ENDPOINT``, off by default; the exporter also reads
the standard ``OTEL_EXPORTER_OTLP_*`` variables such as headers).

Context crosses gRPC as W3C ``traceparent`` metadata (``ClientTracing`` injects it,
``ServerObserver`` in interceptors.py extracts it). A turn starts where the VAD service hears
speech: the VAD stream lives as long as the session, so per-turn context cannot ride on its
metadata; the VAD service starts each speech segment's span as a new trace and returns its
``traceparent`` in the SPEECH_STARTED event, and the controller's ``TurnTrace`` continues it.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

INSTRUMENTATION = "stepaudio"
# the component's tracer while a gRPC handler runs (set by ServerObserver), for service code
# that adds spans of its own (the VAD's speech segments)
_HANDLER_TRACER: contextvars.ContextVar[trace.Tracer | None] = contextvars.ContextVar(
    "stepaudio_handler_tracer", default=None
)
# health checks and reflection are not part of a turn: no spans for them
UNTRACED_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class TracingSettings(BaseModel):
    """Trace export; nested in each service's settings (``<PREFIX>TRACING__*``)."""

    model_config = ConfigDict(extra="forbid")

    otlp_endpoint: str = Field(
        "",
        description="OTLP/gRPC collector for spans (http://host:4317); empty: not exported "
        "(trace ids still reach the logs).",
    )
    sample_ratio: float = Field(
        1.0, ge=0, le=1, description="Share of turns traced (the turn's first span decides)."
    )


def tracer_provider(
    component: str, settings: TracingSettings, exporters: Sequence[SpanExporter] = ()
) -> TracerProvider:
    """The component's provider; ``exporters`` are extra ones (tests: in-memory)."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"stepaudio-{component}"}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        shutdown_on_exit=False,  # its owner (serve, the app's lifespan) shuts it down
    )
    if settings.otlp_endpoint:
        # imported only when used: the exporter pulls in its own protobuf/grpc modules
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        log.info("traces to %s component=%s", settings.otlp_endpoint, component)
    for extra in exporters:
        provider.add_span_processor(SimpleSpanProcessor(extra))
    return provider


def get_tracer(provider: TracerProvider) -> trace.Tracer:
    return provider.get_tracer(INSTRUMENTATION)


def handler_tracer() -> trace.Tracer:
    """The tracer of the component serving the current RPC (a no-op one outside a handler)."""
    return _HANDLER_TRACER.get() or trace.NoOpTracer()


def set_handler_tracer(tracer: trace.Tracer) -> contextvars.Token[trace.Tracer | None]:
    return _HANDLER_TRACER.set(tracer)


def traceparent(span: trace.Span) -> str:
    """The span's W3C ``traceparent`` (empty for an invalid span)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent", "")


def context_from_traceparent(value: str) -> otel_context.Context:
    """A context whose (remote) parent is ``value``; an empty context when there is none."""
    if not value:
        return otel_context.Context()
    return propagate.extract({"traceparent": value}, context=otel_context.Context())


def context_from_metadata(metadata: Sequence[tuple[str, Any]] | None) -> otel_context.Context:
    carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
    return propagate.extract(carrier, context=otel_context.Context())


def trace_ids() -> tuple[str, str]:
    """(trace id, span id) of the current span, hex; empty strings outside any span."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return "", ""
    return trace.format_trace_id(span_context.trace_id), trace.format_span_id(span_context.span_id)


# ---------------------------------------------------------------------------- gRPC clients


def _with_traceparent(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if not carrier:
        return details
    metadata = list(details.metadata or ()) + list(carrier.items())
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, grpc.aio.Metadata(*metadata), details.credentials,
        details.wait_for_ready,
    )  # fmt: skip


class _ClientTracing:
    """A CLIENT span per call (child of the current context) whose context goes out as
    ``traceparent``; the span ends when the call does."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    async def _intercept(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        if method.startswith(UNTRACED_SERVICES):
            return await continuation(details, request)
        service, _, name = method.lstrip("/").rpartition("/")
        span = self._tracer.start_span(
            f"{service.rsplit('.', 1)[-1]}/{name}",
            kind=trace.SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )
        with trace.use_span(span, end_on_exit=False):
            try:
                call = await continuation(_with_traceparent(details), request)
            except BaseException:
                span.end()
                raise
        call.add_done_callback(lambda _call: span.end())
        return call


class _UnaryUnary(_ClientTracing, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._intercept(continuation, details, request)


class _UnaryStream(_ClientTracing, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._intercept(continuation, details, request)


class _StreamUnary(_ClientTracing, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._intercept(continuation, details, requests)


class _StreamStream(_ClientTracing, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._intercept(continuation, details, requests)


def client_interceptors(tracer: trace.Tracer) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for ``grpc.aio.insecure_channel(..., interceptors=...)``."""
    return [_UnaryUnary(tracer), _UnaryStream(tracer), _StreamUnary(tracer), _StreamStream(tracer)]


# ---------------------------------------------------------------------------- turns


class TurnTrace:
    """One realtime session's turn spans: a ``turn`` span from the user's speech (or a text
    turn's reply) to the end of the reply that answers it; the session's tasks created while
    it is open inherit it as their current span, so their gRPC calls join its trace."""

    def __init__(self, tracer: trace.Tracer, session_id: str) -> None:
        self._tracer = tracer
        self.session_id = session_id
        self.span: trace.Span | None = None
        self._response_id = ""
        self.turns = 0

    def start(self, parent_traceparent: str = "") -> None:
        """A new turn (ending an open one), current in the calling task from now on."""
        self.end()
        self.turns += 1
        self.span = self._tracer.start_span(
            "turn",
            context=context_from_traceparent(parent_traceparent),
            attributes={"stepaudio.session_id": self.session_id, "stepaudio.turn": self.turns},
        )
        self._response_id = ""
        # deliberately not detached: the task's current turn stays until the next one starts
        otel_context.attach(trace.set_span_in_context(self.span))

    def item(self, item_id: str) -> None:
        """The user turn's conversation item id (the turn id clients see)."""
        if self.span is not None:
            self.span.set_attribute("stepaudio.turn_id", item_id)

    def response(self, response_id: str, *, speculative: bool) -> None:
        if self.span is None:
            self.start()  # a text turn or a manual response.create: no speech started it
        assert self.span is not None
        self._response_id = response_id
        self.span.set_attribute("stepaudio.response_id", response_id)
        self.span.add_event(
            "response", {"stepaudio.response_id": response_id, "speculative": speculative}
        )

    def finished(self, response_id: str, status: str) -> None:
        """A response ended; the turn ends with the one that answers it (the latest)."""
        if self.span is not None and response_id == self._response_id:
            self.span.set_attribute("stepaudio.response_status", status)
            if status == "failed":
                self.span.set_status(trace.StatusCode.ERROR, "response failed")
            self.end()

    def end(self) -> None:
        if self.span is not None:
            self.span.end()
            self.span = None
