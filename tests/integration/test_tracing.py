"""Traces on the whole in-process stack: each spoken turn is one trace holding the work of all
five components (VAD speech segment, the controller's turn and calls, tokenizer, LLM, TTS),
joined through gRPC metadata (and the VAD event's traceparent); in-memory span exporter."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.cli.realtime_client import RealtimeClient
from services.common.audio import decode_audio_file
from services.models.tiny import ASSETS
from tests.helpers.redis import RedisServer
from tests.helpers.stack import running_stack

pytestmark = pytest.mark.integration
QUESTION, QUESTION_RATE = decode_audio_file(ASSETS / "demo_question.wav")
COMPONENTS = {f"stepaudio-{c}" for c in ("vad", "tokenizer", "llm", "tts", "controller")}
SERVER_SPANS = {
    "TokenizerService/TokenizeStream",
    "LlmService/Generate",
    "TtsService/Synthesize",
}


def component(span: ReadableSpan) -> str:
    return str(span.resource.attributes["service.name"])


def by_trace(spans: tuple[ReadableSpan, ...]) -> dict[int, list[ReadableSpan]]:
    traces: dict[int, list[ReadableSpan]] = defaultdict(list)
    for span in spans:
        assert span.context is not None
        traces[span.context.trace_id].append(span)
    return traces


def complete(trace: list[ReadableSpan]) -> bool:
    names = {span.name for span in trace}
    return {component(s) for s in trace} >= COMPONENTS and names >= SERVER_SPANS | {"turn"}


async def wait_for_turn_traces(
    exporter: InMemorySpanExporter, count: int
) -> list[list[ReadableSpan]]:
    """The traces holding a ``turn`` span, once ``count`` of them are complete (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        traces = [
            t for t in by_trace(exporter.get_finished_spans()).values()
            if any(s.name == "turn" for s in t)
        ]  # fmt: skip
        if len(traces) >= count and all(complete(t) for t in traces):
            return traces
        if loop.time() > deadline:
            summary = [sorted({f"{component(s)}:{s.name}" for s in t}) for t in traces]
            raise AssertionError(f"turn traces incomplete after 30 s: {summary}")
        await asyncio.sleep(0.1)


async def test_one_trace_per_turn_holds_all_five_components(
    tiny_pack: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    async with running_stack(
        tiny_pack, redis_server.url, tmp_path, controller={"turn": {"seed": 7}},
        span_exporter=exporter,
    ) as stack:  # fmt: skip
        response_ids = []
        async with RealtimeClient(stack.url) as client:
            await client.configure(speculative=False, transcribe=False)
            for _ in range(2):
                result = await client.speak_and_wait(QUESTION, QUESTION_RATE)
                assert result.done["status"] == "completed"
                response_ids.append(result.done["id"])
            session_id = result.session_id
        traces = await wait_for_turn_traces(exporter, 2)

    assert len(traces) == 2  # one trace per turn, not one per session
    turns = {}
    for trace in traces:
        (turn,) = [s for s in trace if s.name == "turn"]
        assert turn.attributes is not None
        assert turn.attributes["stepaudio.session_id"] == session_id
        assert str(turn.attributes["stepaudio.turn_id"]).strip()
        assert turn.attributes["stepaudio.response_status"] == "completed"
        turns[turn.attributes["stepaudio.response_id"]] = (turn, trace)
        spans = {s.context.span_id: s for s in trace if s.context is not None}
        # the trace starts where the VAD heard speech; the controller's turn continues it
        (speech,) = [s for s in trace if s.name == "vad.speech"]
        assert component(speech) == "stepaudio-vad" and speech.parent is None
        assert turn.parent is not None and turn.parent.span_id == speech.context.span_id
        # each service's server span is the child of the controller's client span of its call,
        # itself under the turn: the context crossed the process boundary in gRPC metadata
        for server in [s for s in trace if s.kind == SpanKind.SERVER]:
            assert server.parent is not None and server.parent.is_remote, server.name
            client = spans[server.parent.span_id]
            assert client.kind == SpanKind.CLIENT and component(client) == "stepaudio-controller"
            assert client.name == server.name
            assert client.parent is not None and client.parent.span_id == turn.context.span_id
        generate = [
            s for s in trace if s.name == "LlmService/Generate" and s.kind == SpanKind.SERVER
        ]
        assert [s.attributes["stepaudio.request_id"] for s in generate] == [
            turn.attributes["stepaudio.response_id"]
        ]
    assert sorted(turns) == sorted(response_ids)
    # the session-long VAD stream (reopened by session.update) is a trace of its own, linked
    # from each speech segment
    streams = [s for s in exporter.get_finished_spans() if s.name == "VadService/DetectSpeech"]
    turn_traces = {turn.context.trace_id for turn, _ in turns.values()}
    assert streams and not {s.context.trace_id for s in streams} & turn_traces
    for _, trace in turns.values():
        (speech,) = [s for s in trace if s.name == "vad.speech"]
        (link,) = speech.links
        assert link.context.span_id in {s.context.span_id for s in streams}
