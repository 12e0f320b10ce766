"""gRPC channels and stubs from the controller to the four services."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

import grpc
from opentelemetry import trace
from stepaudio.serving.v1 import (
    llm_pb2_grpc,
    tokenizer_pb2_grpc,
    tts_pb2_grpc,
    vad_pb2_grpc,
)

from services.common import tracing
from services.common.grpc_client import check_health, create_channel, wait_until_serving
from services.common.settings import GrpcClientSettings
from services.controller.config import ControllerSettings

SERVING_POLL_S = 0.2  # health poll while a service is down (one per service, shared)


@dataclass
class ServiceClients:
    channels: dict[str, grpc.aio.Channel]
    vad: vad_pb2_grpc.VadServiceAsyncStub
    tokenizer: tokenizer_pb2_grpc.TokenizerServiceAsyncStub
    llm: llm_pb2_grpc.LlmServiceAsyncStub
    tts: tts_pb2_grpc.TtsServiceAsyncStub
    e2e_llm: llm_pb2_grpc.LlmServiceAsyncStub | None
    _serving_polls: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    @classmethod
    def connect(
        cls, settings: ControllerSettings, tracer: trace.Tracer | None = None
    ) -> ServiceClients:
        targets = settings.services.model_dump()
        channels = {}
        for name, target in targets.items():
            if not target:
                continue
            client = GrpcClientSettings(
                target=target,
                max_message_bytes=settings.grpc_max_message_bytes,
                keepalive_time_ms=settings.keepalive.time_ms,
                keepalive_timeout_ms=settings.keepalive.timeout_ms,
                tls=settings.tls,
            )
            interceptors = tracing.client_interceptors(tracer) if tracer is not None else []
            channels[name] = create_channel(client, interceptors=interceptors)
        e2e = channels.get("e2e_llm")
        return cls(
            channels=channels,
            vad=vad_pb2_grpc.VadServiceStub(channels["vad"]),
            tokenizer=tokenizer_pb2_grpc.TokenizerServiceStub(channels["tokenizer"]),
            llm=llm_pb2_grpc.LlmServiceStub(channels["llm"]),
            tts=tts_pb2_grpc.TtsServiceStub(channels["tts"]),
            e2e_llm=llm_pb2_grpc.LlmServiceStub(e2e) if e2e is not None else None,
        )

    async def health(self, timeout_s: float = 1.0) -> dict[str, bool]:
        names = list(self.channels)
        results = await asyncio.gather(
            *(check_health(self.channels[name], "", timeout_s) for name in names)
        )
        return dict(zip(names, results, strict=True))

    async def until_serving(self, name: str) -> None:
        """Return once service ``name`` answers SERVING (at once when it does). Callers share
        one health poll per service: every session waiting out an outage reopens its stream
        as soon as the service is back, and the service sees one health check per poll."""
        poll = self._serving_polls.get(name)
        if poll is None or poll.done():
            poll = asyncio.create_task(self._poll_until_serving(name), name=f"serving-{name}")
            self._serving_polls[name] = poll
        await asyncio.shield(poll)  # a caller that gives up leaves the poll to the others

    async def _poll_until_serving(self, name: str) -> None:
        await wait_until_serving(self.channels[name], timeout_s=math.inf, poll_s=SERVING_POLL_S)

    async def close(self) -> None:
        for poll in self._serving_polls.values():
            poll.cancel()
        await asyncio.gather(*self._serving_polls.values(), return_exceptions=True)
        await asyncio.gather(*(channel.close() for channel in self.channels.values()))
