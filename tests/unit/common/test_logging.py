"""Log lines carry the trace id of the span they were written in (text and JSON formats)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry import trace

from services.common.logging import setup_logging
from services.common.tracing import TracingSettings, get_tracer, tracer_provider


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_level, saved = root.level, list(root.handlers)
    out = io.StringIO()
    yield out
    for handler in list(root.handlers):
        if handler not in saved:
            root.removeHandler(handler)
    root.setLevel(saved_level)


def test_json_lines_carry_the_trace_id(stream: io.StringIO) -> None:
    setup_logging("INFO", "json", stream)
    tracer = get_tracer(tracer_provider("test", TracingSettings()))
    log = logging.getLogger("services.test")
    log.info("outside any span")
    with tracer.start_as_current_span("turn") as span:
        log.info("reply started session=%s", "abc")
    outside, inside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "trace_id" not in outside and outside["message"] == "outside any span"
    context = span.get_span_context()
    assert inside["trace_id"] == trace.format_trace_id(context.trace_id)
    assert inside["span_id"] == trace.format_span_id(context.span_id)
    assert inside["message"] == "reply started session=abc"
    assert inside["level"] == "INFO" and inside["logger"] == "services.test"


def test_text_lines_end_with_the_trace_id(stream: io.StringIO) -> None:
    setup_logging("INFO", "text", stream)
    tracer = get_tracer(tracer_provider("test", TracingSettings()))
    with tracer.start_as_current_span("turn") as span:
        logging.getLogger("services.test").warning("slow turn")
    line = stream.getvalue().strip()
    trace_id = trace.format_trace_id(span.get_span_context().trace_id)
    assert " WARNING services.test slow turn trace_id=" + trace_id in line


def test_unsampled_turns_still_have_ids_for_the_logs(stream: io.StringIO) -> None:
    setup_logging("INFO", "json", stream)
    tracer = get_tracer(tracer_provider("test", TracingSettings(sample_ratio=0.0)))
    with tracer.start_as_current_span("turn") as span:
        logging.getLogger("services.test").info("x")
    assert not span.is_recording()
    assert json.loads(stream.getvalue())["trace_id"] == trace.format_trace_id(
        span.get_span_context().trace_id
    )
