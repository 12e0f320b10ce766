"""Prometheus helpers: ``stepaudio_<service>_<thing>_<unit>`` names and a standard metric set.

Each service instance owns its own ``CollectorRegistry`` (tests start several services in one
process; the global registry would refuse duplicate names). ``start_metrics_server`` adds the
process collectors to that registry and serves it over HTTP. No per-session labels, ever:
label values must come from small fixed sets (error codes, reasons).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

log = logging.getLogger(__name__)

# 1 ms .. 30 s: covers a VAD batch step (ms) up to a whole turn (tens of seconds).
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# Batch sizes: powers of two up to 1024.
BATCH_SIZE_BUCKETS: tuple[float, ...] = tuple(float(2**i) for i in range(11))


def metric_name(service: str, thing: str, unit: str = "") -> str:
    """``stepaudio_<service>_<thing>[_<unit>]``; counters pass unit="total"."""
    return "_".join(part for part in ("stepaudio", service, thing, unit) if part)


class ServiceMetrics:
    """The metrics every service has, plus factories for its own, on one registry."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry if registry is not None else CollectorRegistry()
        self.errors = self.counter("errors", "RPCs that ended with an error, by code.", ["code"])
        # exported at 0 from the start, so refusal panels and alerts see a series, not nothing
        self.errors.labels(code="overloaded")
        self.active_streams = self.gauge("active_streams", "Streams being served now.")

    def histogram(
        self,
        thing: str,
        documentation: str,
        unit: str = "seconds",
        buckets: Sequence[float] = LATENCY_BUCKETS_S,
        labels: Sequence[str] = (),
    ) -> Histogram:
        name = metric_name(self.service, thing, unit)
        return Histogram(
            name, documentation, labelnames=labels, buckets=buckets, registry=self.registry
        )

    def counter(self, thing: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        # prometheus_client appends "_total" itself.
        name = metric_name(self.service, thing)
        return Counter(name, documentation, labelnames=labels, registry=self.registry)

    def gauge(self, thing: str, documentation: str, unit: str = "") -> Gauge:
        name = metric_name(self.service, thing, unit)
        return Gauge(name, documentation, registry=self.registry)

    def record_error(self, code: str) -> None:
        self.errors.labels(code=code).inc()


@dataclass
class MetricsServer:
    """A running /metrics endpoint; ``close()`` stops it."""

    server: WSGIServer
    thread: Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def add_process_collectors(registry: CollectorRegistry) -> None:
    """Process, platform and GC metrics (normally only on the global registry)."""
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        try:
            registry.register(collector)
        except ValueError:  # already registered on this registry
            pass


def start_metrics_server(port: int, host: str, registry: CollectorRegistry) -> MetricsServer | None:
    """Serve ``registry`` on http://host:port/metrics; port 0 means metrics are off."""
    if port == 0:
        return None
    add_process_collectors(registry)
    server, thread = start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return MetricsServer(server, thread)
