from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.common.settings import env_vars
from services.tts.config import TtsSettings
from tests.helpers.grpc import REPO_ROOT


def test_defaults_follow_upstream_and_token2wav() -> None:
    settings = TtsSettings()
    assert settings.port == 50054
    assert settings.default_voice == "Tingting"
    assert settings.voices_dir == Path("var/voices")
    assert (settings.temperature, settings.top_k, settings.top_p) == (0.7, 50, 1.0)
    options = settings.stream_options()
    assert (options.first_hop_tokens, options.overlap_tokens, options.n_timesteps) == (30, 15, 10)


@pytest.mark.parametrize(
    "overrides",
    [
        {"first_hop_tokens": 10, "overlap_tokens": 15},  # first hop must cover the overlap
        {"max_hop_tokens": 20},  # below first_hop_tokens
        {"max_streams": 300},  # above engine_queue_size / grpc_max_concurrent_rpcs
        {"max_prompt_s": 60},  # token2wav refuses prompts over 30 s
        {"default_voice": ""},
        {"engine": "onnx"},
    ],
)
def test_invalid_settings_are_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TtsSettings(**overrides)


def test_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTS_VLLM__GPU_MEMORY_UTILIZATION", "0.5")
    monkeypatch.setenv("TTS_MAX_AUDIO_TOKENS", "77")
    settings = TtsSettings()
    assert settings.vllm.gpu_memory_utilization == 0.5 and settings.max_audio_tokens == 77
    monkeypatch.setenv("TTS_DEFAULT_VOICES", "x")  # misspelt
    with pytest.raises(ValidationError):
        TtsSettings()


def test_docs_list_every_variable() -> None:
    docs = (REPO_ROOT / "docs/services.md").read_text(encoding="utf-8")
    missing = [name for name, *_ in env_vars(TtsSettings) if f"`{name}`" not in docs]
    assert not missing
