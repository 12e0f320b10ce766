"""TTS service settings (env prefix ``TTS_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import BaseServiceSettings, MiB
from services.lm_engine.vllm_settings import VllmEngineSettings
from services.models.step1.sampling import TTS_DEFAULTS
from services.models.token2wav import StreamOptions
from services.models.token2wav.controls import DEFAULT_N_TIMESTEPS
from services.models.token2wav.model import MAX_PROMPT_SECONDS

_STREAM = StreamOptions()


class VocoderSettings(BaseModel):
    """The batched token2wav loop (one per device; services/tts/vocoder_loop.py), nested as
    ``vocoder`` (``TTS_VOCODER__<FIELD>``)."""

    model_config = ConfigDict(extra="forbid")

    max_streams: int = Field(
        32,
        ge=1,
        le=4096,
        description="Streams one device's vocoder decodes together; more are refused "
        "(RESOURCE_EXHAUSTED) before any work. GPU value pending measurement (docs/benchmarks.md).",
    )
    max_undelivered: int = Field(
        8,
        ge=1,
        le=1024,
        description="Audio chunks a stream may hold unread by its client before the loop skips it.",
    )
    compile: bool = Field(
        False,
        description="token2wav GPU fast path (Token2Wav.compile_for_gpu: padded, bucketed flow "
        "as CUDA graphs, HiFT graphs); graphs are captured on first use of each shape.",
    )


class TtsSettings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TTS_")

    port: int = Field(50054, ge=0, le=65535, description="gRPC port; 0 picks a free port.")
    grpc_max_message_bytes: int = Field(
        8 * MiB, ge=1024, le=64 * MiB, description="gRPC send/receive message size limit (bytes)."
    )
    model_dir: Path = Field(
        Path("models/tiny"),
        description="Model root: Step-Audio-TTS-3B/ (LM + vocoders), Step-Audio-Tokenizer/, "
        "speakers/.",
    )
    default_voice: str = Field(
        "Tingting", min_length=1, description="Voice used when a request names none."
    )
    voices_dir: Path = Field(
        Path("var/voices"), description="Where registered (user) voices are persisted."
    )
    allow_builtin_override: bool = Field(
        False, description="Let RegisterVoice(overwrite) shadow a built-in voice of that name."
    )
    device: str = Field("cpu", description="torch device of the LM, token2wav, tokenizer.")
    engine: Literal["torch", "vllm"] = Field(
        "torch", description="TTS LM engine: torch (CPU/GPU reference) or vllm (GPU)."
    )
    vllm: VllmEngineSettings = Field(
        default_factory=VllmEngineSettings, description="vLLM options (engine=vllm)."
    )
    max_running: int = Field(8, ge=1, le=1024, description="LM sequences decoded together.")
    max_waiting: int = Field(
        32, ge=0, le=100_000, description="LM requests queued before overload."
    )
    cache_capacity: int = Field(
        2048, ge=16, le=1_000_000, description="Initial LM KV-cache length per slot (tokens)."
    )
    temperature: float = Field(
        TTS_DEFAULTS.temperature, ge=0, le=10, description="LM sampling temperature."
    )
    top_p: float = Field(TTS_DEFAULTS.top_p, gt=0, le=1, description="LM nucleus mass.")
    top_k: int = Field(TTS_DEFAULTS.top_k, ge=0, le=100_000, description="LM top-k (0 = off).")
    max_audio_tokens: int = Field(
        TTS_DEFAULTS.max_tokens,
        ge=1,
        le=100_000,
        description="Most audio ids per request: LM completion cap and Vocode total (41.67/s).",
    )
    ignore_eos: bool = Field(
        False, description="Benchmarks/tests only: the LM runs to max_audio_tokens."
    )
    n_timesteps: int = Field(
        DEFAULT_N_TIMESTEPS, ge=1, le=100, description="Flow-matching Euler steps per chunk."
    )
    cfg_rate: float | None = Field(
        None, ge=0, le=10, description="Classifier-free guidance rate; unset = cosyvoice.yaml's."
    )
    first_hop_tokens: int = Field(
        _STREAM.first_hop_tokens,
        ge=5,
        le=1000,
        description="token2wav: audio ids of the first chunk, before the overlap (latency).",
    )
    max_hop_tokens: int = Field(
        _STREAM.max_hop_tokens, ge=5, le=5000, description="token2wav: largest chunk hop (ids)."
    )
    hop_growth: float = Field(
        _STREAM.hop_growth, ge=1, le=8, description="token2wav: each hop = previous × growth."
    )
    overlap_tokens: int = Field(
        _STREAM.overlap_tokens,
        ge=5,
        le=500,
        description="token2wav: look-ahead ids held back and crossfaded per chunk.",
    )
    max_text_chars: int = Field(
        1000, ge=1, le=100_000, description="Longest Synthesize text (characters)."
    )
    max_prompt_s: float = Field(
        MAX_PROMPT_SECONDS,
        ge=1,
        le=MAX_PROMPT_SECONDS,
        description="Longest RegisterVoice prompt audio (s).",
    )
    max_streams: int = Field(32, ge=1, le=4096, description="Concurrent Synthesize + Vocode calls.")
    vocoder: VocoderSettings = Field(
        default_factory=VocoderSettings, description="Batched vocoder loop (per device)."
    )
    max_request_s: float = Field(
        300, ge=1, le=86_400, description="Lifetime cap of one Synthesize/Vocode call (s)."
    )
    warm_up: bool = Field(
        True, description="Run the LM and both vocoders once before reporting SERVING."
    )
    tokenizer_threads: int = Field(
        1, ge=1, le=64, description="onnxruntime threads of the audio tokenizer (voice prompts)."
    )

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        self.stream_options()  # raises ValueError for inconsistent chunking
        if self.grpc_max_concurrent_rpcs <= self.max_streams:
            raise ValueError("grpc_max_concurrent_rpcs must exceed max_streams (room for health)")
        if self.engine_queue_size < self.max_streams:
            raise ValueError("engine_queue_size must be >= max_streams (one call per stream)")
        return self

    def stream_options(self) -> StreamOptions:
        """token2wav chunking (speed/volume are per request)."""
        return StreamOptions(
            first_hop_tokens=self.first_hop_tokens,
            max_hop_tokens=self.max_hop_tokens,
            hop_growth=self.hop_growth,
            overlap_tokens=self.overlap_tokens,
            n_timesteps=self.n_timesteps,
            cfg_rate=self.cfg_rate,
        )
