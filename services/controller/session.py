"""One realtime WebSocket session: the turn state machine.

States: listening (no reply) → user speaking (utterance streamed to the tokenizer) →
responding (a ResponseRunner task) → listening. Speech during a reply is a barge-in: the reply
task is cancelled (its gRPC calls with it), audio still queued for the client is dropped at
once, and only what was sent is stored, marked interrupted.

Speculation (Step-Audio): a pause shorter than the end-of-turn silence starts a *held* reply
on the utterance so far; end of turn commits it (its held audio goes out at once), resumed
speech discards it (cancelled, nothing sent, nothing stored).

Tasks: a socket reader (this coroutine), one writer draining a bounded outbound queue, the VAD
event loop, at most one reply and one speculation, transcription tasks and the session-length
timer; all are cancelled when the socket closes. Context lives in Redis.

The server ends a session itself (``_end``) when it is idle, after too many protocol errors,
when its client stops reading (``slow_consumer``), past ``max_session_s``
(``session_too_long``) and on drain: the close frame is queued at once, the reader gets the
disconnect and the session shuts down like any other (its reply cancelled downstream, what
was sent stored). A client that does not read the close frame is cut off.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
import time
import uuid
from typing import Any

import grpc
import numpy as np
from fastapi import WebSocket
from pydantic import ValidationError
from redis.exceptions import RedisError
from stepaudio.serving.v1 import llm_pb2, vad_pb2

from services.common.audio import AudioError, resample
from services.common.errors import ErrorCode, ServiceError, code_from_rpc_error
from services.common.tracing import TurnTrace
from services.controller import openai_events
from services.controller.audio_formats import decode_input
from services.controller.context import (
    SessionSettings,
    build_messages,
    transcription_messages,
)
from services.controller.http_server import close_socket
from services.controller.input_audio import InputAudio
from services.controller.limits import check_voice, parse_event_json
from services.controller.openai_events import Dialect, EdgeError, EventRenderer
from services.controller.protocol import (
    CLIENT_EVENT,
    CLIENT_EVENT_TYPES,
    AudioAppendEvent,
    AudioClearEvent,
    AudioCommitEvent,
    ContentAudio,
    ConversationItem,
    InputAudioFormat,
    ItemCreateEvent,
    ResponseCancelEvent,
    ResponseCreateEvent,
    ResponseOptions,
    SessionUpdateEvent,
    error_event,
)
from services.controller.state import ControllerState
from services.controller.store import SessionNotFound, Turn
from services.controller.turn import (
    E2eUnavailable,
    ResponsePlan,
    ResponseProgress,
    ResponseRunner,
    ResponseSink,
)
from services.controller.voices import resolve_voice

log = logging.getLogger(__name__)

SESSION_ID = re.compile(r"[0-9a-f]{32}")
VAD_RETRY_FIRST_S, VAD_RETRY_MAX_S = 0.2, 5.0  # VAD stream reopen backoff
CANCEL_WAIT_S = 2.0  # a cancelled reply gets this long to unwind before the turn goes on
SHED_RETRIES = 8  # a real reply's retries after shedding speculations from a full LLM
SHED_BACKOFF_S = 0.05
_VAD_STARTED = vad_pb2.SpeechEvent.SPEECH_STARTED
_VAD_PAUSED = vad_pb2.SpeechEvent.SPEECH_PAUSED
_VAD_RESUMED = vad_pb2.SpeechEvent.SPEECH_RESUMED
_VAD_STOPPED = vad_pb2.SpeechEvent.SPEECH_STOPPED


REALTIME_MODEL = "step-audio-chat"  # the model named in OpenAI session objects


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, event_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.event_id = event_id  # the client event that failed, if it had an id


class Reply:
    """A running (or held) response with its bookkeeping."""

    def __init__(
        self, response_id: str, sink: ResponseSink, speculative: bool, options: ResponseOptions
    ) -> None:
        self.response_id = response_id
        self.item_id = sink.item_id  # the assistant item (and stored turn) it produces
        self.sink = sink
        self.progress = sink.progress
        self.speculative = speculative
        self.options = options
        self.audio = True  # audio out (else text only)
        self.input_audio_tokens = 0  # audio ids in its prompt (usage)
        self.cancel_reason: str | None = None  # OpenAI status_details.reason
        self.task: asyncio.Task[None] | None = None
        self.user_turn: Turn | None = None  # the turn this reply answers (stored on commit)
        self.end_of_speech = time.monotonic()


class RealtimeSession:
    def __init__(
        self, ws: WebSocket, state: ControllerState, session_id: str, settings: SessionSettings,
        turns: list[Turn], dialect: Dialect = "native",
    ) -> None:  # fmt: skip
        self.ws = ws
        self.events = EventRenderer(dialect)
        self._noted: set[str] = set()  # ignored OpenAI fields already logged
        self._speech_item_id: str | None = None  # the user item the current speech becomes
        self.state = state
        self.session_id = session_id
        self.settings = settings
        self.turns = turns
        self.audio = InputAudio(state.clients, state.settings.rpc_timeout_s)
        self.audio.set_input_rate(settings.input_sample_rate_hz)
        self._capping_turn = False  # a turn over max_turn_s is being committed
        self._outbound: asyncio.Queue[tuple[dict[str, Any] | bytes, str | None]] = asyncio.Queue(
            maxsize=state.settings.limits.outbound_queue_events
        )
        self._dropped_responses: dict[str, None] = {}  # insertion-ordered set
        self.reply: Reply | None = None
        self.speculation: Reply | None = None
        self._vad_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._protocol_errors = 0
        self._user_speaking = False
        self.closed = False
        self._ended = False  # the server closed the socket (_end)
        self._writer_task: asyncio.Task[None] | None = None
        self._winding_down = False  # past max_session_s: no new replies
        self._trace = TurnTrace(state.tracer, session_id)  # one trace per turn
        self.audio_seconds = 0.0  # audio in and out, metered against the key's daily quota

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def open(
        cls, ws: WebSocket, state: ControllerState, session_id: str | None,
        dialect: Dialect = "native",
    ) -> tuple[RealtimeSession, bool, bool]:  # fmt: skip
        """Resume ``session_id`` from Redis or start a new session.

        Returns (session, resumed, expired): ``expired`` when the asked-for id was not found.
        OpenAI clients start with OpenAI's input format (PCM16 at 24 kHz).
        """
        defaults = SessionSettings.from_defaults(state.settings.turn)
        if dialect != "native":
            defaults.input_sample_rate_hz = openai_events.OPENAI_PCM_RATE_HZ
        if session_id and SESSION_ID.fullmatch(session_id):
            try:
                record = await state.store.load(session_id)
                settings = defaults.merged(record.settings)
                session = cls(ws, state, session_id, settings, record.turns, dialect)
                return session, True, False
            except SessionNotFound:
                pass
        new_id = await state.store.create(defaults.to_dict())
        return cls(ws, state, new_id, defaults, [], dialect), False, bool(session_id)

    async def run(self, *, resumed: bool, expired: bool) -> None:
        writer = asyncio.create_task(self._writer(), name=f"ws-writer-{self.session_id}")
        self._writer_task = writer
        try:
            if expired:
                await self.send(
                    error_event("session_expired", "no such session; a new one started")
                )
            await self.send(
                {"type": "session.created", "resumed": resumed, "session": self._describe()}
            )
            self._restart_vad()
            if self.settings.turn_detection == "none":
                self.audio.start_utterance(None, stream_tokens=False)
            self._spawn(self._cap_session())
            await self._read_loop(writer)
        finally:
            self.closed = True
            await self._shutdown(writer)

    async def _shutdown(self, writer: asyncio.Task[None]) -> None:
        tasks = [t for t in (self._vad_task, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        if self.speculation is not None:
            await self._discard_speculation("disconnect")
        if self.reply is not None:
            await self._interrupt_reply("disconnect")
        await self.audio.abandon_utterance()
        self._trace.end()
        writer.cancel()
        await asyncio.gather(*tasks, writer, return_exceptions=True)

    async def close_for_restart(self) -> None:
        """Drain: close with 1012 (service restart); the client resumes elsewhere from Redis."""
        await self._flush()  # a reply that just finished: its response.done goes out first
        await self._end(1012, "draining")

    async def _flush(self) -> None:
        """Wait until the writer has written all that is queued (bounded: a client that does
        not read gets no longer than ``slow_consumer_timeout_s``)."""
        if self.closed:  # nothing more is written
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.state.settings.limits.slow_consumer_timeout_s):
                await self._outbound.join()

    async def _end(self, code: int, reason: str) -> None:
        """Close the socket from the server's side, once, from any task: nothing more is
        sent, the reader gets the disconnect and the session shuts down. The close frame
        goes behind what was already written; a client that has not taken it within
        ``slow_consumer_timeout_s`` is cut off (see http_server.close_socket)."""
        if self._ended:
            return
        self._ended = self.closed = True
        if self._writer_task is not None:  # what it has not written stays unsent
            self._writer_task.cancel()
        grace_s = self.state.settings.limits.slow_consumer_timeout_s
        await close_socket(self.ws, code, reason, grace_s)

    async def _cap_session(self) -> None:
        """Past ``max_session_s`` the session ends cleanly: the reply in progress may finish
        (within ``drain_timeout_s``, as on drain; then it is cancelled, reason
        ``session_too_long``), no new one starts, the client is told
        ``session_too_long`` and the socket is closed 1008. The context is in Redis: the
        client resumes with its session_id."""
        limits = self.state.settings.limits
        await asyncio.sleep(limits.max_session_s)
        self._winding_down = True
        deadline = time.monotonic() + limits.drain_timeout_s
        if self.reply is not None:
            log.info("session=%s reached max_session_s: waiting for the reply in progress",
                     self.session_id)  # fmt: skip
        while (reply := self.reply) is not None and reply.task is not None:
            left = deadline - time.monotonic()
            if reply.task.done() or left <= 0:
                break
            await asyncio.wait([reply.task], timeout=left)
        if self.reply is not None:  # still running: cut off, what was sent stored
            self.reply.cancel_reason = ErrorCode.SESSION_TOO_LONG
            await self._interrupt_reply("session_too_long")
        log.info("session=%s reached max_session_s: closing", self.session_id)
        self.state.metrics.record_error(ErrorCode.SESSION_TOO_LONG)
        message = f"the session reached the {limits.max_session_s:g} s cap; resume it by its id"
        await self.send(error_event(ErrorCode.SESSION_TOO_LONG, message))
        await self._flush()  # the client reads all it was sent, then the close
        await self._end(1008, ErrorCode.SESSION_TOO_LONG)

    def _describe(self) -> dict[str, Any]:
        if self.events.dialect == "native":
            return {"id": self.session_id, **self.settings.to_dict(), "turns": len(self.turns)}
        described = openai_events.describe_session(
            self.events.dialect, self.settings, self.session_id, REALTIME_MODEL
        )
        return {**described, "turns": len(self.turns)}

    # -- outbound --------------------------------------------------------------------------

    async def send(self, event: dict[str, Any] | bytes, response_id: str | None = None) -> None:
        if self.closed:
            return
        if isinstance(event, dict):
            rendered = self.events.render(event)  # the client's dialect, with an event_id
            if rendered is None:
                return
            event = rendered
        item = (event, response_id)
        try:
            self._outbound.put_nowait(item)  # the usual case: no wait
            return
        except asyncio.QueueFull:
            pass
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
            # that arrives just as the put completes, and a cancelled reply's _play worker
            # then ran on and blocked its task (and the socket's reader) for good
            async with asyncio.timeout(self.state.settings.limits.slow_consumer_timeout_s):
                await self._outbound.put(item)
        except TimeoutError:
            if self.closed:  # another task found it first, or the client left meanwhile
                return
            log.warning("slow consumer session=%s: closing", self.session_id)
            self.state.metrics.record_error(ErrorCode.SLOW_CONSUMER)
            # not ws.close(): that waits until the socket is writable, i.e. for this client
            await self._end(1008, ErrorCode.SLOW_CONSUMER)

    async def _writer(self) -> None:
        while True:
            event, response_id = await self._outbound.get()
            try:
                if response_id is not None and response_id in self._dropped_responses:
                    continue  # audio of an interrupted reply: never reaches the client
                if isinstance(event, bytes):
                    await self.ws.send_bytes(event)
                else:
                    await self.ws.send_text(json.dumps(event, ensure_ascii=False))
            finally:
                self._outbound.task_done()  # join(): everything queued was written

    def _drop(self, response_id: str) -> None:
        self._dropped_responses[response_id] = None
        while len(self._dropped_responses) > 64:  # only recent replies can have queued events
            del self._dropped_responses[next(iter(self._dropped_responses))]

    # -- inbound ---------------------------------------------------------------------------

    async def _read_loop(self, writer: asyncio.Task[None]) -> None:
        idle_timeout = self.state.settings.limits.idle_timeout_s
        while not self.closed and not writer.done():
            try:
                message = await asyncio.wait_for(self.ws.receive(), idle_timeout)
            except TimeoutError:
                await self._end(1000, "idle")
                return
            if message["type"] == "websocket.disconnect":
                return
            try:
                if message.get("bytes") is not None:
                    self._on_audio(message["bytes"])
                else:
                    await self._on_text(message.get("text") or "")
                self._protocol_errors = 0
            except ServiceError as exc:
                await self._protocol_error(exc.code, str(exc))
            except ProtocolError as exc:
                await self._protocol_error(exc.code, str(exc), client_event_id=exc.event_id)
                if self._protocol_errors > self.state.settings.limits.max_protocol_errors:
                    await self._end(1008, "too many protocol errors")
                    return
        if writer.done() and not writer.cancelled() and writer.exception() is not None:
            log.info("writer ended session=%s: %s", self.session_id, writer.exception())

    async def _protocol_error(
        self, code: str, message: str, event_type: str | None = None,
        client_event_id: str | None = None,
    ) -> None:  # fmt: skip
        self._protocol_errors += 1
        self.state.metrics.record_error(code)
        await self.send(error_event(code, message, event_type, client_event_id))

    async def _on_text(self, text: str) -> None:
        try:
            raw = parse_event_json(text)
        except ServiceError as exc:  # the client's fault: counts towards the 1008 close
            raise ProtocolError(exc.code, str(exc)) from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            raise ProtocolError(ErrorCode.INVALID_EVENT, "an event is a JSON object with a type")
        event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None
        if raw["type"] not in CLIENT_EVENT_TYPES:
            raise ProtocolError(
                ErrorCode.UNKNOWN_EVENT, f"unknown event type {raw['type']!r}", event_id
            )
        try:
            normalized = openai_events.normalize_client_event(raw)
            event = CLIENT_EVENT.validate_python(normalized.event)
        except EdgeError as exc:
            raise ProtocolError(ErrorCode.INVALID_EVENT, str(exc), event_id) from exc
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"][1:])
            message = f"{where}: {first['msg']}"
            raise ProtocolError(ErrorCode.INVALID_EVENT, message, event_id) from exc
        self._note_ignored(raw["type"], normalized.ignored)
        if normalized.hint and self.events.dialect == "native":
            log.info("session=%s speaks the OpenAI %s dialect", self.session_id, normalized.hint)
            self.events.dialect = normalized.hint  # an OpenAI client the handshake hid
            if isinstance(event, SessionUpdateEvent) and not event.session.input_audio_format:
                rate = openai_events.OPENAI_PCM_RATE_HZ  # its audio is OpenAI's 24 kHz
                event.session.input_audio_format = InputAudioFormat(sample_rate_hz=rate)
        await self._dispatch(event)

    def _note_ignored(self, event_type: str, fields: list[str]) -> None:
        """Valid OpenAI fields with no meaning here: accepted, logged once per session."""
        new = [f for f in fields if f not in self._noted]
        if new:
            self._noted.update(new)
            log.info("session=%s %s: ignored OpenAI fields %s", self.session_id, event_type, new)

    async def _dispatch(self, event: object) -> None:
        match event:
            case AudioAppendEvent(audio=audio):
                try:
                    data = base64.b64decode(audio, validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise ProtocolError(ErrorCode.INVALID_AUDIO, "audio is not base64") from exc
                self._on_audio(data)
            case SessionUpdateEvent(session=update):
                await self._update_session(update)
            case AudioCommitEvent():
                await self._commit_audio()
            case AudioClearEvent():
                await self.audio.abandon_utterance()
                if self.settings.turn_detection == "none":  # push-to-talk keeps capturing
                    self.audio.start_utterance(None, stream_tokens=False)
                await self.send({"type": "input_audio_buffer.cleared"})
            case ItemCreateEvent(item=item):
                await self._create_item(item)
            case ResponseCreateEvent(response=options):
                await self._start_reply(time.monotonic(), options or ResponseOptions())
            case ResponseCancelEvent():
                if self.reply is not None:
                    self.reply.cancel_reason = "client_cancelled"
                    await self._interrupt_reply("client")

    def _on_audio(self, data: bytes) -> None:
        limit = self.state.settings.limits.max_frame_bytes
        if len(data) > limit:
            raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"audio frame over {limit} bytes")
        try:
            samples = decode_input(data, self.settings.input_encoding)
        except AudioError as exc:
            raise ProtocolError(exc.code, str(exc)) from exc
        self.audio_seconds += samples.size / self.settings.input_sample_rate_hz
        self.audio.push(samples)
        too_long = self.audio.utterance_samples > self.state.settings.limits.max_turn_s * 16_000
        if self.audio.capturing and too_long and not self._capping_turn:
            self._capping_turn = True  # once: frames keep coming while the commit runs
            self._spawn(self._cap_turn())

    async def _cap_turn(self) -> None:
        """A user turn that never ends: said so (``turn_too_long``), then committed as is,
        stored and (server VAD) answered like any other."""
        try:
            limit = self.state.settings.limits.max_turn_s
            message = f"the user turn reached the {limit:g} s cap and was committed as is"
            await self.send(error_event(ErrorCode.TURN_TOO_LONG, message))
            await self._commit_audio()
        finally:
            self._capping_turn = False

    # -- session settings --------------------------------------------------------------------

    async def _update_session(self, update: Any) -> None:
        if update.voice:
            update = update.model_copy(
                update={"voice": resolve_voice(update.voice, self.state.settings.voice_aliases)}
            )
        candidate = SessionSettings(**self.settings.to_dict())
        changed = candidate.apply(update)
        if "voice" in changed:
            await check_voice(self.state.clients.tts, candidate.voice)
        if "pipeline" in changed and candidate.pipeline == "end_to_end":
            if self.state.clients.e2e_llm is None:
                raise ProtocolError(
                    ErrorCode.INVALID_ARGUMENT,
                    "end_to_end needs an end-to-end LLM; this deployment has none",
                )
        self.settings = candidate
        if changed & {"input_sample_rate_hz"}:
            self.audio.set_input_rate(candidate.input_sample_rate_hz)
        vad_fields = {"turn_detection", "silence_ms", "min_speech_ms", "vad_threshold"}
        if changed & (vad_fields | {"speculate_after_ms", "speculative"}):
            self._restart_vad()
        if "turn_detection" in changed:
            await self.audio.abandon_utterance()
            if candidate.turn_detection == "none":  # push-to-talk: everything until commit
                self.audio.start_utterance(None, stream_tokens=False)
        try:
            await self.state.store.save_settings(self.session_id, candidate.to_dict())
        except (RedisError, OSError, SessionNotFound) as exc:
            await self._store_unavailable(exc)
        await self.send({"type": "session.updated", "session": self._describe()})

    # -- VAD-driven turn detection -----------------------------------------------------------

    def _restart_vad(self) -> None:
        if self._vad_task is not None:
            self._vad_task.cancel()
        self._vad_task = None
        if self.settings.turn_detection == "server_vad":
            self._vad_task = asyncio.create_task(self._vad_loop(), name=f"vad-{self.session_id}")

    async def _vad_loop(self) -> None:
        """One VAD stream for the session; reopened with backoff if the service drops it."""
        s = self.settings
        pause_ms = (
            s.speculate_after_ms if s.speculative and s.speculate_after_ms < s.silence_ms else 0
        )
        config = vad_pb2.VadConfig(
            threshold=s.vad_threshold,
            min_speech_ms=s.min_speech_ms,
            min_silence_ms=s.silence_ms,
            pause_ms=pause_ms,
        )
        backoff, reported = VAD_RETRY_FIRST_S, False
        while not self.closed:
            try:
                async for event in self.audio.vad_events(config):
                    backoff, reported = VAD_RETRY_FIRST_S, False
                    await self._handle_vad_event(event)
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.CANCELLED:
                    return
                code = code_from_rpc_error(exc, "vad")
                log.warning("vad stream failed session=%s: %s %s (%s)", self.session_id,
                            exc.code().name, exc.details(), code)  # fmt: skip
                self.state.metrics.record_error(code)
                if not reported:  # once per outage; audio during it gets no turn detection
                    reported = True
                    message = f"voice activity detection unavailable ({exc.code().name}); retrying"
                    await self.send(error_event(code, message))
            # backoff: a service that is SERVING yet fails the call; a restarting one is
            # waited for by health, so turn detection resumes the moment it is back
            await asyncio.sleep(backoff)
            await self.state.clients.until_serving("vad")
            backoff = min(backoff * 2, VAD_RETRY_MAX_S)

    async def _handle_vad_event(self, event: vad_pb2.SpeechEvent) -> None:
        """A bug in one event's handling must not end turn detection for the session."""
        try:
            await self._on_vad_event(event)
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            raise
        except Exception:
            log.exception("handling a VAD event failed session=%s", self.session_id)
            self.state.metrics.record_error(ErrorCode.INTERNAL_ERROR)
            await self.send(error_event(ErrorCode.INTERNAL_ERROR, "internal error; see the log"))

    async def _on_vad_event(self, event: vad_pb2.SpeechEvent) -> None:
        if event.kind == _VAD_STARTED:
            await self._on_speech_started(event)
        elif event.kind == _VAD_PAUSED:
            self._on_pause()
        elif event.kind == _VAD_RESUMED:
            if self.speculation is not None:
                await self._discard_speculation("resumed")
        elif event.kind == _VAD_STOPPED and self._user_speaking:
            await self.send(
                {
                    "type": "input_audio_buffer.speech_stopped",
                    "audio_end_ms": self._ms(event.audio_ms),
                    "item_id": self._speech_item_id or "",
                }
            )
            await self._commit_audio()

    def _ms(self, vad_ms: int) -> int:
        return self.audio.session_sample(vad_ms) * 1000 // 16_000

    async def _on_speech_started(self, event: vad_pb2.SpeechEvent) -> None:
        barge_in = self.reply is not None and self.settings.interrupt_response
        if barge_in and self.reply is not None:
            self._drop(self.reply.response_id)  # its queued audio never leaves
        self._speech_item_id = uuid.uuid4().hex
        await self.send(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": self._ms(event.audio_ms),
                "item_id": self._speech_item_id,
            }
        )
        if barge_in and self.reply is not None:
            self.reply.cancel_reason = "turn_detected"
            await self._interrupt_reply("barge_in")
        self._trace.start(event.traceparent)  # continues the VAD's speech span
        self._user_speaking = True
        self.audio.start_utterance(
            self.audio.session_sample(event.audio_ms),
            stream_tokens=True,
            pad_ms=self.settings.prefix_padding_ms,
        )

    def _on_pause(self) -> None:
        if not self.settings.speculative or self.speculation is not None or self.reply is not None:
            return
        if self._winding_down:
            return
        if not self.settings.create_response:  # no automatic reply, so nothing to speculate
            return
        if not self.state.speculation.has_room():
            self.state.metrics.speculations.labels(outcome="shed").inc()
            return
        audio = self.audio.utterance_audio()
        if audio.size < 16_000 * self.settings.min_speech_ms // 1000:
            return
        reply = self._new_reply(time.monotonic(), ResponseOptions(), speculative=True)
        self.speculation = reply
        reply.task = asyncio.create_task(self._run_speculation(reply, audio))
        self.state.speculation.track(reply.task)
        self.state.metrics.speculations.labels(outcome="started").inc()

    async def _run_speculation(self, reply: Reply, audio: Any) -> None:
        reply.progress.mark("speculation_started")
        try:
            token_ids = await self.audio.tokenize(audio)
        except grpc.aio.AioRpcError as exc:
            if self.reply is reply:  # committed meanwhile: the turn needs its answer
                await self._service_error(exc, "tokenizer")
                await self._finish_reply(reply, "failed")
            return
        if not token_ids:
            if self.reply is reply:
                await self.send(error_event(ErrorCode.EMPTY_AUDIO, "the turn holds no speech"))
                await self._finish_reply(reply, "failed")
            return
        await self._respond(reply, Turn(role="user", audio_token_ids=token_ids))

    async def _discard_speculation(self, reason: str) -> None:
        spec, self.speculation = self.speculation, None
        if spec is None or spec.task is None:
            return
        self._drop(spec.response_id)
        spec.task.cancel()
        await asyncio.gather(spec.task, return_exceptions=True)
        self.state.metrics.speculations.labels(outcome="discarded").inc()
        log.info("speculation discarded session=%s reason=%s", self.session_id, reason)

    # -- committing user input ---------------------------------------------------------------

    async def _commit_audio(self) -> None:
        """End of the user's turn (VAD silence, manual commit or the length cap)."""
        if not self.audio.capturing and self.settings.turn_detection == "server_vad":
            return
        self._user_speaking = False
        end_of_speech = time.monotonic()
        try:
            token_ids, _ = await self.audio.end_utterance()
        except grpc.aio.AioRpcError as exc:
            await self._service_error(exc, "tokenizer")
            return
        self.state.metrics.tokenizer_tail.observe(time.monotonic() - end_of_speech)
        if self.settings.turn_detection != "server_vad":
            self.audio.start_utterance(None, stream_tokens=False)  # push-to-talk keeps capturing
        item_id, self._speech_item_id = self._speech_item_id or uuid.uuid4().hex, None
        if not token_ids:
            await self.send(
                error_event(ErrorCode.EMPTY_AUDIO, "the committed audio holds no speech")
            )
            return
        turn = Turn(role="user", audio_token_ids=token_ids, id=item_id)
        previous = self._last_item_id()
        await self._store_turn(turn)
        await self.send(
            {"type": "input_audio_buffer.committed", "item_id": turn.id,
             "previous_item_id": previous}
        )  # fmt: skip
        await self._item_created(turn, previous)
        if self.settings.transcribe:
            self._spawn(self._transcribe(turn))
        if self.settings.turn_detection == "server_vad" and self.settings.create_response:
            if self.speculation is not None:
                await self._commit_speculation(end_of_speech)
            elif self.reply is None:  # interrupt_response false: the reply in progress goes on
                await self._start_reply(end_of_speech, ResponseOptions())

    async def _create_item(self, item: ConversationItem) -> None:
        """conversation.item.create: a user text or audio message, or an assistant message
        (text) that primes the context."""
        audio_parts = [p for p in item.content if isinstance(p, ContentAudio)]
        if audio_parts:
            if item.role != "user" or len(audio_parts) != len(item.content):
                raise ProtocolError(
                    ErrorCode.INVALID_EVENT, "input_audio: one user message of audio parts only"
                )
            await self._create_audio_item(audio_parts)
            return
        text = "".join(getattr(part, "text", "") for part in item.content).strip()
        if not text:
            raise ProtocolError(ErrorCode.EMPTY_TEXT, "the item has no text")
        limit = self.state.settings.limits.max_text_chars
        if len(text) > limit:
            raise ProtocolError(ErrorCode.TEXT_TOO_LONG, f"text is over {limit} characters")
        turn = Turn(role=item.role, text=text)
        previous = self._last_item_id()
        await self._store_turn(turn)
        await self._item_created(turn, previous)

    async def _create_audio_item(self, parts: list[ContentAudio]) -> None:
        samples = []
        for part in parts:
            try:
                data = base64.b64decode(part.audio, validate=True)
                samples.append(decode_input(data, self.settings.input_encoding))
            except (binascii.Error, ValueError) as exc:
                raise ProtocolError(ErrorCode.INVALID_AUDIO, "audio is not base64") from exc
            except AudioError as exc:
                raise ProtocolError(exc.code, str(exc)) from exc
        audio = resample(np.concatenate(samples), self.settings.input_sample_rate_hz, 16_000)
        try:
            token_ids = await self.audio.tokenize(audio)
        except grpc.aio.AioRpcError as exc:
            await self._service_error(exc, "tokenizer")
            return
        if not token_ids:
            raise ProtocolError(ErrorCode.EMPTY_AUDIO, "the item's audio holds no speech")
        turn = Turn(role="user", audio_token_ids=token_ids)
        previous = self._last_item_id()
        await self._store_turn(turn)
        await self._item_created(turn, previous)
        if self.settings.transcribe:
            self._spawn(self._transcribe(turn))

    def _last_item_id(self) -> str | None:
        return self.turns[-1].id if self.turns else None

    async def _item_created(self, turn: Turn, previous: str | None) -> None:
        await self.send(
            {"type": "conversation.item.created", "previous_item_id": previous,
             "item": self._item(turn)}
        )  # fmt: skip

    def _item(self, turn: Turn) -> dict[str, Any]:
        content: dict[str, Any] = {"type": "input_text", "text": turn.text}
        if turn.role == "assistant":
            content = openai_events.assistant_content(self.events.dialect, False, turn.text)
        elif turn.audio_token_ids:
            content = {
                "type": "input_audio",
                "transcript": turn.transcript,
                "audio_tokens": len(turn.audio_token_ids),  # extension
            }
        return {"id": turn.id, "object": "realtime.item", "type": "message", "role": turn.role,
                "status": "completed", "content": [content]}  # fmt: skip

    async def _store_turn(self, turn: Turn) -> None:
        """Keep the turn in memory (the live call goes on) and in Redis (for resumes)."""
        self.turns.append(turn)
        if turn.role == "user":
            self._trace.item(turn.id)
        try:
            await self._persist(turn)
        except (RedisError, OSError) as exc:
            await self._store_unavailable(exc)

    async def _persist(self, turn: Turn) -> None:
        try:
            await self.state.store.append_turn(self.session_id, turn)
        except SessionNotFound:  # expired mid-session: start it again with what we have
            await self.state.store.create(self.settings.to_dict(), self.session_id)
            for stored in self.turns:  # append is idempotent by turn id
                await self.state.store.append_turn(self.session_id, stored)

    async def _store_unavailable(self, exc: BaseException) -> None:
        """Redis is down: the conversation continues from memory; the client is told."""
        log.warning("session store unavailable session=%s: %s", self.session_id, exc)
        self.state.metrics.record_error(ErrorCode.UNAVAILABLE)
        message = "session store unavailable: this turn may not be saved for a later resume"
        await self.send(error_event(ErrorCode.UNAVAILABLE, message))

    # -- replies ---------------------------------------------------------------------------

    def _new_reply(
        self, end_of_speech: float, options: ResponseOptions, *, speculative: bool
    ) -> Reply:
        response_id = f"resp_{uuid.uuid4().hex[:20]}"
        limits = self.state.settings.limits
        modalities = options.output_modalities
        audio = self.settings.audio_output if modalities is None else "audio" in modalities
        sink = ResponseSink(
            self.send,
            response_id,
            output_rate_hz=self.settings.output_sample_rate_hz,
            binary_audio=self.settings.output_transport == "binary",
            lead_s=limits.output_lead_ms / 1000,
            held=speculative,
            progress=ResponseProgress(),
            item_id=uuid.uuid4().hex,
            text_type=self.events.transcript_delta_type(audio),
            encoding=self.settings.output_encoding,
        )
        reply = Reply(response_id, sink, speculative, options)
        reply.audio = audio
        reply.end_of_speech = end_of_speech
        self._trace.response(response_id, speculative=speculative)
        return reply

    async def _start_reply(self, end_of_speech: float, options: ResponseOptions) -> None:
        if self._winding_down:  # the session is closing (session_too_long): no new reply
            return
        if self.reply is not None:
            await self.send(
                error_event(ErrorCode.INVALID_EVENT, "a response is already in progress")
            )
            return
        if not self.turns or self.turns[-1].role != "user":
            await self.send(error_event(ErrorCode.INVALID_EVENT, "nothing to respond to"))
            return
        reply = self._new_reply(end_of_speech, options, speculative=False)
        self.reply = reply
        reply.task = asyncio.create_task(self._respond(reply, None))

    async def _commit_speculation(self, end_of_speech: float) -> None:
        spec, self.speculation = self.speculation, None
        assert spec is not None and spec.task is not None
        # a held reply ends only once released, so a finished one was shed, failed or had no
        # input ids: the stored turn gets an ordinary reply
        if spec.task.done():
            if not spec.task.cancelled():
                spec.task.exception()  # retrieved, so asyncio does not warn about it
            await self._start_reply(end_of_speech, ResponseOptions())
            return
        spec.end_of_speech = end_of_speech
        spec.speculative = True
        self.reply = spec
        self.state.metrics.speculations.labels(outcome="committed").inc()
        await spec.sink.release()

    async def _respond(self, reply: Reply, speculative_turn: Turn | None) -> None:
        """Run one response; for a speculation, ``speculative_turn`` is its (unstored) input."""
        history = list(self.turns)
        if speculative_turn is not None:
            history.append(speculative_turn)
        options, s = reply.options, self.settings
        system_prompt = s.system_prompt if options.instructions is None else options.instructions
        messages, stats = build_messages(system_prompt, history, s.audio_turns_kept)
        self.state.metrics.context_audio_tokens_replaced.inc(stats.audio_tokens_replaced)
        self.state.metrics.context_transcript_tokens.inc(stats.transcript_tokens)
        parts = [part for message in messages for part in message.content]
        reply.input_audio_tokens = sum(len(p.audio.token_ids) for p in parts if p.HasField("audio"))
        voice = s.voice
        if options.voice:
            voice = resolve_voice(options.voice, self.state.settings.voice_aliases)
        turn = self.state.settings.turn
        plan = ResponsePlan(
            response_id=reply.response_id,
            pipeline=s.pipeline,
            messages=messages,
            voice=voice,
            temperature=s.temperature if options.temperature is None else options.temperature,
            max_tokens=options.max_output_tokens or s.max_reply_tokens,
            max_prompt_tokens=turn.context_token_budget,
            rpc_timeout_s=self.state.settings.rpc_timeout_s,
            seed=turn.seed,
            audio=reply.audio,
            speed=s.speed,
        )
        await self._announce_reply(reply)
        status, error = "completed", None
        try:
            await self._run_with_shedding(reply, plan)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            status, error = "failed", exc
        except E2eUnavailable as exc:
            status = "failed"
            await reply.sink.event(error_event(exc.code, str(exc)))
        except Exception:  # a bug: fail this reply loudly, keep the session
            log.exception("reply failed session=%s response=%s", self.session_id, reply.response_id)
            status = "failed"
            self.state.metrics.record_error(ErrorCode.INTERNAL_ERROR)
            await reply.sink.event(error_event(ErrorCode.INTERNAL_ERROR, "internal error"))
        if reply.speculative and reply.sink.held:
            await reply.sink.released.wait()  # a held reply finishes only once committed
        await reply.sink.drained()  # response.done after the held audio
        if error is not None:
            await self._service_error(error, reply.progress.failed_service or "llm")
        await self._finish_reply(reply, status)

    async def _run_with_shedding(self, reply: Reply, plan: ResponsePlan) -> None:
        """Committed turns come first: a real reply that finds the LLM full cancels a
        speculation (of any session) and tries again, before it waits or fails."""
        shed = 0
        for attempt in range(SHED_RETRIES + 1):
            try:
                await ResponseRunner(self.state.clients, plan, reply.sink).run()
                return
            except grpc.aio.AioRpcError as exc:
                overloaded = exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                untouched = not reply.progress.marks  # nothing produced yet: safe to redo
                if reply.speculative or not (overloaded and untouched) or attempt == SHED_RETRIES:
                    raise
                if self.state.speculation.shed_one():
                    shed += 1
                    self.state.metrics.speculations.labels(outcome="shed").inc()
                elif not shed:  # nothing to shed: the LLM is simply full
                    raise
                # the shed request leaves the LLM at its next engine step
                await asyncio.sleep(SHED_BACKOFF_S * (attempt + 1))

    async def _announce_reply(self, reply: Reply) -> None:
        """response.created, then the assistant item and its content part (OpenAI's order)."""
        sink, ids = reply.sink, {"response_id": reply.response_id, "output_index": 0}
        item = openai_events.assistant_item(
            self.events.dialect, reply.item_id, "in_progress", audio=reply.audio
        )
        part = openai_events.content_part(reply.audio)
        await sink.event(
            {"type": "response.created", "response": self._response_object(reply, "in_progress")}
        )
        await sink.event({"type": "response.output_item.added", **ids, "item": item})
        await sink.event(
            {"type": "conversation.item.created", "previous_item_id": self._last_item_id(),
             "item": item}
        )  # fmt: skip
        await sink.event(
            {"type": "response.content_part.added", **ids, "item_id": reply.item_id,
             "content_index": 0, "part": part}
        )  # fmt: skip

    def _response_object(self, reply: Reply, status: str) -> dict[str, Any]:
        response: dict[str, Any] = {
            "id": reply.response_id,
            "object": "realtime.response",
            "status": status,
            **self.events.modalities(reply.audio),
            "output": [],
        }
        if reply.options.metadata is not None:
            response["metadata"] = reply.options.metadata
        return response

    async def _finish_reply(self, reply: Reply, status: str, interrupted: bool = False) -> None:
        """Store the assistant turn (what was sent), close its item, report response.done."""
        progress = reply.progress
        self.audio_seconds += progress.audio_seconds_sent
        interrupted = interrupted or status == "failed"  # store only what was spoken
        text = (
            progress.text_sent if interrupted else (progress.text_sent or progress.text_generated)
        )
        if text or (interrupted and status != "failed"):
            turn = Turn(role="assistant", text=text, interrupted=interrupted, id=reply.item_id)
            await self._store_turn(turn)
        timings = progress.timings_ms(reply.end_of_speech)
        self._observe(reply, timings)
        item = await self._close_item(reply, status, text)
        response = self._response_object(reply, status)
        response |= {
            "output": [item],
            "usage": self._usage(reply),
            "status_details": openai_events.status_details(status, reply.cancel_reason, None),
            # the project's extensions
            "speculative": reply.speculative,
            "pipeline": self.settings.pipeline,
            "text": text,
            "audio_seconds": round(progress.audio_seconds_sent, 3),
            "audio_tokens": progress.audio_token_ids,
            "timings_ms": timings,
        }
        self.state.metrics.responses.labels(status=status).inc()
        self._trace.finished(reply.response_id, status)
        if self.reply is reply:
            self.reply = None
        # after the reply's audio: the writer keeps the order
        await self.send({"type": "response.done", "response": response})

    async def _close_item(self, reply: Reply, status: str, text: str) -> dict[str, Any]:
        """The *.done events of the reply's content part and item; returns the item."""
        ids = {"response_id": reply.response_id, "item_id": reply.item_id, "output_index": 0,
               "content_index": 0}  # fmt: skip
        if reply.audio:
            await self.send({"type": "response.audio.done", **ids})
            await self.send({"type": "response.audio_transcript.done", **ids, "transcript": text})
        else:
            await self.send({"type": "response.text.done", **ids, "text": text})
        part = openai_events.content_part(reply.audio, text)
        await self.send({"type": "response.content_part.done", **ids, "part": part})
        item_status = "completed" if status == "completed" else "incomplete"
        item = openai_events.assistant_item(
            self.events.dialect, reply.item_id, item_status, reply.audio, text
        )
        await self.send(
            {"type": "response.output_item.done", "response_id": reply.response_id,
             "output_index": 0, "item": item}
        )  # fmt: skip
        return item

    @staticmethod
    def _usage(reply: Reply) -> dict[str, Any]:
        p = reply.progress
        input_audio = min(reply.input_audio_tokens, p.prompt_tokens or reply.input_audio_tokens)
        return openai_events.usage(
            input_text=max(0, p.prompt_tokens - input_audio),
            input_audio=input_audio,
            output_text=max(0, p.completion_tokens - p.audio_token_ids),
            output_audio=p.tts_audio_tokens + p.audio_token_ids,
        )

    def _observe(self, reply: Reply, timings: dict[str, float]) -> None:
        m = self.state.metrics
        if "first_audio" in timings:
            first_audio = max(0.0, timings["first_audio"] / 1000)
            m.time_to_first_audio.labels(pipeline=self.settings.pipeline).observe(first_audio)
        for stage, histogram in (
            ("llm_first_token", m.llm_first_token),
            ("tts_first_chunk", m.tts_first_chunk),
        ):
            if stage in timings:
                histogram.observe(max(0.0, timings[stage] / 1000))
        if reply.speculative and "first_audio" in timings:
            m.speculative_first_audio.observe(max(0.0, timings["first_audio"] / 1000))

    async def _interrupt_reply(self, reason: str) -> None:
        reply, self.reply = self.reply, None
        if reply is None or reply.task is None:
            return
        self._drop(reply.response_id)
        reply.task.cancel()
        reply.sink.stop()
        await self._await_cancelled(reply.task)
        log.info("reply interrupted session=%s reason=%s", self.session_id, reason)
        await self._finish_reply(reply, "cancelled", interrupted=True)

    async def _await_cancelled(self, task: asyncio.Task[None]) -> None:
        """Wait (bounded) for a cancelled reply to unwind: turn detection must never stall."""
        done, _ = await asyncio.wait([task], timeout=CANCEL_WAIT_S)
        if done:
            return
        stack = "; ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in task.get_stack())
        log.warning(
            "reply still unwinding %.1f s after cancel session=%s at %s",
            CANCEL_WAIT_S, self.session_id, stack,
        )  # fmt: skip
        self._background.add(task)  # cancelled again at session end if still running
        task.add_done_callback(self._background.discard)

    async def _service_error(self, exc: grpc.aio.AioRpcError, service: str) -> None:
        code = code_from_rpc_error(exc, service)
        self.state.metrics.record_error(code)
        await self.send(error_event(code, f"{service}: {exc.details() or exc.code().name}"))

    # -- transcription (off the critical path) ----------------------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _transcribe(self, turn: Turn) -> None:
        request = llm_pb2.GenerateRequest(
            request_id=f"asr_{turn.id}",
            chat=llm_pb2.ChatPrompt(messages=transcription_messages(turn.audio_token_ids)),
            sampling=llm_pb2.SamplingParams(temperature=0.0, max_tokens=256),
        )
        text, completion_tokens = "", 0
        try:
            async for reply in self.state.clients.llm.Generate(
                request, timeout=self.state.settings.rpc_timeout_s
            ):
                text += reply.text
                completion_tokens = reply.completion_tokens or completion_tokens
        except grpc.aio.AioRpcError as exc:
            self.state.metrics.transcriptions.labels(outcome="failed").inc()
            log.info("transcription failed session=%s: %s", self.session_id, exc.code().name)
            return
        turn.transcript = text.strip()
        turn.transcript_tokens = completion_tokens
        try:
            await self.state.store.update_turn(self.session_id, turn)
        except (RedisError, OSError) as exc:
            await self._store_unavailable(exc)
        self.state.metrics.transcriptions.labels(outcome="completed").inc()
        audio_tokens = len(turn.audio_token_ids)
        await self.send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": turn.id,
                "content_index": 0,
                "transcript": turn.transcript,
                "usage": {
                    "type": "tokens",
                    "input_tokens": audio_tokens,
                    "output_tokens": completion_tokens,
                    "total_tokens": audio_tokens + completion_tokens,
                    "input_token_details": {"audio_tokens": audio_tokens, "text_tokens": 0},
                },
            }
        )
