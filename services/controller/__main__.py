"""``python -m services.controller``: settings from CONTROLLER_* env vars, then uvicorn."""

import uvicorn

from services.common.logging import setup_logging
from services.controller.app import create_app
from services.controller.config import ControllerSettings


def main() -> None:
    settings = ControllerSettings()
    setup_logging(settings.log_level, settings.log_format)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        ws_max_size=settings.limits.ws_max_message_bytes,
        ws_per_message_deflate=False,  # PCM does not compress; deflate only costs CPU
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
