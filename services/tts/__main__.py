"""``python -m services.tts``: settings from TTS_* env vars, then serve until SIGTERM."""

import asyncio

from services.common.grpc_server import run_service
from services.common.logging import setup_logging
from services.tts.config import TtsSettings
from services.tts.server import TtsService


def main() -> None:
    settings = TtsSettings()
    setup_logging(settings.log_level, settings.log_format)
    asyncio.run(run_service(TtsService(settings), settings))


if __name__ == "__main__":
    main()
