"""A TCP fault proxy for loopback tests: latency with jitter, a bandwidth cap.

Our own code, not a library: toxiproxy runs only from docker here and this kernel has no
``sch_netem`` for ``tc netem`` (docs/reliability.md, "Fault injection usable here"). It runs
in the test's event loop; gRPC's HTTP/2 passes through it unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

CHUNK_BYTES = 64 * 1024


@dataclass
class FaultProxy:
    upstream: str  # host:port
    latency_s: float = 0.0  # added to each direction
    jitter_s: float = 0.0  # ± uniformly, from a seeded generator
    bytes_per_s: float | None = None  # each direction, per connection
    seed: int = 0
    bytes_forwarded: int = 0
    connections: int = 0
    _rng: random.Random = field(init=False)
    _server: asyncio.Server | None = field(init=False, default=None)
    _tasks: set[asyncio.Task[None]] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def address(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _delay(self) -> float:
        return max(0.0, self.latency_s + self._rng.uniform(-self.jitter_s, self.jitter_s))

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        host, port = self.upstream.rsplit(":", 1)
        try:
            upstream_r, upstream_w = await asyncio.open_connection(host, int(port))
        except OSError:
            client_w.close()
            self._tasks.discard(task)
            return
        self.connections += 1
        try:
            await asyncio.gather(self._pipe(client_r, upstream_w), self._pipe(upstream_r, client_w))
        finally:
            for writer in (client_w, upstream_w):
                writer.close()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Each chunk is written ``latency ± jitter`` after it was read, in order: a delay, not
        a stall (reading goes on meanwhile); the cap paces the writes."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._send(queue, writer))
        last_due = 0.0
        try:
            with contextlib.suppress(OSError):  # a reset ends this direction like EOF
                while data := await reader.read(CHUNK_BYTES):
                    last_due = max(last_due, time.monotonic() + self._delay())  # keeps order
                    queue.put_nowait((last_due, data))
            queue.put_nowait((last_due, b""))  # EOF, after the data
            await sender
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender

    async def _send(
        self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        while True:
            due, data = await queue.get()
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()  # OSError: the peer left; _pipe's finally collects it
            self.bytes_forwarded += len(data)
            if self.bytes_per_s:
                await asyncio.sleep(len(data) / self.bytes_per_s)
