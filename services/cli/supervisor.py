"""Supervision of `stepaudio serve`'s processes: a part that exits while the stack runs is
restarted with the same command, environment and port, after an exponential backoff (reset
once it has stayed up for a while); every exit and restart is logged. Kubernetes does the same
with liveness probes; this is the local equivalent.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from services.cli.stack import LocalStack

log = logging.getLogger("stepaudio.supervisor")


@dataclass
class Supervisor:
    stack: LocalStack
    first_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    stable_s: float = 60.0  # up this long: the next crash starts from the first backoff again
    poll_s: float = 0.2
    restarts: dict[str, int] = field(default_factory=dict)
    _backoff: dict[str, float] = field(default_factory=dict)
    _started_at: dict[str, float] = field(default_factory=dict)
    _due: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Supervisor:
        now = time.monotonic()
        self._started_at = dict.fromkeys(self.stack.processes, now)
        self._thread = threading.Thread(target=self._run, name="stepaudio-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop supervising (before the stack is stopped, so nothing is restarted)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            for name in list(self.stack.processes):
                try:
                    self._check(name)
                except Exception:  # keep supervising the others
                    log.exception("supervisor: restarting %s failed", name)

    def _check(self, name: str) -> None:
        process = self.stack.processes[name]
        code = process.poll()
        if code is None:
            return
        now = time.monotonic()
        if name not in self._due:
            up_s = now - self._started_at.get(name, now)
            backoff = self._backoff.get(name, 0.0)
            backoff = self.first_backoff_s if up_s > self.stable_s or not backoff else backoff
            self._due[name] = now + backoff
            self._backoff[name] = min(self.max_backoff_s, backoff * 2)
            log.warning(
                "supervisor: %s exited with code %s after %.1f s; restarting in %.1f s",
                name, code, up_s, backoff,
            )  # fmt: skip
        if now < self._due[name] or self._stop.is_set():
            return
        del self._due[name]
        self.stack.respawn(name)
        self._started_at[name] = time.monotonic()
        self.restarts[name] = self.restarts.get(name, 0) + 1
        log.warning("supervisor: restarted %s (restart %d)", name, self.restarts[name])
