"""TTS-3B-shape Step1 decode throughput and TTFT through ``VllmLlmEngine`` (dummy weights).

    python -m loadtests.gpu.bench_lm [--variants stock-eager,compiled,compiled-ras,compiled-fp8]
        [--batches 1,8,32,64,128] [--profile compiled] [--out DIR]

config.json is written from ``TTS_3B_SHAPE`` (with the tiny pack's tokenizer); vLLM makes up
the weights (``load_format="dummy"``), so nothing is downloaded. Each variant runs in its own
process. Per batch size B: B concurrent requests with distinct 200-id prompts, 256 new ids each
(ignore_eos); decode tokens/s = ids received while all B are decoding (after the last first id,
before the first finish) over that window: the steady-state rate of the whole batch. TTFT: one
request with a 300-id prompt on an idle engine, median of 5. ``--profile`` runs batch-1 decode
in-process under torch.profiler and prints where each step's time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtests.gpu.common import (
    append_json,
    markdown_table,
    out_dir,
    read_json_lines,
    run_child,
    write_shape_only_step1,
)
from services.models.step1 import TTS_DEFAULTS, SamplingParams
from services.models.step1.config import TTS_3B_SHAPE

PROMPT_LEN = 200
NEW_TOKENS = 256
TTFT_PROMPT_LEN = 300
MAX_MODEL_LEN = 2048
REPEATS = 3
VARIANTS: dict[str, dict[str, Any]] = {
    "stock-eager": {"compile": False, "enforce_eager": True, "repetition_aware": False},
    "compiled": {"compile": True, "repetition_aware": False},
    # what the TTS LM runs: RAS processor loaded (V1 model runner) and TTS sampling per request
    "compiled-ras": {"compile": True, "repetition_aware": True},
    "compiled-fp8": {"compile": True, "repetition_aware": False, "quantization": "fp8"},
}


def sampling(variant: str, seed: int, max_tokens: int) -> SamplingParams:
    if variant == "compiled-ras":  # TTS: temperature 0.7, top-k 50, RAS
        return dataclasses.replace(TTS_DEFAULTS, max_tokens=max_tokens, ignore_eos=True, seed=seed)
    # docs/gpu.md's baseline sampling
    return SamplingParams(
        temperature=0.7, top_p=0.9, max_tokens=max_tokens, ignore_eos=True, seed=seed
    )


def random_prompt(rng: random.Random, length: int) -> list[int]:
    """BOS + audio ids: distinct per request, so the prefix cache never helps."""
    return [1] + [rng.randrange(65536, 65536 + 5120) for _ in range(length - 1)]


def settings_for(variant: str, max_num_seqs: int) -> Any:
    from services.lm_engine.vllm_settings import VllmEngineSettings

    return VllmEngineSettings(
        max_num_seqs=max_num_seqs,
        max_waiting=1024,
        max_model_len=MAX_MODEL_LEN,
        gpu_memory_utilization=0.85,
        **VARIANTS[variant],
    )


# -- one variant, in its own process ----------------------------------------------------------


async def stream_times(engine: Any, request: Any) -> list[tuple[float, int]]:
    """(arrival time, ids in that delta) for every output of one request."""
    return [
        (time.perf_counter(), len(output.token_ids))
        async for output in engine.generate(request)
        if output.token_ids
    ]


async def decode_rate(engine: Any, variant: str, batch: int, rng: random.Random) -> dict:
    from services.lm_engine.engine import GenerationRequest

    requests = [
        GenerationRequest(
            f"b{batch}-{rng.getrandbits(32)}",
            random_prompt(rng, PROMPT_LEN),
            sampling(variant, rng.getrandbits(31), NEW_TOKENS),
        )
        for _ in range(batch)
    ]
    started = time.perf_counter()
    streams = await asyncio.gather(*(stream_times(engine, r) for r in requests))
    wall = time.perf_counter() - started
    window_start = max(s[0][0] for s in streams)  # every request is decoding from here
    window_end = min(s[-1][0] for s in streams)  # until the first one finishes
    ids = sum(n for s in streams for t, n in s if window_start < t <= window_end)
    window = window_end - window_start
    return {
        "batch": batch,
        "decode_tok_s": ids / window if window > 0 else float("nan"),
        "ms_per_step": 1000 * window * batch / ids if ids else float("nan"),
        "ids": sum(n for s in streams for _, n in s),
        "wall_s": wall,
    }


async def ttft(engine: Any, variant: str, rng: random.Random, repeats: int = 5) -> float:
    from services.lm_engine.engine import GenerationRequest

    times = []
    for index in range(repeats):
        request = GenerationRequest(
            f"ttft-{index}", random_prompt(rng, TTFT_PROMPT_LEN), sampling(variant, index, 1)
        )
        started = time.perf_counter()
        arrivals = [time.perf_counter() async for _ in engine.generate(request)]  # one id
        times.append(arrivals[0] - started)
    return 1000 * statistics.median(times)


async def run_variant(folder: Path, variant: str, batches: list[int]) -> dict[str, Any]:
    from services.lm_engine.vllm_engine import VllmLlmEngine

    settings = settings_for(variant, max(batches))
    engine = VllmLlmEngine(folder, settings, extra_engine_args={"load_format": "dummy"})
    started = time.perf_counter()
    await engine.start()
    record: dict[str, Any] = {"variant": variant, "start_s": time.perf_counter() - started}
    record |= environment()
    rng = random.Random(1000 + len(variant))
    try:
        await decode_rate(engine, variant, 1, rng)  # warm-up
        record["ttft_ms"] = await ttft(engine, variant, rng)
        record["batches"] = []
        for batch in batches:
            runs = [await decode_rate(engine, variant, batch, rng) for _ in range(REPEATS)]
            best = statistics.median(r["decode_tok_s"] for r in runs)
            record["batches"].append(
                {
                    "batch": batch,
                    "decode_tok_s": best,
                    "runs": runs,
                    "ms_per_step": 1000 * batch / best,
                }
            )
            print(f"{variant} batch {batch}: {best:.0f} tok/s", flush=True)
    finally:
        await engine.close()
    return record


def environment() -> dict[str, Any]:
    import torch
    import vllm

    return {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "vllm": vllm.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# -- batch-1 profile, in-process --------------------------------------------------------------


def profile_batch1(folder: Path, variant: str, out: Path, steps: int = 128) -> dict[str, Any]:
    """Decode ``steps`` ids at batch 1 under torch.profiler; GPU time vs wall time per step."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process
    import torch
    from vllm import LLM
    from vllm import SamplingParams as VllmSamplingParams

    from services.lm_engine.vllm_engine import engine_kwargs, register_vllm_step1

    settings = settings_for(variant, 8)
    if settings.compile:
        register_vllm_step1()
    llm = LLM(**engine_kwargs(settings, folder), load_format="dummy")
    prompt = {"prompt_token_ids": random_prompt(random.Random(5), PROMPT_LEN)}
    extra = {"repetition_aware": True} if settings.repetition_aware else None
    params = VllmSamplingParams(
        temperature=0.7, top_k=50, max_tokens=steps, ignore_eos=True, extra_args=extra
    )
    llm.generate([prompt], params, use_tqdm=False)  # warm-up
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        started = time.perf_counter()
        llm.generate([prompt], params, use_tqdm=False)
        wall = time.perf_counter() - started
    return summarize_profile(prof, variant, wall, steps, out)


def summarize_profile(prof: Any, variant: str, wall: float, steps: int, out: Path) -> dict:
    from torch.autograd import DeviceType

    averages = prof.key_averages()
    device = [e for e in averages if e.device_type == DeviceType.CUDA]
    gpu_us = sum(e.self_device_time_total for e in device)
    top = sorted(device, key=lambda e: e.self_device_time_total, reverse=True)[:12]
    kernels = [
        {
            "kernel": e.key[:90],
            "us_per_step": e.self_device_time_total / steps,
            "calls_per_step": e.count / steps,
        }
        for e in top
    ]
    (out / f"profile_{variant}.txt").write_text(
        averages.table(sort_by="self_cpu_time_total", row_limit=30)
        + "\n\n"
        + averages.table(sort_by="self_device_time_total", row_limit=30)
    )
    return {
        "variant": variant,
        "wall_ms_per_step": 1000 * wall / steps,
        "gpu_ms_per_step": gpu_us / 1000 / steps,
        "kernels_per_step": sum(e.count for e in device) / steps,
        "top_kernels": kernels,
    }


# -- the driver -------------------------------------------------------------------------------


def child_main(args: argparse.Namespace) -> None:
    folder, variant, results = Path(args.child[0]), args.child[1], Path(args.child[2])
    if args.profile_child:
        append_json(results, profile_batch1(folder, variant, results.parent))
        return
    batches = [int(b) for b in args.batches.split(",")]
    append_json(results, asyncio.run(run_variant(folder, variant, batches)))


def report(records: list[dict[str, Any]], profiles: list[dict[str, Any]]) -> str:
    batches = sorted({b["batch"] for r in records for b in r.get("batches", [])})
    headers = ["variant", *[f"batch {b}" for b in batches], "TTFT 300 ids (ms)", "start (s)"]
    rows = []
    for record in records:
        rates = {b["batch"]: b["decode_tok_s"] for b in record.get("batches", [])}
        rows.append(
            [record["variant"]]
            + [f"{rates[b]:.0f}" if b in rates else "—" for b in batches]
            + [f"{record.get('ttft_ms', float('nan')):.0f}", f"{record['start_s']:.0f}"]
        )
    text = markdown_table(headers, rows)
    for profile in profiles:
        text += (
            f"\n\nprofile {profile['variant']} batch 1: wall {profile['wall_ms_per_step']:.2f} "
            f"ms/step, GPU busy {profile['gpu_ms_per_step']:.2f} ms/step, "
            f"{profile['kernels_per_step']:.0f} kernels/step\n"
        )
        text += markdown_table(
            ["kernel", "us/step", "calls/step"],
            [
                [k["kernel"], f"{k['us_per_step']:.1f}", f"{k['calls_per_step']:.1f}"]
                for k in profile["top_kernels"]
            ],
        )
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--batches", default="1,8,32,64,128")
    parser.add_argument("--profile", default="", help="variants to profile at batch 1")
    parser.add_argument("--timeout", type=float, default=420, help="seconds per variant")
    parser.add_argument("--child", nargs=3, metavar=("FOLDER", "VARIANT", "RESULTS"))
    parser.add_argument("--profile-child", action="store_true")
    args = parser.parse_args(argv)
    if args.child:
        child_main(args)
        return 0
    out = out_dir(args.out)
    folder = write_shape_only_step1(
        Path(tempfile.mkdtemp(prefix="step1-tts3b-")) / "model", TTS_3B_SHAPE, 32768
    )
    results, profiles = out / "bench_lm.jsonl", out / "bench_lm_profile.jsonl"
    for variant in filter(None, args.variants.split(",")):
        child = ["--child", str(folder), variant, str(results), "--batches", args.batches]
        code, seconds = run_child("loadtests.gpu.bench_lm", child, args.timeout)
        print(f"variant {variant}: exit {code} after {seconds:.0f} s", flush=True)
    for variant in filter(None, args.profile.split(",")):
        child = ["--child", str(folder), variant, str(profiles), "--profile-child"]
        code, seconds = run_child("loadtests.gpu.bench_lm", child, args.timeout)
        print(f"profile {variant}: exit {code} after {seconds:.0f} s", flush=True)
    text = report(read_json_lines(results), read_json_lines(profiles))
    (out / "bench_lm.md").write_text(text + "\n")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
