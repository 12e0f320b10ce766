"""``python -m services.llm``: settings from LLM_* env vars, then serve until SIGTERM."""

import asyncio

from services.common.grpc_server import run_service
from services.common.logging import setup_logging
from services.llm.config import LlmSettings
from services.llm.server import LlmService


def main() -> None:
    settings = LlmSettings()
    setup_logging(settings.log_level, settings.log_format)
    asyncio.run(run_service(LlmService(settings), settings))


if __name__ == "__main__":
    main()
