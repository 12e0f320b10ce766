"""Log format shared by the services: one line per record, text or JSON, with the trace id.

Text: time, level, logger, message (``key=value`` style), then ``trace_id=… span_id=…`` when
the record was logged inside a span, so one slow turn's lines can be found by its trace id.
JSON (``<PREFIX>LOG_FORMAT=json``): one object per line with the same fields, for log
pipelines. Messages put variable data as ``key=value`` pairs (``"stream closed session=3"``).

A small formatter of our own rather than python-json-logger or OpenTelemetry's logging
instrumentation: the latter replaces the process-wide log record factory, and the former
would be a dependency for the ten lines of ``JsonFormatter``.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

from services.common.tracing import trace_ids

LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


class TraceIdFilter(logging.Filter):
    """Adds ``trace_id``/``span_id`` (hex, or empty) of the span current when logging."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_id, record.span_id = trace_ids()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(LOG_FORMAT, DATE_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        trace_id = getattr(record, "trace_id", "")
        if not trace_id:
            return line
        head, newline, rest = line.partition("\n")  # keep a traceback below the ids
        span_id = getattr(record, "span_id", "")
        return f"{head} trace_id={trace_id} span_id={span_id}{newline}{rest}"


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(datefmt=DATE_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": f"{self.formatTime(record, DATE_FORMAT)}.{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "trace_id", ""):
            entry["trace_id"], entry["span_id"] = record.trace_id, record.span_id  # type: ignore[attr-defined]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _ServiceHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marker type, so calling setup_logging again replaces our handler, not others'."""


def setup_logging(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Configure the root logger once per process (idempotent); ``fmt``: text or json."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ServiceHandler)]:
        root.removeHandler(handler)
    handler = _ServiceHandler(stream or sys.stderr)
    handler.addFilter(TraceIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # grpc's C core logs through absl, not here; keep Python-side chatter down.
    logging.getLogger("grpc").setLevel(max(logging.WARNING, root.level))
