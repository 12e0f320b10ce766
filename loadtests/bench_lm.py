"""CPU decode speed of the torch Step1 engine on the tiny TTS LM (batching across requests).

    python -m loadtests.bench_lm [--model-dir ROOT]

Tokens/s for the whole batch at batch 1, 4 and 8 (continuous batching, ignore_eos so every
request decodes the same number of tokens), and time to first token for a 300-token prompt.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from services.lm_engine.engine import GenerationRequest, TorchLlmEngine
from services.models import layout
from services.models.step1 import TTS_DEFAULTS, Step1ForCausalLM
from services.models.tiny.lm import tts_spec, write_tiny_step1


def _decode_rate(model: Step1ForCausalLM, batch: int, new_tokens: int) -> float:
    engine = TorchLlmEngine(model, max_running=batch, cache_capacity=512)
    params = dataclasses.replace(TTS_DEFAULTS, max_tokens=new_tokens, ignore_eos=True, seed=0)
    for index in range(batch):
        engine.add_request(GenerationRequest(f"r{index}", [1, 4, 100 + index, 3, 4], params))
    while engine.num_waiting:  # prefill everything first: measure decode only
        engine.step()
    started, produced = time.perf_counter(), 0
    while engine.has_work():
        produced += sum(len(o.token_ids) for o in engine.step())
    return produced / (time.perf_counter() - started)


def _first_token_ms(model: Step1ForCausalLM, prompt_tokens: int) -> float:
    engine = TorchLlmEngine(model, max_running=1, cache_capacity=512)
    params = dataclasses.replace(TTS_DEFAULTS, max_tokens=1, ignore_eos=True, seed=0)
    engine.add_request(GenerationRequest("p", list(range(5, 5 + prompt_tokens)), params))
    started = time.perf_counter()
    engine.step()
    return (time.perf_counter() - started) * 1000


def run(model_root: Path, *, new_tokens: int = 64, threads: int = 1) -> dict[str, float]:
    torch.set_num_threads(threads)
    model = Step1ForCausalLM.from_pretrained(layout.tts_dir(model_root))
    results = {f"decode_tok_s_batch{b}": _decode_rate(model, b, new_tokens) for b in (1, 4, 8)}
    results["ttft_ms_300_prompt"] = _first_token_ms(model, 300)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.model_dir
        if root is None:
            root = Path(tmp)
            write_tiny_step1(layout.tts_dir(root), tts_spec(), seed=2)
        for name, value in run(root).items():
            print(f"{name:24s} {value:10.1f}")


if __name__ == "__main__":
    main()
