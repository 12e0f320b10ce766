from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.common.settings import env_vars
from services.tokenizer.config import TokenizerSettings
from tests.helpers.grpc import REPO_ROOT


def test_defaults() -> None:
    settings = TokenizerSettings()
    assert settings.port == 50052
    assert settings.tokenizer_path == Path("models/tiny/Step-Audio-Tokenizer")
    assert settings.max_clip_s == 60


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_streams": 0},
        {"max_streams": 300},  # above engine_queue_size and grpc_max_concurrent_rpcs
        {"max_chunk_ms": 5},
        {"max_clip_s": 0},
        {"engine_workers": 0},
    ],
)
def test_invalid_settings_are_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TokenizerSettings(**overrides)


def test_misspelt_env_var_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENIZER_MAX_STREAM", "3")
    with pytest.raises(ValidationError):
        TokenizerSettings()


def test_docs_list_every_variable() -> None:
    docs = (REPO_ROOT / "docs/services.md").read_text(encoding="utf-8")
    missing = [name for name, *_ in env_vars(TokenizerSettings) if f"`{name}`" not in docs]
    assert not missing
