"""Key ring, credentials and Origin rules (pure functions; the endpoints are tested on the
in-process stack in tests/integration/test_security.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.controller.auth import KeyRing, hash_key, key_entry, new_api_key
from services.controller.config import AuthSettings, ControllerSettings
from services.controller.middleware import (
    ADMIN,
    API,
    METRICS,
    PUBLIC,
    REALTIME,
    access_for,
    presented_credential,
    same_origin,
)


def test_keys_from_env_and_file_match_only_their_own_key(tmp_path: Path) -> None:
    alice, ops = new_api_key(), new_api_key()
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps([key_entry("ops", ops, "admin")]))
    settings = AuthSettings(
        keys=json.dumps([key_entry("alice", alice) | {"max_sessions": 2}]),
        keys_file=str(keys_file),
        requests_per_minute=77,
    )
    ring = KeyRing.load(settings)
    assert ring.match(alice).id == "alice" and ring.match(ops).role == "admin"
    assert ring.match(alice[:-1]) is None and ring.match("") is None
    principal = ring.principal(ring.match(alice))
    assert (principal.max_sessions, principal.requests_per_minute) == (2, 77)
    assert principal.can("user") and not principal.can("admin")
    assert alice not in settings.keys  # only the hash is configured
    assert hash_key(alice) in settings.keys


@pytest.mark.parametrize(
    "keys, problem",
    [
        ('[{"id": "a", "sha256": "abc"}]', "sha256"),
        ('[{"id": "a b", "sha256": "' + "0" * 64 + '"}]', "id"),
        ('[{"id": "a", "sha256": "' + "0" * 64 + '", "key": "plain"}]', "key"),
        ("not json", "CONTROLLER_AUTH__KEYS"),
        ('[{"id": "a", "sha256": "' + "0" * 64 + '"}, {"id": "a", "sha256": "' + "1" * 64 + '"}]',
         "duplicate"),
    ],
)  # fmt: skip
def test_bad_key_config_stops_the_start_with_its_reason(keys: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        KeyRing.load(AuthSettings(keys=keys))


def test_missing_keys_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keys file"):
        KeyRing.load(AuthSettings(keys_file=str(tmp_path / "nope.json")))


def test_credentials_come_from_the_bearer_header_or_the_subprotocol() -> None:
    http = {"type": "http"}
    ws = {"type": "websocket", "subprotocols": ["realtime", "openai-insecure-api-key.ek_x"]}
    assert presented_credential(http, {"authorization": "Bearer sa-1"}) == "sa-1"
    assert presented_credential(http, {"authorization": "bearer  sa-1 "}) == "sa-1"
    assert presented_credential(http, {"authorization": "Basic eDp5"}) is None
    assert presented_credential(ws, {}) == "ek_x"
    assert presented_credential(http | {"subprotocols": ws["subprotocols"]}, {}) is None


def test_access_rules() -> None:
    plain, keyed = ControllerSettings(), ControllerSettings(auth={"metrics_key": True})
    assert access_for("/v1/realtime", plain) == REALTIME
    assert access_for("/v1/realtime/client_secrets", plain) == API
    assert access_for("/v1/voices/x", plain) == API
    assert access_for("/admin/drain", plain) == ADMIN
    assert access_for("/metrics", plain) == PUBLIC and access_for("/metrics", keyed) == METRICS
    for path in ("/healthz", "/readyz", "/", "/app.js", "/docs", "/openapi.json"):
        assert access_for(path, keyed) == PUBLIC


def test_same_origin_compares_the_host_not_the_scheme() -> None:
    assert same_origin("https://app.example", {"host": "app.example"})  # TLS at the proxy
    assert same_origin("http://127.0.0.1:8000", {"host": "127.0.0.1:8000"})
    assert not same_origin("http://127.0.0.1:8001", {"host": "127.0.0.1:8000"})
    assert not same_origin("https://app.example.evil.example", {"host": "app.example"})
    assert not same_origin("null", {"host": "app.example"})
    assert not same_origin("https://app.example", {})
