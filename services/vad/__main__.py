"""``python -m services.vad``: settings from VAD_* env vars, then serve until SIGTERM."""

import asyncio

from services.common.grpc_server import run_service
from services.common.logging import setup_logging
from services.vad.config import VadSettings
from services.vad.server import VadService


def main() -> None:
    settings = VadSettings()
    setup_logging(settings.log_level, settings.log_format)
    asyncio.run(run_service(VadService(settings), settings))


if __name__ == "__main__":
    main()
