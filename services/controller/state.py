"""Process-wide controller state: settings, clients, store, metrics, admission.

Held on ``app.state.controller``; nothing here keeps per-session data (that is in Redis and
in each connection's RealtimeSession).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace

from services.controller.auth import Quotas
from services.controller.clients import ServiceClients
from services.controller.config import ControllerSettings
from services.controller.metrics import ControllerMetrics
from services.controller.store import SessionStore


class SessionSlots:
    """Admission of realtime sessions (uvicorn's limit does not cover WebSockets)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def try_acquire(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active = max(0, self.active - 1)


class SpeculationGate:
    """Speculation is shed first: at most ``limit`` speculative responses run at once, and a
    real response that finds the LLM busy cancels the oldest speculation (of any session)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._running: list[asyncio.Task[None]] = []

    def has_room(self) -> bool:
        self._running = [t for t in self._running if not t.done()]
        return len(self._running) < self.limit

    def track(self, task: asyncio.Task[None]) -> None:
        self._running.append(task)

    def shed_one(self) -> bool:
        """Cancel the oldest running speculation; True if one was cancelled."""
        self._running = [t for t in self._running if not t.done()]
        if not self._running:
            return False
        self._running.pop(0).cancel()
        return True


@dataclass
class ControllerState:
    settings: ControllerSettings
    clients: ServiceClients
    store: SessionStore
    metrics: ControllerMetrics
    slots: SessionSlots
    speculation: SpeculationGate
    quotas: Quotas
    draining: bool = False
    sessions: set[Any] = field(default_factory=set)  # live RealtimeSession objects
    tracer: trace.Tracer = field(default_factory=trace.NoOpTracer)  # turn spans
