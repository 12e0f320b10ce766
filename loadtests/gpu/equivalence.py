"""GPU equivalence: the torch reference (fp32 and bf16) vs ``VllmLlmEngine``, greedy decoding.

    python -m loadtests.gpu.equivalence [--out DIR] [--variants compiled,stock]

A small Step1 checkpoint in the real layout is written with ``write_tiny_step1`` (head_dim 64
as TTS-3B: TRITON_ATTN needs head_dim >= 32) and its tensors replaced by structured ones
(``structure_weights``): plain random weights give near-flat logits whose top-2 gaps fall
under bf16 rounding, so greedy ids would differ between any two kernels.

Checks: for several prompts the first 32 greedy ids are identical for torch fp32, torch bf16
and vLLM (bf16, each variant), plain and with the repetition-aware rule; vLLM's raw logits
(logprobs_mode=raw_logits, top 20 per step) against the fp32 reference teacher-forced on
vLLM's ids give the bf16 tolerance; cancellation works through the engine interface. Each
variant runs in its own process; the compiled one has vLLM spawn its processes, so the plugin
registration is what makes it work. Exit status 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from loadtests.gpu.common import (
    append_json,
    markdown_table,
    out_dir,
    read_json_lines,
    run_child,
    write_small_step1,
)
from services.models.step1 import SamplingParams, Step1ForCausalLM, select_token

SEED = 20261124
STEPS = 32
TOP_LOGITS = 20
PROMPT_LENGTHS = (5, 9, 12, 37, 80, 200)  # below, at and above the RAS window of 10
VARIANTS = ("stock", "compiled")


def structure_weights(folder: Path, seed: int, branch_scale: float = 0.5) -> None:
    """Rewrite the checkpoint's tensors (same names, shapes, files) so that greedy ids are
    stable under bf16 rounding while every layer still moves the logits.

    Embeddings are N(0, 1); projections are variance-preserving, residual branches scaled by
    ``branch_scale`` (attention shifts the logits several times the bf16 noise). ``lm_head``
    maps the current id t to next(t), a random function in which 10 % of ids are sinks
    (next(f) = f, so plain greedy ends up repeating and the repetition-aware rule bites), and
    to a second choice escape(t) at 0.6 of the weight, which RAS takes when next(t) is banned.
    """
    generator = torch.Generator().manual_seed(seed)
    files = {name: file for file in folder.glob("*.safetensors") for name in load_file(file)}
    shapes = {name: load_file(file)[name].shape for name, file in files.items()}
    vocab, hidden = shapes["model.embed_tokens.weight"]
    embed = torch.randn(vocab, hidden, generator=generator)
    successor = torch.randint(vocab, (vocab,), generator=generator)
    sinks = torch.randperm(vocab, generator=generator)[: vocab // 10]
    successor[sinks] = sinks
    escape = torch.randperm(vocab, generator=generator)
    head = torch.zeros(vocab, hidden).index_add_(0, successor, embed)
    head.index_add_(0, escape, 0.6 * embed)
    tensors: dict[Path, dict[str, torch.Tensor]] = {}
    for name, shape in shapes.items():
        if name == "model.embed_tokens.weight":
            value = embed
        elif name == "lm_head.weight":
            value = head / math.sqrt(hidden)
        elif name.endswith("norm.weight"):
            value = torch.ones(shape)
        else:
            value = torch.randn(shape, generator=generator) / math.sqrt(shape[1])
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                value = value * branch_scale
        tensors.setdefault(files[name], {})[name] = value.to(torch.bfloat16).contiguous()
    for file, chunk in tensors.items():
        save_file(chunk, str(file), metadata={"format": "pt"})


def make_prompts(seed: int = SEED) -> list[list[int]]:
    """BOS + a mix of text and audio ids, as TTS prompts are."""
    rng = random.Random(seed)
    pools = [range(5, 1200), range(65536, 65536 + 5120)]
    return [[1] + [rng.choice(rng.choice(pools)) for _ in range(n - 1)] for n in PROMPT_LENGTHS]


def greedy(repetition_aware: bool) -> SamplingParams:
    return SamplingParams(
        temperature=0.0,
        top_k=0,
        max_tokens=STEPS,
        ignore_eos=True,  # always 32 ids to compare
        repetition_aware=repetition_aware,
    )


@torch.inference_mode()
def reference_ids(model: Step1ForCausalLM, prompts: list[list[int]], ras: bool) -> list[list[int]]:
    """Greedy ids from full forwards (no KV cache) and the reference sampler, on the model's
    device (``generate`` itself keeps its tensors on the CPU)."""
    device, params, results = model.lm_head.weight.device, greedy(ras), []
    for prompt in prompts:
        history = list(prompt)
        for _ in range(params.max_tokens):
            logits = model(torch.tensor([history], device=device), last_only=True)[0, -1]
            history.append(select_token(logits.cpu(), params, torch.Generator(), history))
        results.append(history[len(prompt) :])
    return results


@torch.inference_mode()
def teacher_forced_logits(
    model: Step1ForCausalLM, prompt: list[int], ids: list[int]
) -> torch.Tensor:
    """[len(ids), vocab] logits that produced each of ``ids`` (one forward, no cache)."""
    tokens = torch.tensor([prompt + ids], device=model.lm_head.weight.device)
    logits = model(tokens)[0]
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(ids)].float().cpu()


# -- one variant, in its own process ----------------------------------------------------------


async def vllm_variant(folder: Path, variant: str, prompts: list[list[int]]) -> dict[str, Any]:
    from services.lm_engine.vllm_engine import VllmLlmEngine
    from services.lm_engine.vllm_settings import VllmEngineSettings

    settings = VllmEngineSettings(
        compile=variant != "stock",
        enforce_eager=variant == "stock",
        quantization="fp8" if variant == "compiled-fp8" else None,
        max_model_len=4096,
        max_num_seqs=16,
        gpu_memory_utilization=0.3,
    )
    extra = {"logprobs_mode": "raw_logits", "max_logprobs": TOP_LOGITS}
    engine = VllmLlmEngine(folder, settings, extra_engine_args=extra)
    started = time.perf_counter()
    await engine.start()
    result: dict[str, Any] = {"variant": variant, "start_s": time.perf_counter() - started}
    try:
        result["plain"] = await asyncio.gather(*(engine_ids(engine, p, False) for p in prompts))
        result["ras"] = await asyncio.gather(*(engine_ids(engine, p, True) for p in prompts))
        result["raw_logits"] = [await raw_logits(engine, p) for p in prompts]
        result["checks"] = await engine_checks(engine, prompts[-1])
    finally:
        await engine.close()
    return result


async def engine_ids(engine: Any, prompt: list[int], ras: bool) -> list[int]:
    from services.lm_engine.engine import GenerationRequest

    request = GenerationRequest(f"{'ras' if ras else 'plain'}-{len(prompt)}", prompt, greedy(ras))
    return [t async for output in engine.generate(request) for t in output.token_ids]


async def raw_logits(engine: Any, prompt: list[int]) -> list[dict[str, float]]:
    """vLLM's top-20 raw logits at each greedy step (ids as strings, for JSON)."""
    from vllm.sampling_params import RequestOutputKind
    from vllm.sampling_params import SamplingParams as VllmSamplingParams

    params = VllmSamplingParams(
        temperature=0.0,
        max_tokens=STEPS,
        ignore_eos=True,
        logprobs=TOP_LOGITS,
        detokenize=False,
        output_kind=RequestOutputKind.FINAL_ONLY,
    )
    final = None
    async for output in engine.async_llm.generate(
        {"prompt_token_ids": prompt}, params, f"logits-{len(prompt)}"
    ):
        final = output
    assert final is not None
    completion = final.outputs[0]
    return [{str(k): v.logprob for k, v in step.items()} for step in completion.logprobs]


async def engine_checks(engine: Any, prompt: list[int]) -> dict[str, Any]:
    """Cancellation through the interface: closing the iterator, and abort()."""
    from services.lm_engine.engine import FinishReason, GenerationRequest

    long = SamplingParams(temperature=0.7, max_tokens=2000, ignore_eos=True, seed=1)
    stream = engine.generate(GenerationRequest("closed", prompt, long))
    first = await anext(stream)
    await stream.aclose()
    in_flight_after_close = engine.num_in_flight

    outputs = []
    streaming = asyncio.Event()

    async def consume() -> None:
        async for output in engine.generate(GenerationRequest("aborted", prompt, long)):
            outputs.append(output)
            if len(outputs) >= 3:
                streaming.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(streaming.wait(), 30)
    found = await engine.abort("aborted")
    await asyncio.wait_for(task, 30)
    final = outputs[-1]
    return {
        "first_delta_ids": len(first.token_ids),
        "in_flight_after_close": in_flight_after_close,
        "abort_found": found,
        "abort_finish_reason": str(final.finish_reason),
        "abort_cancelled": final.finished and final.finish_reason is FinishReason.CANCELLED,
        "aborted_after_tokens": final.completion_tokens,
    }


def child_main(folder: Path, variant: str, results: Path) -> None:
    if variant == "compiled":
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"  # prove the plugin path
    append_json(results, asyncio.run(vllm_variant(folder, variant, make_prompts())))


# -- the comparison ---------------------------------------------------------------------------


def logit_diffs(
    model: Step1ForCausalLM, prompt: list[int], ids: list[int], raw: list[dict[str, float]]
) -> tuple[float, float]:
    """(max |vLLM - reference| over vLLM's top-20 ids, smallest top-1/top-2 reference margin)."""
    reference = teacher_forced_logits(model, prompt, ids)
    worst = 0.0
    for step, top in enumerate(raw):
        token_ids = torch.tensor([int(k) for k in top], dtype=torch.long)
        values = torch.tensor(list(top.values()))
        worst = max(worst, float((values - reference[step, token_ids]).abs().max()))
    top2 = reference.topk(2, dim=-1).values
    return worst, float((top2[:, 0] - top2[:, 1]).min())


def first_mismatch(a: list[int], b: list[int]) -> int | None:
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def compare(folder: Path, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    prompts = make_prompts()
    device = "cuda" if torch.cuda.is_available() else "cpu"  # after the vLLM children ended
    models = {
        name: Step1ForCausalLM.from_pretrained(folder, dtype=dtype, device=device)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    refs = {
        (name, mode): reference_ids(model, prompts, mode == "ras")
        for name, model in models.items()
        for mode in ("plain", "ras")
    }
    rows, ok = [], True
    for mode in ("plain", "ras"):
        row = {"what": f"torch bf16 vs fp32 ({mode})"}
        row |= _agreement(refs[("bf16", mode)], refs[("fp32", mode)])
        rows.append(row)
    for record in records:
        for mode in ("plain", "ras"):
            row = {"what": f"vLLM {record['variant']} vs torch fp32 ({mode})"}
            row |= _agreement(record[mode], refs[("fp32", mode)])
            row["vs_bf16_identical"] = record[mode] == refs[("bf16", mode)]
            ok &= row["identical"]
            rows.append(row)
        diffs = [
            logit_diffs(models["fp32"], p, ids, raw)
            for p, ids, raw in zip(prompts, record["plain"], record["raw_logits"], strict=True)
        ]
        rows[-2]["max_logit_diff"] = round(max(d for d, _ in diffs), 5)
        rows[-2]["min_top2_margin"] = round(min(m for _, m in diffs), 5)
        rows[-2]["checks"] = record["checks"]
        rows[-2]["start_s"] = round(record["start_s"], 1)
    return rows, ok


def _agreement(ids: list[list[int]], reference: list[list[int]]) -> dict[str, Any]:
    mismatches = [first_mismatch(a, b) for a, b in zip(ids, reference, strict=True)]
    return {
        "identical": all(m is None for m in mismatches),
        "first_mismatch_per_prompt": mismatches,
        "ids_per_prompt": [len(a) for a in ids],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="of stock, compiled, compiled-fp8"
    )
    parser.add_argument("--child", nargs=3, metavar=("FOLDER", "VARIANT", "RESULTS"))
    args = parser.parse_args(argv)
    if args.child:
        child_main(Path(args.child[0]), args.child[1], Path(args.child[2]))
        return 0
    out = out_dir(args.out)
    results = out / "equivalence_raw.jsonl"
    results.unlink(missing_ok=True)
    folder = write_small_step1(Path(tempfile.mkdtemp(prefix="step1-small-")) / "model", SEED)
    structure_weights(folder, SEED)
    for variant in args.variants.split(","):
        code, seconds = run_child(
            "loadtests.gpu.equivalence", ["--child", str(folder), variant, str(results)], 420
        )
        print(f"variant {variant}: exit {code} after {seconds:.0f} s", flush=True)
    records = read_json_lines(results)
    rows, ok = compare(folder, records)
    ok &= len(records) == len(args.variants.split(","))
    (out / "equivalence.json").write_text(json.dumps({"ok": ok, "rows": rows}, indent=2))
    headers = ["what", "identical", "first_mismatch_per_prompt"]
    headers += ["max_logit_diff", "min_top2_margin"]
    print(markdown_table(headers, [[row.get(h, "") for h in headers] for row in rows]))
    for row in rows:
        if "checks" in row:
            print(row["what"], "engine checks:", row["checks"], "start_s:", row["start_s"])
    print("EQUIVALENCE", "PASS" if ok else "FAIL", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
