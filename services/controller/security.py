"""Wiring of the security layer into the FastAPI app (one call from create_app)."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from services.controller.api import client_secrets
from services.controller.auth import KeyRing
from services.controller.config import ControllerSettings
from services.controller.middleware import (
    BodyLimitMiddleware,
    SecurityMiddleware,
    allowed_origins,
    install_error_shape,
)

log = logging.getLogger(__name__)


def install_security(app: FastAPI, settings: ControllerSettings) -> None:
    keyring = KeyRing.load(settings.auth)  # a bad key file stops the start with its reason
    if not settings.auth.enabled:
        log.warning(
            "AUTHENTICATION IS OFF (CONTROLLER_AUTH__ENABLED=false): anyone who reaches "
            "%s:%d can use this controller; only for a loopback demo",
            settings.host,
            settings.port,
        )
    elif not keyring.entries:
        log.error(
            "authentication is on but no API keys are configured (CONTROLLER_AUTH__KEYS or "
            "CONTROLLER_AUTH__KEYS_FILE): every API request will be refused with 401"
        )
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    app.add_middleware(SecurityMiddleware, settings=settings, keyring=keyring)
    origins = allowed_origins(settings)
    if origins:  # never "*": browsers send keys only to origins listed here
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["authorization", "content-type"],
            max_age=600,
        )
    install_error_shape(app)
    app.include_router(client_secrets.router)
