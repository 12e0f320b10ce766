"""``python -m services.tokenizer``: TOKENIZER_* settings, then serve until SIGTERM."""

import asyncio

from services.common.grpc_server import run_service
from services.common.logging import setup_logging
from services.tokenizer.config import TokenizerSettings
from services.tokenizer.server import TokenizerService


def main() -> None:
    settings = TokenizerSettings()
    setup_logging(settings.log_level, settings.log_format)
    asyncio.run(run_service(TokenizerService(settings), settings))


if __name__ == "__main__":
    main()
