"""The load generator's whole view of the realtime protocol (docs/protocol.md), in one place.

``loadtests.realtime_load`` never sees an event name: it gets ``Received`` items with a
protocol-neutral ``kind`` (``SPEECH_STOPPED``, ``AUDIO``, ``DONE``, ...). A second dialect of
the protocol only needs another ``classify`` and ``configure`` here.

Each item is timestamped (``time.monotonic()``) by a reader task the moment it arrives, so
latencies do not depend on when the scenario gets round to reading them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

# protocol-neutral kinds of what the server sends
SESSION = "session"  # the session exists (its id in ``data["id"]``)
SPEECH_STARTED = "speech_started"
SPEECH_STOPPED = "speech_stopped"  # the server's end of turn
REPLY_STARTED = "reply_started"
AUDIO = "audio"  # reply audio (``data["bytes"]``: PCM16 bytes in this message)
DONE = "done"  # the reply ended: ``data`` = {status, speculative, timings_ms, audio_seconds}
ERROR = "error"  # ``data`` = {code, message}
CLOSED = "closed"  # the socket closed: ``data`` = {code, reason}
OTHER = "other"

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
OUTPUT_RATE_HZ = 24_000
ACTIVE_SESSIONS = "stepaudio_controller_active_sessions"
SERVER_COUNTERS = {  # controller counters reported per sweep point: sample → (key, its label)
    "stepaudio_controller_responses_total": ("responses", "status"),
    "stepaudio_controller_speculations_total": ("speculations", "outcome"),
    "stepaudio_controller_errors_total": ("errors", "code"),
}


@dataclass(frozen=True)
class Received:
    at: float  # time.monotonic() when the message arrived
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


class Refused(Exception):
    """The server did not admit the session (over its limit, draining, store down), or the
    connection failed before it did."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def realtime_url(base: str) -> str:
    base = base.replace("http://", "ws://").replace("https://", "wss://").rstrip("/")
    return f"{base}/v1/realtime"


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    """The server's /metrics as {(sample name, sorted labels): value}; None if unreadable."""
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            reply = await http.get("/metrics")
    except httpx.HTTPError:
        return None
    if reply.status_code != 200:
        return None
    samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


def server_counts(
    before: dict[tuple[str, tuple[tuple[str, str], ...]], float] | None,
    after: dict[tuple[str, tuple[tuple[str, str], ...]], float] | None,
) -> dict[str, dict[str, float]] | None:
    """What the controller counted between two scrapes: replies by status, speculations by
    outcome, errors by code."""
    if before is None or after is None:
        return None
    counted: dict[str, dict[str, float]] = {key: {} for key, _ in SERVER_COUNTERS.values()}
    for (sample, labels), value in after.items():
        if sample in SERVER_COUNTERS:
            key, label = SERVER_COUNTERS[sample]
            change = value - before.get((sample, labels), 0.0)
            if change:
                counted[key][dict(labels)[label]] = change
    return counted


def classify(event: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    kind = event.get("type")
    if kind in ("session.created", "session.updated"):
        return SESSION, event.get("session", {})
    if kind == "input_audio_buffer.speech_started":
        return SPEECH_STARTED, {}
    if kind == "input_audio_buffer.speech_stopped":
        return SPEECH_STOPPED, {}
    if kind == "response.created":
        return REPLY_STARTED, {"id": event["response"]["id"]}
    if kind == "response.audio.delta":
        return AUDIO, {"base64_chars": len(event["delta"])}
    if kind == "response.done":
        return DONE, event["response"]
    if kind == "error":
        return ERROR, event["error"]
    return OTHER, {"type": kind}


class LoadSocket:
    """One realtime session: audio frames out, timestamped ``Received`` items in."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        # unbounded on purpose: the reader stamps every message as it arrives and never waits;
        # the scenario drains it every turn (a few events and ~25 audio messages a second)
        self.received: asyncio.Queue[Received] = asyncio.Queue()
        self.session_id = ""
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, url: str, timeout_s: float = 30.0) -> LoadSocket:
        """Open a session; raises ``Refused`` when the server turns it away."""
        try:
            ws = await websockets.connect(
                realtime_url(url), max_size=MAX_MESSAGE_BYTES, open_timeout=timeout_s
            )
        except InvalidStatus as exc:  # closed before accept: the HTTP handshake is refused
            raise Refused(f"http_{exc.response.status_code}") from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:  # no answer (overloaded, down)
            raise Refused(f"connect_{type(exc).__name__}") from None
        socket = cls(ws)
        try:
            first = await asyncio.wait_for(ws.recv(), timeout_s)
            while json.loads(first).get("type") == "error":  # e.g. session_expired, then created
                first = await asyncio.wait_for(ws.recv(), timeout_s)
        except ConnectionClosed as exc:  # accepted, then closed (store down, draining)
            code = exc.rcvd.code if exc.rcvd is not None else None
            raise Refused(f"close_{code}") from None
        socket.session_id = json.loads(first).get("session", {}).get("id", "")
        socket._reader = asyncio.create_task(socket._read())
        return socket

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                now = time.monotonic()
                if isinstance(message, bytes):  # binary transport: raw PCM16 reply audio
                    self.received.put_nowait(Received(now, AUDIO, {"bytes": len(message)}))
                    continue
                kind, data = classify(json.loads(message))
                self.received.put_nowait(Received(now, kind, data))
        except ConnectionClosed:
            pass
        closed = {"code": self.ws.close_code, "reason": self.ws.close_reason or ""}
        self.received.put_nowait(Received(time.monotonic(), CLOSED, closed))

    async def configure(
        self,
        *,
        transport: str,
        input_rate_hz: int,
        speculative: bool | None = None,
        reply_tokens: int | None = None,
        voice: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        session: dict[str, Any] = {
            "input_audio_format": {"type": "pcm16", "sample_rate_hz": input_rate_hz},
            "output_audio_format": {
                "type": "pcm16",
                "sample_rate_hz": OUTPUT_RATE_HZ,
                "transport": transport,
            },
        }
        if speculative is not None:
            session["speculative"] = speculative
        if reply_tokens is not None:
            session["max_response_output_tokens"] = reply_tokens
        if voice is not None:
            session["voice"] = voice
        await self.ws.send(json.dumps({"type": "session.update", "session": session}))
        while True:  # session.updated, or an error naming the bad setting
            item = await asyncio.wait_for(self.received.get(), timeout_s)
            if item.kind == SESSION:
                return
            if item.kind in (ERROR, CLOSED):
                raise RuntimeError(f"session.update refused: {item.data}")

    async def send_audio(self, pcm16: bytes) -> None:
        await self.ws.send(pcm16)  # the binary fast path: PCM16 at the input rate

    async def cancel_reply(self) -> None:
        await self.ws.send(json.dumps({"type": "response.cancel"}))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
