"""LLM service settings (env prefix ``LLM_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import BaseServiceSettings, MiB
from services.lm_engine.vllm_settings import VllmEngineSettings
from services.models import layout


class LlmSettings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLM_")

    port: int = Field(50053, ge=0, le=65535, description="gRPC port; 0 picks a free port.")
    grpc_max_message_bytes: int = Field(
        8 * MiB, ge=1024, le=64 * MiB, description="gRPC send/receive message size limit (bytes)."
    )
    model_dir: Path = Field(
        Path("models/tiny"), description="Model root holding the Step-Audio folders."
    )
    model_name: str = Field(
        layout.CHAT_DIR,
        description="Step1 folder under the model root (Step-Audio-Chat or Step-Audio-AQAA).",
    )
    engine: Literal["torch", "vllm"] = Field(
        "torch", description="torch = CPU/GPU reference engine; vllm = vLLM AsyncLLM (GPU)."
    )
    vllm: VllmEngineSettings = Field(
        # Chat needs no RAS processor; without it vLLM keeps its faster model runner
        default_factory=lambda: VllmEngineSettings(repetition_aware=False),
        description="vLLM options (engine=vllm).",
    )
    device: str = Field("cpu", description="torch engine device (cpu, cuda, cuda:1).")
    max_running: int = Field(8, ge=1, le=1024, description="Sequences decoded together.")
    max_waiting: int = Field(64, ge=0, le=100_000, description="Queued requests before overload.")
    cache_capacity: int = Field(
        1024, ge=16, le=1_000_000, description="Initial KV-cache length per slot (tokens)."
    )
    temperature: float = Field(0.7, ge=0, le=10, description="Default sampling temperature.")
    top_p: float = Field(0.9, gt=0, le=1, description="Default nucleus mass.")
    top_k: int = Field(50, ge=0, le=100_000, description="Default top-k (0 = off).")
    max_tokens: int = Field(
        2048, ge=1, le=100_000, description="Default and largest completion length (tokens)."
    )

    @field_validator("vllm", mode="before")
    @classmethod
    def _chat_has_no_ras(cls, value: Any) -> Any:
        # LLM_VLLM__<FIELD> variables build the nested model from those fields alone, which
        # would bring back VllmEngineSettings' own default (the RAS processor, a slower runner)
        if isinstance(value, dict):
            return {"repetition_aware": False} | value
        return value

    @property
    def model_path(self) -> Path:
        return self.model_dir / self.model_name
