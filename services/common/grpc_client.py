"""Outgoing gRPC channels: limits, keepalive, retries for idempotent unary calls, deadlines.

gRPC has no default deadline, so every call gets ``timeout=`` from the caller's remaining turn
budget (``Deadline.timeout()``). Retries (A6 service config) are enabled only for the methods
named in ``retry_methods`` — unary and idempotent, on UNAVAILABLE; streaming calls are never
retried by gRPC once committed, so callers decide what a mid-stream failure means.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.settings import GrpcClientSettings

HEALTH_CHECK_METHOD = ("grpc.health.v1.Health", "Check")

RETRY_POLICY: dict[str, Any] = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
# Stop retrying when many calls fail (A6 throttling): protects a struggling service.
RETRY_THROTTLING: dict[str, Any] = {"maxTokens": 10, "tokenRatio": 0.1}


def service_config(retry_methods: Sequence[tuple[str, str]] = (HEALTH_CHECK_METHOD,)) -> str:
    """JSON service config retrying ``(service, method)`` pairs on UNAVAILABLE."""
    names = [{"service": service, "method": method} for service, method in retry_methods]
    config: dict[str, Any] = {"retryThrottling": RETRY_THROTTLING}
    if names:
        config["methodConfig"] = [{"name": names, "retryPolicy": RETRY_POLICY}]
    return json.dumps(config)


def channel_options(
    settings: GrpcClientSettings,
    retry_methods: Sequence[tuple[str, str]] = (HEALTH_CHECK_METHOD,),
) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", settings.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", settings.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_reconnect_backoff_ms", settings.max_reconnect_backoff_ms),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(retry_methods)),
    ]


def create_channel(
    settings: GrpcClientSettings,
    retry_methods: Sequence[tuple[str, str]] = (HEALTH_CHECK_METHOD,),
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """A grpc.aio channel to ``settings.target``: TLS (mTLS with a client certificate) when a
    CA is configured, else plaintext (close it with ``await ch.close()``); ``interceptors``:
    e.g. ``tracing.client_interceptors(tracer)`` (trace context out)."""
    options = channel_options(settings, retry_methods)
    chained = list(interceptors) or None
    tls = settings.tls
    if not tls.ca_file:
        return grpc.aio.insecure_channel(settings.target, options=options, interceptors=chained)
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ValueError("TLS: a client certificate needs both cert_file and key_file")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(tls.ca_file).read_bytes(),
        private_key=Path(tls.key_file).read_bytes() if tls.key_file else None,
        certificate_chain=Path(tls.cert_file).read_bytes() if tls.cert_file else None,
    )
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.aio.secure_channel(
        settings.target, credentials, options=options, interceptors=chained
    )


async def check_health(
    channel: grpc.aio.Channel, service: str = "", timeout_s: float = 1.0
) -> bool:
    """True when ``service`` ("" = whole server) answers SERVING within ``timeout_s``."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        request = health_pb2.HealthCheckRequest(service=service)
        # types-grpcio-health-checking declares HealthStub without its methods
        reply = await stub.Check(request, timeout=timeout_s)  # type: ignore[attr-defined]
    except grpc.aio.AioRpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def wait_until_serving(
    channel: grpc.aio.Channel, service: str = "", timeout_s: float = 10.0, poll_s: float = 0.1
) -> bool:
    """Poll health until SERVING (start order: callers wait for their dependencies)."""
    deadline = Deadline(timeout_s)
    while deadline.remaining_s() > 0:
        if await check_health(channel, service, timeout_s=min(1.0, deadline.remaining_s())):
            return True
        await asyncio.sleep(max(0.0, min(poll_s, deadline.remaining_s())))
    return False


class DeadlineExhausted(TimeoutError):
    """The budget is spent before the call could start."""

    code = "deadline_exceeded"


def call_timeout(
    remaining_s: float, *, margin_s: float = 0.0, cap_s: float | None = None, floor_s: float = 0.001
) -> float:
    """Per-call ``timeout=`` from the remaining budget, keeping ``margin_s`` for our own reply.

    Raises DeadlineExhausted when less than ``floor_s`` would be left for the call.
    """
    timeout = remaining_s - margin_s
    if cap_s is not None:
        timeout = min(timeout, cap_s)
    if timeout < floor_s:
        raise DeadlineExhausted(f"time budget exhausted ({remaining_s:.3f} s left)")
    return timeout


class Deadline:
    """A fixed point in (monotonic) time that hands out per-call timeouts."""

    def __init__(self, budget_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._at = clock() + budget_s

    @classmethod
    def from_context(
        cls,
        context: grpc.aio.ServicerContext[Any, Any],
        default_s: float,
        cap_s: float | None = None,
    ) -> Deadline:
        """The deadline of the call being served (onward calls must not outlive it)."""
        remaining = context.time_remaining()
        budget = default_s if remaining is None else remaining
        return cls(budget if cap_s is None else min(budget, cap_s))

    def remaining_s(self) -> float:
        return self._at - self._clock()

    @property
    def expired(self) -> bool:
        return self.remaining_s() <= 0

    def timeout(
        self, *, margin_s: float = 0.0, cap_s: float | None = None, floor_s: float = 0.001
    ) -> float:
        return call_timeout(self.remaining_s(), margin_s=margin_s, cap_s=cap_s, floor_s=floor_s)
