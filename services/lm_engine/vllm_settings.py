"""vLLM engine options, importable without vLLM (the LLM and TTS settings nest them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class VllmEngineSettings(BaseModel):
    """vLLM engine options; nested in the LLM/TTS settings as ``vllm`` (``LLM_VLLM__<FIELD>``)."""

    model_config = ConfigDict(extra="forbid")

    tensor_parallel_size: int = Field(
        1, ge=1, le=16, description="GPUs per model replica (Chat 130B: 4 or 8; TTS-3B: 1)."
    )
    pipeline_parallel_size: int = Field(1, ge=1, le=16, description="Pipeline stages.")
    distributed_executor_backend: Literal["mp", "ray"] = Field(
        "mp",
        description="With several GPUs: mp = worker processes on one host; ray = across hosts "
        "(one GPU always runs the worker inside vLLM's engine process).",
    )
    dtype: Literal["bfloat16", "float16"] = Field(
        "bfloat16", description="Activation/weight dtype (the checkpoints are bf16)."
    )
    quantization: Literal["fp8"] | None = Field(
        None, description="fp8 = online fp8 weight quantization (halves weight bytes)."
    )
    gpu_memory_utilization: float = Field(
        0.85, ge=0.1, le=0.98, description="Fraction of GPU memory vLLM may take."
    )
    max_num_seqs: int = Field(128, ge=1, le=2048, description="Sequences decoded together.")
    max_model_len: int | None = Field(
        None, ge=16, le=32768, description="Prompt + completion limit; None = config max_seq_len."
    )
    max_waiting: int = Field(
        256, ge=0, le=100_000, description="Requests admitted beyond max_num_seqs before overload."
    )
    enforce_eager: bool = Field(
        False, description="No CUDA graphs and no torch.compile (debugging; much slower)."
    )
    compile: bool = Field(
        True,
        description="Serve the project's Step1 class (CUDA graphs + torch.compile); false = "
        "vLLM's own Step1, which only runs with enforce_eager.",
    )
    attention_backend: Literal["TRITON_ATTN"] = Field(
        "TRITON_ATTN", description="The only vLLM 0.26 backend with ALiBi-sqrt."
    )
    repetition_aware: bool = Field(
        True,
        description="Load the RAS logits processor (TTS needs it; requests opt in). vLLM then "
        "uses its V1 model runner, which custom logits processors require.",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Engine seed (unseeded requests).")

    @model_validator(mode="after")
    def _stock_step1_needs_eager(self) -> VllmEngineSettings:
        if not self.compile and not self.enforce_eager:
            raise ValueError(
                "vLLM 0.26's own Step1 cannot capture CUDA graphs; set compile=true (the "
                "project's Step1) or enforce_eager=true"
            )
        return self
