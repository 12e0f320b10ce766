from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from services.common.settings import BaseServiceSettings, env_var_table, env_vars


class DemoSettings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.upper().startswith("DEMO_"):
            monkeypatch.delenv(key)


def test_defaults_are_finite_and_sane() -> None:
    settings = DemoSettings()
    assert 1024 <= settings.grpc_max_message_bytes <= 64 * 1024 * 1024
    assert settings.keepalive.min_ping_interval_ms <= settings.keepalive.time_ms
    assert settings.metrics_port == 0
    assert settings.log_level == "INFO"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("port", -1),
        ("port", 70_000),
        ("grpc_max_message_bytes", 0),
        ("grpc_max_message_bytes", 10**12),
        ("grpc_max_concurrent_rpcs", 0),
        ("shutdown_grace_s", -1),
        ("engine_queue_size", 0),
        ("log_level", "LOUD"),
    ],
)
def test_out_of_bounds_values_are_rejected(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        DemoSettings(**{field: value})


def test_port_zero_is_allowed() -> None:
    assert DemoSettings(port=0).port == 0


def test_unknown_keyword_is_rejected() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        DemoSettings(prot=1)  # type: ignore[call-arg]


def test_env_vars_are_read_with_prefix_and_nesting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_PORT", "6000")
    monkeypatch.setenv("DEMO_LOG_LEVEL", "debug")
    monkeypatch.setenv("DEMO_KEEPALIVE__TIME_MS", "20000")
    settings = DemoSettings()
    assert settings.port == 6000
    assert settings.log_level == "DEBUG"
    assert settings.keepalive.time_ms == 20_000


def test_typo_in_env_var_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_PROT", "6000")
    with pytest.raises(ValidationError, match="prot"):
        DemoSettings()


def test_typo_in_nested_env_var_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_KEEPALIVE__TIME_SM", "1")
    with pytest.raises(ValidationError, match="time_sm"):
        DemoSettings()


def test_env_var_bound_is_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_KEEPALIVE__TIME_MS", "1")
    with pytest.raises(ValidationError, match="time_ms"):
        DemoSettings()


def test_env_var_table_lists_every_variable() -> None:
    names = [name for name, *_ in env_vars(DemoSettings)]
    assert "DEMO_PORT" in names
    assert "DEMO_KEEPALIVE__TIME_MS" in names
    assert "DEMO_KEEPALIVE" not in names  # nested models are flattened
    table = env_var_table(DemoSettings)
    lines = table.splitlines()
    assert lines[0] == "| Variable | Type | Default | Description |"
    assert len(lines) == 2 + len(names)
    port_row = next(line for line in lines if line.startswith("| `DEMO_PORT`"))
    assert "| int | `50050` |" in port_row
    assert "0 picks a free port" in port_row
