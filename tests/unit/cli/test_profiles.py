"""`stepaudio serve --profile`: the one-host settings are valid settings of every service."""

from __future__ import annotations

import pytest

from services.cli.profiles import PROFILES, declared_variables, profile_env, resolve_profile
from services.controller.config import ControllerSettings
from services.llm.config import LlmSettings
from services.tokenizer.config import TokenizerSettings
from services.tts.config import TtsSettings
from services.vad.config import VadSettings


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("sessions", [1, 256])
def test_profile_settings_load_in_every_service(
    profile: str, sessions: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, _ = resolve_profile(profile, sessions, {})
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    controller = ControllerSettings()
    vad, tokenizer, llm, tts = VadSettings(), TokenizerSettings(), LlmSettings(), TtsSettings()
    assert controller.limits.max_sessions == sessions
    assert vad.max_streams >= sessions
    assert tokenizer.max_streams >= 2 * sessions and tts.max_streams >= 2 * sessions
    gpu = profile == "gpu"
    assert (llm.engine, tts.engine) == (("vllm", "vllm") if gpu else ("torch", "torch"))
    assert tokenizer.device == ("cuda" if gpu else "cpu")
    if gpu:  # both vLLM engines and token2wav fit on one card
        assert llm.vllm.gpu_memory_utilization + tts.vllm.gpu_memory_utilization <= 0.6
        assert llm.vllm.max_num_seqs >= min(sessions, 512)
        assert not llm.vllm.repetition_aware and tts.vllm.repetition_aware


def test_the_environment_wins_and_undeclared_settings_are_left_out() -> None:
    environ = {"TTS_VLLM__GPU_MEMORY_UTILIZATION": "0.4"}
    env, dropped = resolve_profile("gpu", 64, environ)
    assert "TTS_VLLM__GPU_MEMORY_UTILIZATION" not in env
    known = declared_variables()
    assert all(name in known or name.startswith("VLLM_") for name in env)
    assert sorted(env.keys() | set(dropped)) == sorted(profile_env("gpu", 64).keys() - {*environ})
    assert all(name not in known for name in dropped)


def test_bad_profile_requests_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        profile_env("tpu", 8)
    with pytest.raises(ValueError, match="at least 1"):
        profile_env("gpu", 0)


def test_a_chat_vllm_variable_keeps_the_chat_default_without_ras(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Setting any LLM_VLLM__* field must not bring back the TTS default (RAS on)."""
    monkeypatch.setenv("LLM_VLLM__QUANTIZATION", "fp8")
    settings = LlmSettings()
    assert settings.vllm.quantization == "fp8" and not settings.vllm.repetition_aware
    monkeypatch.setenv("LLM_VLLM__REPETITION_AWARE", "true")
    assert LlmSettings().vllm.repetition_aware
