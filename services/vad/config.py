"""VAD service settings (env prefix ``VAD_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import BaseServiceSettings, MiB
from services.vad.engine import (
    MIN_SILENCE_MS_RANGE,
    MIN_SPEECH_MS_RANGE,
    PAUSE_MS_RANGE,
    THRESHOLD_RANGE,
    VadParams,
)


class VadSettings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VAD_")

    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free port.")
    grpc_max_message_bytes: int = Field(
        1 * MiB, ge=1024, le=64 * MiB, description="gRPC send/receive message size limit (bytes)."
    )
    threshold: float = Field(
        0.5,
        ge=THRESHOLD_RANGE[0],
        le=THRESHOLD_RANGE[1],
        description="Speech probability threshold.",
    )
    min_speech_ms: int = Field(
        250,
        ge=MIN_SPEECH_MS_RANGE[0],
        le=MIN_SPEECH_MS_RANGE[1],
        description="Speech needed before SPEECH_STARTED (ms); gaps < min_silence_ms kept.",
    )
    min_silence_ms: int = Field(
        600,
        ge=MIN_SILENCE_MS_RANGE[0],
        le=MIN_SILENCE_MS_RANGE[1],
        description="Silence that ends a turn, SPEECH_STOPPED (ms).",
    )
    pause_ms: int = Field(
        0,
        ge=PAUSE_MS_RANGE[0],
        le=PAUSE_MS_RANGE[1],
        description="Silence that raises SPEECH_PAUSED (ms); 0 = off; below min_silence_ms.",
    )
    max_streams: int = Field(64, ge=1, le=4096, description="Concurrent DetectSpeech streams.")
    max_batch: int = Field(64, ge=1, le=1024, description="Frames per batched model step.")
    max_chunk_ms: int = Field(
        1000, ge=20, le=10_000, description="Longest audio chunk accepted in one message (ms)."
    )
    max_stream_s: float = Field(
        3600, ge=1, le=86_400, description="Lifetime cap of one DetectSpeech stream (s)."
    )
    engine_threads: int = Field(1, ge=1, le=16, description="onnxruntime intra-op threads.")
    model_path: Path | None = Field(
        None, description="silero_vad.onnx to load; unset = the one in the silero-vad package."
    )

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        self.vad_params()  # pause_ms < min_silence_ms
        if self.engine_queue_size < self.max_streams:
            raise ValueError("engine_queue_size must be >= max_streams (one frame per stream)")
        if self.grpc_max_concurrent_rpcs <= self.max_streams:
            raise ValueError("grpc_max_concurrent_rpcs must exceed max_streams (room for health)")
        return self

    def vad_params(self) -> VadParams:
        return VadParams(
            threshold=self.threshold,
            min_speech_ms=self.min_speech_ms,
            min_silence_ms=self.min_silence_ms,
            pause_ms=self.pause_ms,
        )
