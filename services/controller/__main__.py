"""``python -m services.controller``: settings from CONTROLLER_* env vars, then uvicorn."""

import uvicorn

from services.common.logging import setup_logging
from services.controller.app import create_app
from services.controller.config import ControllerSettings
from services.controller.http_server import uvicorn_config


def main() -> None:
    settings = ControllerSettings()
    setup_logging(settings.log_level, settings.log_format)
    uvicorn.Server(uvicorn_config(create_app(settings), settings)).run()


if __name__ == "__main__":
    main()
