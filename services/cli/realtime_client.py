"""A WebSocket client of /v1/realtime: streams a clip at real-time pace, collects the reply.

Used by `stepaudio chat`, the demo, the benchmarks and the tests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets

from services.common.audio import float_to_pcm16, pcm16_to_float
from services.common.resample import resample_sinc

CHUNK_MS = 20


@dataclass
class TurnResult:
    session_id: str = ""
    text: str = ""
    audio: list[np.ndarray] = field(default_factory=list)
    sample_rate_hz: int = 22_050
    done: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    event_times: list[float] = field(default_factory=list)  # monotonic receive time per event

    @property
    def pcm(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, dtype=np.float32)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]


class RealtimeClient:
    def __init__(
        self,
        url: str,
        *,
        session_id: str | None = None,
        api_key: str | None = None,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        """``connect_options``: more keyword arguments of ``websockets.connect`` (a
        pre-connected ``sock``, ``max_queue``, ``ping_interval``, ...)."""
        base = url.replace("http://", "ws://").replace("https://", "wss://").rstrip("/")
        self.url = f"{base}/v1/realtime" + (f"?session_id={session_id}" if session_id else "")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.connect_options = connect_options or {}
        self.ws: Any = None
        self.session: dict[str, Any] = {}
        self.result = TurnResult()

    async def __aenter__(self) -> RealtimeClient:
        options = {"max_size": 16 * 1024 * 1024, **self.connect_options}
        self.ws = await websockets.connect(self.url, additional_headers=self.headers, **options)
        created = await self.next_event()
        if created.get("type") == "error":
            created = await self.next_event()
        self.session = created.get("session", {})
        self.result.session_id = self.session.get("id", "")
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.ws.close()

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(event))

    async def next_event(self, timeout_s: float = 60.0) -> dict[str, Any]:
        while True:
            message = await asyncio.wait_for(self.ws.recv(), timeout_s)
            if isinstance(message, bytes):  # binary transport: raw PCM16 reply audio
                self.result.audio.append(pcm16_to_float(message))
                continue
            event: dict[str, Any] = json.loads(message)
            self._record(event)
            return event

    def _record(self, event: dict[str, Any]) -> None:
        self.result.events.append(event)
        self.result.event_times.append(time.monotonic())
        kind = event.get("type")
        if kind == "response.audio.delta":
            self.result.audio.append(pcm16_to_float(base64.b64decode(event["delta"])))
            self.result.sample_rate_hz = event.get("sample_rate_hz", self.result.sample_rate_hz)
        elif kind == "response.text.delta":
            self.result.text += event["delta"]

    async def configure(self, **session: Any) -> dict[str, Any]:
        await self.send({"type": "session.update", "session": session})
        return await self.wait_for("session.updated")

    async def wait_for(
        self, kind: str, timeout_s: float = 120.0, tolerate: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """The next event of type ``kind``; an error event on the way raises, unless its
        code is in ``tolerate``."""
        deadline = time.monotonic() + timeout_s
        while True:
            event = await self.next_event(max(0.1, deadline - time.monotonic()))
            if event.get("type") == kind:
                return event
            if event.get("type") == "error" and kind != "error":
                if event["error"].get("code") not in tolerate:
                    raise RealtimeError(event["error"])

    async def stream_audio(
        self, samples: np.ndarray, rate_hz: int, *, realtime: bool = True, json_frames: bool = False
    ) -> None:
        """Send a clip in 20 ms frames (binary, or base64 events), paced like a live microphone."""
        step = rate_hz * CHUNK_MS // 1000
        started = time.monotonic()
        for index, start in enumerate(range(0, samples.size, step)):
            data = float_to_pcm16(samples[start : start + step])
            if json_frames:
                audio = base64.b64encode(data).decode()
                await self.send({"type": "input_audio_buffer.append", "audio": audio})
            else:
                await self.ws.send(data)
            if realtime:
                delay = started + (index + 1) * CHUNK_MS / 1000 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

    async def speak_and_wait(
        self,
        samples: np.ndarray,
        rate_hz: int,
        *,
        silence_s: float = 1.5,
        timeout_s: float = 120,
        tolerate: tuple[str, ...] = (),
    ) -> TurnResult:
        """Speak a clip followed by silence (the VAD ends the turn), wait for response.done."""
        silence = np.zeros(int(rate_hz * silence_s), dtype=np.float32)
        await self.stream_audio(np.concatenate([samples, silence]), rate_hz)
        done = await self.wait_for("response.done", timeout_s, tolerate)
        self.result.done = done["response"]
        return self.result


class RealtimeError(RuntimeError):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code = error.get("code")


def prepare_clip(samples: np.ndarray, rate_hz: int) -> tuple[np.ndarray, int]:
    """Clips outside 8–48 kHz are resampled to 16 kHz (the protocol's accepted input rates)."""
    if 8_000 <= rate_hz <= 48_000:
        return samples, rate_hz
    return resample_sinc(samples, rate_hz, 16_000), 16_000
