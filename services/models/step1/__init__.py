"""Step1ForCausalLM: config, model with KV cache, sampling, generation."""

from services.models.step1.config import Step1Config
from services.models.step1.generate import generate
from services.models.step1.model import KVCache, Step1ForCausalLM, alibi_slopes, alibi_sqrt_bias
from services.models.step1.sampling import (
    CHAT_DEFAULTS,
    TTS_DEFAULTS,
    SamplingParams,
    repetition_banned_token,
    select_token,
)

__all__ = [
    "CHAT_DEFAULTS",
    "TTS_DEFAULTS",
    "KVCache",
    "SamplingParams",
    "Step1Config",
    "Step1ForCausalLM",
    "alibi_slopes",
    "alibi_sqrt_bias",
    "generate",
    "repetition_banned_token",
    "select_token",
]
