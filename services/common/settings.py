"""Settings shared by every gRPC service, read from the environment with pydantic-settings.

Each service subclasses ``BaseServiceSettings`` with its own ``env_prefix`` (``VAD_``,
``TOKENIZER_``, ``LLM_``, ``TTS_``); nested models use ``__`` (``VAD_KEEPALIVE__TIME_MS``).
Settings are built once in ``__main__`` and passed down; nothing here is a module-level singleton.

``extra="forbid"`` alone does not catch a typo'd top-level variable (pydantic-settings only reads
the variables it knows), so ``UnknownEnvVarSource`` hands every unknown ``<PREFIX>*`` variable to
validation, where ``extra="forbid"`` rejects it with the usual ValidationError.
"""

from __future__ import annotations

import os
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from services.common.tracing import TracingSettings

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["text", "json"]
MiB = 1024 * 1024


class KeepaliveSettings(BaseModel):
    """HTTP/2 keepalive, so dead peers are found in seconds rather than the 2 h default."""

    model_config = ConfigDict(extra="forbid")

    time_ms: int = Field(
        15_000, ge=1_000, le=3_600_000, description="Interval between keepalive pings (ms)."
    )
    timeout_ms: int = Field(
        5_000, ge=500, le=600_000, description="Wait for a ping ack before closing (ms)."
    )
    min_ping_interval_ms: int = Field(
        10_000,
        ge=1_000,
        le=3_600_000,
        description="Server: shortest accepted client ping interval without data (ms); "
        "keep it <= clients' time_ms or they get GOAWAY too_many_pings.",
    )


class ServerTlsSettings(BaseModel):
    """TLS on the gRPC port (off unless a certificate is given); mTLS with a client CA."""

    model_config = ConfigDict(extra="forbid")

    cert_file: str = Field("", description="PEM certificate chain; with key_file the port is TLS.")
    key_file: str = Field("", description="PEM private key of cert_file.")
    client_ca_file: str = Field(
        "", description="PEM CA of client certificates; set = mTLS (clients must present one)."
    )


class ClientTlsSettings(BaseModel):
    """TLS to gRPC services (off unless a CA is given); a client certificate for mTLS."""

    model_config = ConfigDict(extra="forbid")

    ca_file: str = Field("", description="PEM CA of the services' certificates; set = TLS.")
    cert_file: str = Field("", description="PEM client certificate (mTLS).")
    key_file: str = Field("", description="PEM private key of cert_file.")
    server_name: str = Field(
        "", description="Name expected in the services' certificates (default: target host)."
    )


class GrpcClientSettings(BaseModel):
    """Limits for an outgoing channel; nest it in a caller's settings (one per target)."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field("127.0.0.1:50051", min_length=1, description="host:port of the service.")
    max_message_bytes: int = Field(
        4 * MiB, ge=1024, le=64 * MiB, description="Send/receive message size limit (bytes)."
    )
    keepalive_time_ms: int = Field(
        15_000, ge=1_000, le=3_600_000, description="Client keepalive ping interval (ms)."
    )
    keepalive_timeout_ms: int = Field(
        5_000, ge=500, le=600_000, description="Wait for a ping ack before closing (ms)."
    )
    max_reconnect_backoff_ms: int = Field(
        5_000,
        ge=100,
        le=120_000,
        description="Longest wait between reconnect attempts to a service that is down (ms; "
        "gRPC's default is 120 s, which would keep a restarted service unused for minutes).",
    )
    tls: ClientTlsSettings = Field(default_factory=ClientTlsSettings, description="TLS.")


class UnknownEnvVarSource(PydanticBaseSettingsSource):
    """Report ``<prefix>*`` environment variables that match no field, as extra input."""

    def get_field_value(self, _field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ does the work

    def __call__(self) -> dict[str, Any]:
        prefix = str(self.config.get("env_prefix", "")).upper()
        if not prefix:
            return {}
        known = {name.upper() for name in self.settings_cls.model_fields}
        unknown: dict[str, Any] = {}
        for key, value in os.environ.items():
            upper = key.upper()
            if not upper.startswith(prefix):
                continue
            head = upper[len(prefix) :].split("__", 1)[0]
            if head not in known:
                unknown[upper[len(prefix) :].lower()] = value
        return unknown


class StrictEnvSettings(BaseSettings):
    """Settings whose unknown ``<prefix>*`` environment variables are errors, not ignored."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            UnknownEnvVarSource(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )


class BaseServiceSettings(StrictEnvSettings):
    """Host/ports, logging, gRPC limits and drain timings common to every service."""

    model_config = SettingsConfigDict(extra="forbid", env_nested_delimiter="__")

    host: str = Field("127.0.0.1", min_length=1, description="Interface to bind gRPC and metrics.")
    port: int = Field(50050, ge=0, le=65535, description="gRPC port; 0 picks a free port.")
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Prometheus /metrics HTTP port; 0 turns it off."
    )
    log_level: LogLevel = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: LogFormat = Field(
        "text", description="text (one line, key=value) or json (one object per line)."
    )
    tracing: TracingSettings = Field(
        default_factory=TracingSettings, description="OpenTelemetry trace export."
    )
    grpc_max_message_bytes: int = Field(
        4 * MiB, ge=1024, le=64 * MiB, description="gRPC send/receive message size limit (bytes)."
    )
    grpc_max_concurrent_rpcs: int = Field(
        256, ge=1, le=100_000, description="In-flight RPC cap (health included)."
    )
    keepalive: KeepaliveSettings = Field(
        default_factory=KeepaliveSettings, description="HTTP/2 keepalive."
    )
    tls: ServerTlsSettings = Field(default_factory=ServerTlsSettings, description="gRPC TLS.")
    shutdown_grace_s: float = Field(
        10.0, ge=0, le=600, description="On stop, in-flight RPCs get this long to finish (s)."
    )
    drain_delay_s: float = Field(
        2.0, ge=0, le=120, description="NOT_SERVING this long before the server stops (s)."
    )
    engine_queue_size: int = Field(
        256, ge=1, le=100_000, description="Bound of the engine work queue (items)."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


# ----- env-var table (the README lists every variable; a test compares them) -----


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(str(arg) for arg in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " \\| ".join(_type_name(arg) for arg in get_args(annotation))
    if annotation is type(None):
        return "none"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return ""
    return "" if field.default is None else str(field.default)


def env_vars(settings_cls: type[BaseSettings]) -> list[tuple[str, str, str, str]]:
    """(NAME, type, default, description) for every variable, nested models flattened."""
    prefix = str(settings_cls.model_config.get("env_prefix", "")).upper()
    return _model_rows(settings_cls, prefix, "")


def _model_rows(model: type[BaseModel], prefix: str, sep: str) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    for name, field in model.model_fields.items():
        env_name = f"{prefix}{sep}{name.upper()}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(_model_rows(annotation, env_name, "__"))
            continue
        rows.append(
            (env_name, _type_name(annotation), _default_text(field), field.description or "")
        )
    return rows


def env_var_table(settings_cls: type[BaseSettings]) -> str:
    """Markdown table of a settings class's environment variables."""
    lines = ["| Variable | Type | Default | Description |", "|---|---|---|---|"]
    for name, type_name, default, description in env_vars(settings_cls):
        default_cell = f"`{default}`" if default else ""
        lines.append(f"| `{name}` | {type_name} | {default_cell} | {description} |")
    return "\n".join(lines)
