"""Tokenizer service settings (env prefix ``TOKENIZER_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import BaseServiceSettings, MiB
from services.models import layout


class TokenizerSettings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TOKENIZER_")

    port: int = Field(50052, ge=0, le=65535, description="gRPC port; 0 picks a free port.")
    grpc_max_message_bytes: int = Field(
        16 * MiB, ge=1024, le=64 * MiB, description="gRPC send/receive message size limit (bytes)."
    )
    model_dir: Path = Field(
        Path("models/tiny"), description="Model root holding Step-Audio-Tokenizer/."
    )
    device: str = Field("cpu", description="Paraformer (and ONNX, if CUDA) device: cpu, cuda.")
    engine_threads: int = Field(1, ge=1, le=64, description="onnxruntime intra-op threads.")
    engine_workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Batching loops (threads) running tokenizer work; streams share them. "
        "One per device on a GPU.",
    )
    semantic_batch: bool = Field(
        True,
        description="Run the vq06 windows of a round as one stacked ONNX call when the model "
        "allows it (checked at load; else one call per window).",
    )
    max_streams: int = Field(64, ge=1, le=4096, description="Concurrent TokenizeStream calls.")
    max_chunk_ms: int = Field(
        1000, ge=20, le=10_000, description="Longest audio chunk in one stream message (ms)."
    )
    max_clip_s: float = Field(
        60.0,
        ge=1,
        le=600,
        description="Longest audio of one Tokenize clip and of one TokenizeStream turn (s).",
    )
    max_stream_s: float = Field(
        600.0, ge=1, le=86_400, description="Wall-clock lifetime cap of one TokenizeStream (s)."
    )

    @property
    def tokenizer_path(self) -> Path:
        return layout.tokenizer_dir(self.model_dir)

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        if self.grpc_max_concurrent_rpcs <= self.max_streams:
            raise ValueError("grpc_max_concurrent_rpcs must exceed max_streams (room for health)")
        if self.engine_queue_size < self.max_streams:
            raise ValueError("engine_queue_size must be >= max_streams (one feed per stream)")
        return self
