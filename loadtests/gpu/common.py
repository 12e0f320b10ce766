"""Shared pieces of the GPU scripts: output folder, checkpoint folders, child-process runs."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from services.models.step1.config import TTS_3B_SHAPE, Step1Config
from services.models.tiny.lm import CONFIGURATION_STEP1, TinyLmSpec, tts_spec, write_tiny_step1
from services.models.tiny.text_tokenizer import write_text_tokenizer

# vLLM's sampler without FlashInfer (the devpack leaves FlashInfer out); set before vllm loads
GPU_ENV = {"VLLM_USE_FLASHINFER_SAMPLER": "0", "PYTHONUNBUFFERED": "1"}


def out_dir(requested: str | None) -> Path:
    """--out, else $OUT (the device tool's folder), else var/gpu-bench."""
    folder = Path(requested or os.environ.get("OUT") or "var/gpu-bench")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def small_step1_spec() -> TinyLmSpec:
    """A small Step1 TRITON_ATTN can run (head_dim >= 32): head_dim 64 as TTS-3B, 6 heads (not
    a power of two, so the extra ALiBi slopes are exercised, as with TTS-3B's 48), 2 KV groups."""
    config = Step1Config(
        hidden_size=384,
        intermediate_size=1024,
        num_attention_heads=6,
        num_attention_groups=2,
        num_hidden_layers=3,
        vocab_size=TTS_3B_SHAPE["vocab_size"],
        max_seq_len=4096,
    )
    return dataclasses.replace(tts_spec(), config=config)


def write_small_step1(folder: Path, seed: int) -> Path:
    write_tiny_step1(folder, small_step1_spec(), seed)
    return folder


def write_shape_only_step1(folder: Path, shape: dict[str, int], max_seq_len: int) -> Path:
    """config.json + configuration_step1.py + tokenizer, no weights (vLLM load_format="dummy")."""
    folder.mkdir(parents=True, exist_ok=True)
    config = Step1Config(**shape, max_seq_len=max_seq_len)
    (folder / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
    (folder / "configuration_step1.py").write_text(CONFIGURATION_STEP1)
    write_text_tokenizer(folder, model_max_length=max_seq_len)
    return folder


def run_child(module: str, args: list[str], timeout_s: float) -> tuple[int, float]:
    """Run ``python -m module args`` with the GPU env (one vLLM engine per process)."""
    started = time.perf_counter()
    command = [sys.executable, "-m", module, *args]
    print(f"$ {' '.join(command)}", flush=True)
    try:
        code = subprocess.run(command, env=os.environ | GPU_ENV, timeout=timeout_s).returncode
    except subprocess.TimeoutExpired:
        code = 124
    return code, time.perf_counter() - started


def append_json(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as file:
        file.write(json.dumps(record) + "\n")


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
