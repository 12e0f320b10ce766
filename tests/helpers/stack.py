"""The whole stack in-process: four gRPC services on port 0 + the controller under uvicorn.

Everything runs in the test's event loop (engines on their own threads), so tests can read
each service's metrics registry and engine state directly — e.g. to prove that a barge-in's
cancellation reached the LLM and TTS services.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry

from services.common.grpc_server import serve
from services.common.tracing import tracer_provider
from services.controller.app import create_app
from services.controller.config import ControllerSettings
from services.controller.http_server import uvicorn_config
from services.llm.config import LlmSettings
from services.llm.server import LlmService
from services.tokenizer.config import TokenizerSettings
from services.tokenizer.server import TokenizerService
from services.tts.config import TtsSettings
from services.tts.server import TtsService
from services.vad.config import VadSettings
from services.vad.server import VadService
from tests.helpers.grpc import TEST_SERVER_SETTINGS
from tests.helpers.waits import eventually


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


DEFAULT_REPLY_SEED = 7


@dataclass
class Stack:
    url: str
    services: dict[str, Any]
    controller_registry: CollectorRegistry
    app: Any

    def metric(self, service: str, name: str, **labels: str) -> float:
        registry = (
            self.controller_registry if service == "controller" else self.services[service].registry
        )
        return registry.get_sample_value(name, labels or None) or 0.0


@asynccontextmanager
async def running_stack(
    model_dir: Path,
    redis_url: str,
    workdir: Path,
    *,
    controller: dict[str, Any] | None = None,
    llm: dict[str, Any] | None = None,
    tts: dict[str, Any] | None = None,
    e2e: bool = False,
    span_exporter: SpanExporter | None = None,
    route: Callable[[str, str], Awaitable[str]] | None = None,
) -> AsyncIterator[Stack]:
    """Start VAD, tokenizer, LLM (+ an end-to-end LLM), TTS and the controller.

    ``span_exporter``: every component's spans also go there (each component has its own
    tracer provider, named ``stepaudio-<component>``, as separate processes would).
    ``route(name, address)``: the address the controller dials for that service instead (a
    fault proxy in front of it)."""
    exporters = [span_exporter] if span_exporter is not None else []
    common = dict(TEST_SERVER_SETTINGS)
    services: dict[str, Any] = {
        "vad": (VadService, VadSettings(**common)),
        "tokenizer": (TokenizerService, TokenizerSettings(**common, model_dir=model_dir)),
        "llm": (LlmService, LlmSettings(**common, model_dir=model_dir, **(llm or {}))),
        "tts": (
            TtsService,
            TtsSettings(
                **common, model_dir=model_dir, voices_dir=workdir / "voices", **(tts or {})
            ),
        ),
    }
    if e2e:
        services["e2e_llm"] = (
            LlmService,
            LlmSettings(**common, model_dir=model_dir, model_name="Step-Audio-AQAA"),
        )
    async with AsyncExitStack() as stack:
        started: dict[str, Any] = {}
        targets: dict[str, str] = {}
        for name, (cls, settings) in services.items():
            service = cls(settings, CollectorRegistry())
            provider = tracer_provider(name, settings.tracing, exporters)
            handle = await stack.enter_async_context(serve(service, settings, provider))
            started[name] = service
            targets[name] = await route(name, handle.address) if route else handle.address
        # the suite's stack runs with auth off unless a test configures it (tests/reliability)
        overrides = {"auth": {"enabled": False}, **(controller or {})}
        # replies are seeded unless a test sets its own seed: the tiny random Chat LM sometimes
        # ends a reply before its first word, and a test waiting for reply audio then flakes
        overrides["turn"] = {"seed": DEFAULT_REPLY_SEED, **overrides.get("turn", {})}
        settings = ControllerSettings(
            host="127.0.0.1",
            port=free_port(),
            redis={"url": redis_url},
            services=targets,
            **overrides,
        )
        registry = CollectorRegistry()
        app = create_app(
            settings, registry, tracer_provider("controller", settings.tracing, exporters)
        )
        config = uvicorn_config(app, settings, log_level="warning")
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        try:
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
            yield Stack(f"http://127.0.0.1:{settings.port}", started, registry, app)
        finally:
            server.should_exit = True
            await task


async def engines_idle(stack: Stack, why: str) -> None:
    """Wait until neither the Chat LLM nor the TTS LM has a request running (cancellation
    reaches each service only after its own hop)."""
    await eventually(
        lambda: stack.services["llm"].engine.engine.num_running == 0,
        what=f"no LLM request left running ({why})",
    )
    await eventually(
        lambda: stack.services["tts"].engine.models.lm.engine.num_running == 0,
        what=f"no TTS LM request left running ({why})",
    )
