"""token2wav (flow + HiFT) at CosyVoice-300M size on the GPU, random weights, public API.

    python -m loadtests.gpu.bench_token2wav [--out DIR] [--batches 1,8,32,64]

A vocoder folder at the public CosyVoice-300M recipe size (6-block Conformer, 256-channel U-Net
with 4 blocks and 12 mid blocks, HiFT 512; 105 M + 20 M parameters) is written from the tiny
pack's yaml with the sizes replaced, with fan-in scaled random weights, and loaded with
``Token2Wav.from_pretrained(device="cuda", dtype=bfloat16)`` (bf16 flow, fp32 HiFT, as
upstream). Measured: offline ``synthesize`` RTF at batch 1, ``decode_batch`` of B utterances
(audio seconds produced per wall second bounds the real-time streams one GPU can feed), and
streaming first-chunk latency (compute of the ``feed`` call that returns the first audio).
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
from services.models.tiny import token2wav as tiny  # noqa: E402
from services.models.token2wav import SpeakerPrompt, Token2Wav  # noqa: E402
from services.models.token2wav.config import parse_config  # noqa: E402
from services.models.token2wav.flow import MaskedDiffWithXvec  # noqa: E402
from services.models.token2wav.hift import HiFTGenerator  # noqa: E402
from services.models.token2wav.yaml_loader import load_hyperpyyaml_safe  # noqa: E402

SEED = 0
PROMPT_CODES = 125  # a 3 s speaker prompt, re-run with every call as upstream does
CHUNK_CODES = 135  # 3.24 s of audio per batched item
# tiny yaml → CosyVoice-300M recipe sizes
RECIPE_SIZES = [
    ("text_encoder_input_size: 32", "text_encoder_input_size: 512"),
    ("output_size: 32\n", "output_size: 512\n"),
    ("attention_heads: 2\n", "attention_heads: 8\n"),
    ("linear_units: 64\n", "linear_units: 2048\n"),
    ("num_blocks: 2\n", "num_blocks: 6\n"),
    ("sampling_ratios: [1, 1]", "sampling_ratios: [1, 1, 1, 1]"),
    ("channels: [32, 32]", "channels: [256, 256]"),
    ("attention_head_dim: 16", "attention_head_dim: 64"),
    ("n_blocks: 1\n", "n_blocks: 4\n"),
    ("num_mid_blocks: 1\n", "num_mid_blocks: 12\n"),
    ("num_heads: 2\n", "num_heads: 8\n"),
    ("base_channels: 32", "base_channels: 512"),
    ("cond_channels: 32", "cond_channels: 512"),
]


def recipe_yaml() -> str:
    text = tiny.TINY_YAML.format(folder="CosyVoice-300M-25Hz")
    for old, new in RECIPE_SIZES:
        if old not in text:
            raise RuntimeError(f"the tiny yaml changed: {old!r} not found")
        text = text.replace(old, new)
    return text


def write_recipe_folder(folder: Path) -> dict[str, float]:
    """cosyvoice.yaml, flow.pt, hift.pt, campplus.onnx at recipe size; returns M parameters."""
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    text = recipe_yaml()
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


def timed_ms(fn: Callable[[], Any], repeats: int = 5) -> float:
    fn()  # warm-up
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def audio_seconds(model: Token2Wav, codes: int) -> float:
    return model.mel_frames(codes) * 256 / model.sample_rate_hz


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


def stream_row(model: Token2Wav, prompt: SpeakerPrompt, rng: np.random.Generator) -> dict:
    codes = rng.integers(0, 5120, 420).tolist()

    def run() -> tuple[float, float]:
        stream = model.stream(prompt, generator=torch.Generator().manual_seed(SEED))
        first, total = float("nan"), 0.0
        for start in range(0, len(codes), GROUP_SIZE):  # the LM emits 5-code groups
            began = time.perf_counter()
            out = stream.feed(codes[start : start + GROUP_SIZE])
            torch.cuda.synchronize()
            total += time.perf_counter() - began
            if out.size and first != first:  # first audio (nan until then)
                first = time.perf_counter() - began
        began = time.perf_counter()
        stream.finish()
        torch.cuda.synchronize()
        return first, total + time.perf_counter() - began

    run()  # warm-up
    firsts, totals = zip(*(run() for _ in range(3)), strict=True)
    return {
        "first_chunk_ms": 1000 * statistics.median(firsts),
        "first_chunk_codes": stream_first_codes(model, prompt),
        "stream_rtf": statistics.median(totals) / audio_seconds(model, len(codes)),
    }


def stream_first_codes(model: Token2Wav, prompt: SpeakerPrompt) -> int:
    return model.stream(prompt).first_chunk_tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out")
    parser.add_argument("--batches", default="1,8,32,64")
    args = parser.parse_args(argv)
    out = out_dir(args.out)
    folder = Path(tempfile.mkdtemp(prefix="cosyvoice-300m-")) / "CosyVoice-300M-25Hz"
    result: dict[str, Any] = write_recipe_folder(folder)
    model = Token2Wav.from_pretrained(folder, device="cuda", dtype=torch.bfloat16)
    rng = np.random.default_rng(SEED)
    prompt = speaker(rng)
    result["gpu"] = torch.cuda.get_device_name(0)
    result["offline"] = offline_rows(model, prompt, rng)
    result["batched"] = batch_rows(model, prompt, rng, [int(b) for b in args.batches.split(",")])
    result["stream"] = stream_row(model, prompt, rng)
    (out / "bench_token2wav.json").write_text(json.dumps(result, indent=2))
    print(report(result), flush=True)
    return 0


def report(result: dict[str, Any]) -> str:
    offline = markdown_table(
        ["codes (batch 1)", "ms", "RTF"],
        [[r["codes"], f"{r['ms']:.0f}", f"{r['rtf']:.3f}"] for r in result["offline"]],
    )
    batched = markdown_table(
        [f"batch × {CHUNK_CODES} codes", "ms", "audio s per wall s"],
        [
            [r["batch"], f"{r['ms']:.0f}", f"{r['audio_s_per_wall_s']:.1f}"]
            for r in result["batched"]
        ],
    )
    stream = result["stream"]
    return (
        f"flow {result['flow_m_params']:.1f} M, HiFT {result['hift_m_params']:.2f} M params\n"
        f"{offline}\n\n{batched}\n\nstreaming: first chunk {stream['first_chunk_ms']:.0f} ms "
        f"compute after {stream['first_chunk_codes']} codes, RTF {stream['stream_rtf']:.3f}"
    )


if __name__ == "__main__":
    sys.exit(main())
