"""token2wav (flow + HiFT) at CosyVoice-300M size on the GPU, random weights, public API.

    python -m loadtests.gpu.bench_token2wav [--out DIR] [--variants eager,graphs]
        [--batches 1,8,32,64] [--stream-batches 1,16,64]

A vocoder folder at the public CosyVoice-300M recipe size (6-block Conformer, 256-channel U-Net
with 4 blocks and 12 mid blocks, HiFT 512; 105 M + 20 M parameters) is written from the tiny
pack's yaml with the sizes replaced, with fan-in scaled random weights, and loaded with
``Token2Wav.from_pretrained(device="cuda", dtype=bfloat16)`` (bf16 flow, fp32 HiFT, as
upstream). Variants: ``eager`` (as loaded), ``graphs`` (``compile_for_gpu()``: padded,
bucketed flow replayed as CUDA graphs, batched streams), ``compiled`` (the same with the
estimator ``torch.compile``d inside the graphs). Measured per variant: offline ``synthesize``
RTF at batch 1, ``decode_batch`` of B utterances, streaming first-chunk latency (the ``feed``
call that returns the first audio) and RTF at batch 1, and B streams fed in lock-step through
``step_streams`` (first-chunk step time, audio seconds per wall second); plus the accuracy of
each variant's mel against an fp32 eager reference.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loadtests.gpu.common import markdown_table, out_dir

# the GPU image lacks these audio front-end packages; the decode path measured here never
# calls them (the speaker prompt is built directly), so empty modules let the imports pass
for _name in ("kaldi_native_fbank", "soxr", "soundfile"):
    try:
        importlib.import_module(_name)
    except ImportError:
        sys.modules[_name] = types.ModuleType(_name)

from services.models.audio_tokens import GROUP_SIZE, TOKENS_PER_SECOND  # noqa: E402
from services.models.dummy import VOCODER_RELEASED  # noqa: E402
from services.models.tiny import token2wav as tiny  # noqa: E402
from services.models.token2wav import (  # noqa: E402
    AccelOptions,
    SpeakerPrompt,
    StreamStep,
    Token2Wav,
    step_streams,
)
from services.models.token2wav.config import parse_config  # noqa: E402
from services.models.token2wav.flow import MaskedDiffWithXvec  # noqa: E402
from services.models.token2wav.hift import HiFTGenerator  # noqa: E402
from services.models.token2wav.yaml_loader import load_hyperpyyaml_safe  # noqa: E402

SEED = 0
PROMPT_CODES = 125  # a 3 s speaker prompt, re-run with every call as upstream does
CHUNK_CODES = 135  # 3.24 s of audio per batched item
RECIPE_SIZES = list(VOCODER_RELEASED)  # tiny yaml → CosyVoice-300M recipe sizes


def recipe_yaml(tiny_sizes: bool = False) -> str:
    text = tiny.TINY_YAML.format(folder="CosyVoice-300M-25Hz")
    for old, new in [] if tiny_sizes else RECIPE_SIZES:
        if old not in text:
            raise RuntimeError(f"the tiny yaml changed: {old!r} not found")
        text = text.replace(old, new)
    return text


def write_recipe_folder(folder: Path, tiny_sizes: bool = False) -> dict[str, float]:
    """cosyvoice.yaml, flow.pt, hift.pt, campplus.onnx at recipe size (or the tiny pack's
    sizes, for smoke runs on the CPU); returns M parameters."""
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    text = recipe_yaml(tiny_sizes)
    (folder / "cosyvoice.yaml").write_text(text, encoding="utf-8")
    config = parse_config(load_hyperpyyaml_safe(text))
    generator = torch.Generator().manual_seed(SEED)
    flow, hift = MaskedDiffWithXvec(config.flow), HiFTGenerator(config.hift)
    flow_state = tiny._random_state(flow, generator)
    hift_state = tiny._random_state(hift, generator)
    tiny._shape_hift(hift_state)
    torch.save(flow_state, folder / "flow.pt")
    torch.save(hift_state, folder / "hift.pt")
    onnx.save(tiny._campplus_model(np.random.default_rng(SEED)), str(folder / "campplus.onnx"))
    return {
        "flow_m_params": sum(t.numel() for t in flow_state.values()) / 1e6,
        "hift_m_params": sum(t.numel() for t in hift_state.values()) / 1e6,
    }


def speaker(rng: np.random.Generator) -> SpeakerPrompt:
    """A 3 s prompt: codes, a plausible log-mel and an x-vector (random, seeded)."""
    frames = round(PROMPT_CODES / TOKENS_PER_SECOND * 22050 / 256)
    return SpeakerPrompt(
        prompt_codes=rng.integers(0, 5120, PROMPT_CODES),
        prompt_mel=(rng.standard_normal((frames, 80)) - 5).astype(np.float32),
        embedding=rng.standard_normal(192).astype(np.float32),
    )


VARIANTS: dict[str, AccelOptions | None] = {
    "eager": None,
    "graphs": AccelOptions(),
    "compiled": AccelOptions(compile_estimator=True),
}
N_TIMESTEPS = 10
STREAM_CODES = 420  # 10.1 s per streamed utterance
WARM_FRAMES = (320, 384, 448, 512, 576)  # padded frame buckets of 3 s prompt + stream chunks


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_ms(fn: Callable[[], Any], repeats: int = 5) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def audio_seconds(model: Token2Wav, codes: int) -> float:
    return model.mel_frames(codes) * 256 / model.sample_rate_hz


def ensure_folder(folder: Path | None, tiny_sizes: bool = False) -> tuple[Path, dict[str, float]]:
    """The recipe-size folder: written once (reused when it already holds flow.pt)."""
    name = "cosyvoice-tiny" if tiny_sizes else "cosyvoice-300m"
    folder = folder or Path(tempfile.gettempdir()) / name / "CosyVoice-300M-25Hz"
    if (folder / "flow.pt").is_file() and (folder / "hift.pt").is_file():
        return folder, {}
    return folder, write_recipe_folder(folder, tiny_sizes)


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load(folder: Path, variant: str, dtype: torch.dtype = torch.bfloat16) -> Token2Wav:
    model = Token2Wav.from_pretrained(folder, device=device(), dtype=dtype)
    options = VARIANTS[variant]
    return model.compile_for_gpu(options) if options is not None else model


def warm_up(model: Token2Wav) -> dict[str, float]:
    """Capture the flow graphs of every stream chunk shape × batch bucket before timing."""
    if model.solver is None:
        return {}
    started = time.perf_counter()
    rate = model.flow.decoder.inference_cfg_rate
    with torch.inference_mode():
        shapes = model.solver.warm_up(WARM_FRAMES, N_TIMESTEPS, rate)
    sync()
    return {"graph_shapes": shapes, "capture_s": time.perf_counter() - started}


def offline_rows(model: Token2Wav, prompt: SpeakerPrompt, rng: np.random.Generator) -> list:
    rows = []
    for n in (45, 135, 420):
        codes = rng.integers(0, 5120, n).tolist()
        ms = timed_ms(lambda c=codes: model.synthesize(c, prompt, generator=torch.Generator()))
        rows.append({"codes": n, "ms": ms, "rtf": ms / 1000 / audio_seconds(model, n)})
    return rows


def batch_rows(
    model: Token2Wav, prompt: SpeakerPrompt, rng: np.random.Generator, batches: list[int]
) -> list:
    rows = []
    for batch in batches:
        codes = [rng.integers(0, 5120, CHUNK_CODES).tolist() for _ in range(batch)]
        ms = timed_ms(lambda c=codes, b=batch: model.decode_batch(c, [prompt] * b), repeats=3)
        audio = batch * audio_seconds(model, CHUNK_CODES)
        rows.append({"batch": batch, "ms": ms, "audio_s_per_wall_s": audio / (ms / 1000)})
    return rows


def stream_row(
    model: Token2Wav, prompt: SpeakerPrompt, rng: np.random.Generator, **options: Any
) -> dict:
    codes = rng.integers(0, 5120, STREAM_CODES).tolist()

    def run() -> tuple[float, float]:
        stream = model.stream(prompt, generator=torch.Generator().manual_seed(SEED), **options)
        first, total = float("nan"), 0.0
        for start in range(0, len(codes), GROUP_SIZE):  # the LM emits 5-code groups
            began = time.perf_counter()
            out = stream.feed(codes[start : start + GROUP_SIZE])
            sync()
            total += time.perf_counter() - began
            if out.size and first != first:  # first audio (nan until then)
                first = time.perf_counter() - began
        began = time.perf_counter()
        stream.finish()
        sync()
        return first, total + time.perf_counter() - began

    run()  # warm-up
    firsts, totals = zip(*(run() for _ in range(3)), strict=True)
    return {
        "first_chunk_ms": 1000 * statistics.median(firsts),
        "first_chunk_ms_min": 1000 * min(firsts),
        "first_chunk_codes": model.stream(prompt, **options).first_chunk_tokens,
        "stream_rtf": statistics.median(totals) / audio_seconds(model, len(codes)),
    }


def lockstep_row(
    model: Token2Wav, prompt: SpeakerPrompt, rng: np.random.Generator, batch: int
) -> dict:
    """`batch` streams fed one 5-code group each per `step_streams` call, in lock-step (every
    chunk of every stream fires in the same step: the worst case for a step's latency)."""
    codes = [rng.integers(0, 5120, STREAM_CODES).tolist() for _ in range(batch)]

    def run() -> tuple[float, float, float]:
        streams = [
            model.stream(prompt, generator=torch.Generator().manual_seed(SEED + i))
            for i in range(batch)
        ]
        first, longest, total = float("nan"), 0.0, 0.0
        for start in range(0, STREAM_CODES, GROUP_SIZE):
            last = start + GROUP_SIZE >= STREAM_CODES
            steps = [
                StreamStep(s, c[start : start + GROUP_SIZE], last)
                for s, c in zip(streams, codes, strict=True)
            ]
            began = time.perf_counter()
            out = step_streams(model, steps)
            sync()
            took = time.perf_counter() - began
            total += took
            longest = max(longest, took)
            if out[0].size and first != first:
                first = took
        return first, longest, total

    run()  # warm-up (captures any shape the warm-up grid missed)
    firsts, longests, totals = zip(*(run() for _ in range(2)), strict=True)
    audio = batch * audio_seconds(model, STREAM_CODES)
    return {
        "batch": batch,
        "first_chunk_step_ms": 1000 * statistics.median(firsts),
        "longest_step_ms": 1000 * statistics.median(longests),
        "audio_s_per_wall_s": audio / statistics.median(totals),
    }


def accuracy(
    folder: Path, models: dict[str, Token2Wav], prompt: SpeakerPrompt, rng: np.random.Generator
) -> dict[str, float]:
    """‖mel − fp32 eager mel‖ / ‖fp32 eager mel‖ for each variant (same codes, same noise)."""
    codes = rng.integers(0, 5120, CHUNK_CODES).tolist()

    def mel(model: Token2Wav) -> np.ndarray:
        return model.generate_mel(codes, prompt, generator=torch.Generator().manual_seed(SEED))

    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        reference = mel(Token2Wav.from_pretrained(folder, device=device(), dtype=torch.float32))
    finally:
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
    scale = float(np.linalg.norm(reference))
    out = {
        f"{name}_vs_fp32": float(np.linalg.norm(mel(m) - reference)) / scale
        for name, m in models.items()
    }
    if "eager" in models:
        eager = mel(models["eager"])
        for name, m in models.items():
            if name != "eager":
                out[f"{name}_vs_eager_bf16"] = float(
                    np.linalg.norm(mel(m) - eager) / np.linalg.norm(eager)
                )
    return out


def flow_replay_rows(model: Token2Wav) -> list[dict[str, float]]:
    """The flow's Euler loop alone (graph replay + input copies), random inputs."""
    solver = model.solver
    assert solver is not None
    rate = model.flow.decoder.inference_cfg_rate
    generator = torch.Generator().manual_seed(SEED)
    rows = []
    for batch, frames in ((1, 384), (1, 576), (16, 576), (64, 576)):
        shape = (batch, 80, frames)
        noise, mu, cond = (torch.randn(*shape, generator=generator).to(device()) for _ in "abc")
        mu, cond = mu.to(model.flow.dtype), cond.to(model.flow.dtype)
        spks = torch.randn(batch, 80, generator=generator).to(device(), model.flow.dtype)

        def run(n=noise, m=mu, s=spks, c=cond, b=batch, f=frames) -> None:
            with torch.inference_mode():
                solver.solve(n, m, s, c, [f] * b, N_TIMESTEPS, rate)

        rows.append({"batch": batch, "frames": frames, "ms": timed_ms(run, repeats=10)})
    return rows


def profile_flow(model: Token2Wav, out: Path, name: str) -> None:
    """torch.profiler tables of the flow loop at B=1 × 384 and B=16 × 576 frames (CUDA graph
    replays show their kernels) → profile_flow_<variant>_<B>x<T>.txt."""
    from torch.profiler import ProfilerActivity, profile

    solver = model.solver
    assert solver is not None
    rate = model.flow.decoder.inference_cfg_rate
    for batch, frames in ((1, 384), (16, 576)):
        dtype = model.flow.dtype
        x = [torch.randn(batch, 80, frames, device=device(), dtype=dtype) for _ in range(3)]
        spks = torch.randn(batch, 80, device=device(), dtype=dtype)
        with torch.inference_mode():
            solver.solve(*x[:2], spks, x[2], [frames] * batch, N_TIMESTEPS, rate)
            sync()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                solver.solve(*x[:2], spks, x[2], [frames] * batch, N_TIMESTEPS, rate)
                sync()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30)
        (out / f"profile_flow_{name}_{batch}x{frames}.txt").write_text(table)


def measure(
    model: Token2Wav,
    prompt: SpeakerPrompt,
    batches: list[int],
    stream_batches: list[int],
) -> dict[str, Any]:
    rng = np.random.default_rng(SEED)
    row: dict[str, Any] = {"warm_up": warm_up(model)}
    row["offline"] = offline_rows(model, prompt, rng)
    row["batched"] = batch_rows(model, prompt, rng, batches)
    row["stream"] = stream_row(model, prompt, rng)
    row["stream_first_hop_15"] = stream_row(model, prompt, rng, first_hop_tokens=15)
    row["lockstep"] = [lockstep_row(model, prompt, rng, b) for b in stream_batches]
    if model.solver is not None:
        row["flow_replay_ms"] = flow_replay_rows(model)
        row["graphs"] = {
            "shapes": len(model.solver.graphs),
            "captures": model.solver.graphs.captures,
        }
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out")
    parser.add_argument("--folder", type=Path, help="recipe-size folder (written if missing)")
    parser.add_argument("--variants", default="eager,graphs")
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--stream-batches", default="1,16,64")
    parser.add_argument("--eager-stream-batches", default="16")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CPU smoke run)")
    parser.add_argument("--profile", action="store_true", help="profile the flow loop")
    args = parser.parse_args(argv)
    out = out_dir(args.out)
    folder, sizes = ensure_folder(args.folder, args.tiny)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    result: dict[str, Any] = {"gpu": gpu, **sizes, "variants": {}}
    prompt = speaker(np.random.default_rng(SEED))
    batches = [int(b) for b in args.batches.split(",")]
    models: dict[str, Token2Wav] = {}
    for variant in args.variants.split(","):
        started = time.perf_counter()
        model = models[variant] = load(folder, variant)
        stream_batches = args.eager_stream_batches if variant == "eager" else args.stream_batches
        row = measure(model, prompt, batches, [int(b) for b in stream_batches.split(",")])
        if args.profile and model.solver is not None:
            profile_flow(model, out, variant)
        row["wall_s"] = time.perf_counter() - started
        result["variants"][variant] = row
        (out / "bench_token2wav.json").write_text(json.dumps(result, indent=2))
        print(report_variant(variant, row), flush=True)
    result["accuracy"] = accuracy(folder, models, prompt, np.random.default_rng(SEED + 1))
    (out / "bench_token2wav.json").write_text(json.dumps(result, indent=2))
    print("mel error (relative L2):", json.dumps(result["accuracy"]), flush=True)
    print(report(result), flush=True)
    return 0


def report_variant(name: str, row: dict[str, Any]) -> str:
    stream, fast = row["stream"], row["stream_first_hop_15"]
    lockstep = ", ".join(
        f"B={r['batch']}: first {r['first_chunk_step_ms']:.0f} ms, longest "
        f"{r['longest_step_ms']:.0f} ms, {r['audio_s_per_wall_s']:.1f} audio s/s"
        for r in row["lockstep"]
    )
    replay = ", ".join(
        f"B={r['batch']}×{r['frames']}: {r['ms']:.1f} ms" for r in row.get("flow_replay_ms", [])
    )
    return (
        f"== {name} ({row['wall_s']:.0f} s, warm-up {row['warm_up']}; flow loop {replay}): "
        "first chunk "
        f"{stream['first_chunk_ms']:.1f} ms after {stream['first_chunk_codes']} codes "
        f"({fast['first_chunk_ms']:.1f} ms after {fast['first_chunk_codes']}), stream RTF "
        f"{stream['stream_rtf']:.3f}; lock-step {lockstep}"
    )


def report(result: dict[str, Any]) -> str:
    variants = result["variants"]
    names = list(variants)
    first = variants[names[0]]
    offline = markdown_table(
        ["codes (batch 1)", *[f"{n} ms (RTF)" for n in names]],
        [
            [
                r["codes"],
                *[
                    f"{variants[n]['offline'][i]['ms']:.1f} "
                    f"({variants[n]['offline'][i]['rtf']:.3f})"
                    for n in names
                ],
            ]
            for i, r in enumerate(first["offline"])
        ],
    )
    batched = markdown_table(
        [f"decode_batch B × {CHUNK_CODES} codes", *[f"{n} ms (audio s/s)" for n in names]],
        [
            [
                r["batch"],
                *[
                    f"{variants[n]['batched'][i]['ms']:.1f} "
                    f"({variants[n]['batched'][i]['audio_s_per_wall_s']:.0f})"
                    for n in names
                ],
            ]
            for i, r in enumerate(first["batched"])
        ],
    )
    streams = markdown_table(
        ["variant", "first chunk (45 codes)", "first chunk (30 codes)", "stream RTF (B=1)"],
        [
            [
                n,
                f"{v['stream']['first_chunk_ms']:.1f} ms",
                f"{v['stream_first_hop_15']['first_chunk_ms']:.1f} ms",
                f"{v['stream']['stream_rtf']:.3f}",
            ]
            for n, v in variants.items()
        ],
    )
    lockstep = markdown_table(
        ["variant", "streams in lock-step", "first-chunk step", "longest step", "audio s/s"],
        [
            [
                n,
                r["batch"],
                f"{r['first_chunk_step_ms']:.1f} ms",
                f"{r['longest_step_ms']:.1f} ms",
                f"{r['audio_s_per_wall_s']:.1f}",
            ]
            for n, v in variants.items()
            for r in v["lockstep"]
        ],
    )
    return f"{offline}\n\n{batched}\n\n{streams}\n\n{lockstep}"


if __name__ == "__main__":
    sys.exit(main())
