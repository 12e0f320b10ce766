"""One-line log format shared by the services: time, level, logger, message (key=value style).

Messages put variable data as ``key=value`` pairs (``"stream closed session=3 frames=120"``) so
log lines stay greppable without a JSON pipeline.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


class _ServiceHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marker type, so calling setup_logging again replaces our handler, not others'."""


def setup_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Configure the root logger once per process (idempotent)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ServiceHandler)]:
        root.removeHandler(handler)
    handler = _ServiceHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # grpc's C core logs through absl, not here; keep Python-side chatter down.
    logging.getLogger("grpc").setLevel(max(logging.WARNING, root.level))
