"""Write the released-size dummy pack on a GPU host and load every folder with the real loaders.

    python -m loadtests.gpu.dummy_check [--root /tmp/dummy-pack] [--chat-layers 2] [--out DIR]

Times each part of `write_dummy_pack` (weights drawn on the GPU) and each load, runs one
short call through every model (TTS-3B and Chat stand-in forward, token2wav synthesize,
tokenizer codes), and writes dummy_check.json to --out ($OUT).
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loadtests.gpu.common import out_dir

for _name in ("soundfile",):  # reading files is not exercised here
    try:
        importlib.import_module(_name)
    except ImportError:
        sys.modules[_name] = types.ModuleType(_name)

from services.models import layout  # noqa: E402
from services.models.dummy import DummySizes, write_dummy_pack  # noqa: E402


def timed(fn: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return value, time.perf_counter() - started


def check_lm(folder: Path) -> dict[str, Any]:
    from services.models.step1.model import Step1ForCausalLM

    model, load_s = timed(
        lambda: Step1ForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device="cuda")
    )
    ids = torch.tensor([[1, 4] + [65536 + i for i in range(30)]], device="cuda")
    with torch.inference_mode():
        logits, forward_s = timed(lambda: model(ids))
    top = int(logits[0, -1].argmax())
    params = sum(p.numel() for p in model.parameters())
    model.to("meta")
    torch.cuda.empty_cache()
    return {"load_s": load_s, "forward_s": forward_s, "params": params, "argmax_id": top}


def check_vocoder(folder: Path) -> dict[str, Any]:
    from services.models.token2wav import SpeakerPrompt, Token2Wav
    from services.models.token2wav.features import SpeakerEncoder

    model, load_s = timed(
        lambda: Token2Wav.from_pretrained(folder, device="cuda", dtype=torch.bfloat16)
    )
    rng = np.random.default_rng(0)
    wav = (0.1 * rng.standard_normal(48_000)).astype(np.float32)
    embedding, campplus_s = timed(lambda: SpeakerEncoder(folder / "campplus.onnx").embed(wav))
    prompt = SpeakerPrompt(
        prompt_codes=rng.integers(0, 5120, 125),
        prompt_mel=(rng.standard_normal((258, 80)) - 5).astype(np.float32),
        embedding=embedding,
    )
    codes = rng.integers(0, 5120, 135).tolist()
    audio, synth_s = timed(lambda: model.synthesize(codes, prompt, generator=torch.Generator()))
    return {
        "load_s": load_s,
        "campplus_s": campplus_s,
        "synthesize_135_codes_s": synth_s,
        "audio_s": audio.size / model.sample_rate_hz,
        "finite": bool(np.isfinite(audio).all()),
        "flow_m_params": sum(p.numel() for p in model.flow.parameters()) / 1e6,
        "hift_m_params": sum(p.numel() for p in model.hift.parameters()) / 1e6,
    }


def check_tokenizer(folder: Path) -> dict[str, Any]:
    from services.models.audio_tokenizer.tokenizer import AudioTokenizer

    tokenizer, load_s = timed(lambda: AudioTokenizer.from_pretrained(folder, device="cuda"))
    t = np.arange(3 * 16_000) / 16_000
    speech = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(
        np.float32
    )
    codes, codes_s = timed(lambda: tokenizer.codes(speech, 16_000))
    return {"load_s": load_s, "codes_3s_audio_s": codes_s, "ids": len(codes.ids)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/dummy-pack"))
    parser.add_argument("--chat-layers", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    out = out_dir(args.out)
    shutil.rmtree(args.root, ignore_errors=True)
    sizes = DummySizes().with_chat_layers(args.chat_layers)
    result: dict[str, Any] = {"chat_layers": args.chat_layers}
    written, wall = timed(lambda: write_dummy_pack(args.root, sizes, device="cuda"))
    result["write"] = written | {"wall_s": wall}
    print(json.dumps(result), flush=True)
    checks = {
        "tts_lm": lambda: check_lm(layout.tts_dir(args.root)),
        "chat_lm": lambda: check_lm(layout.chat_dir(args.root)),
        "vocoder": lambda: check_vocoder(layout.vocoder_dir(args.root)),
        "tokenizer": lambda: check_tokenizer(layout.tokenizer_dir(args.root)),
    }
    for name, check in checks.items():
        try:
            result[name] = check()
        except Exception as exc:  # noqa: BLE001 - report every part
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(name, json.dumps(result[name]), flush=True)
    (out / "dummy_check.json").write_text(json.dumps(result, indent=2))
    return 0 if not any("error" in v for v in result.values() if isinstance(v, dict)) else 1


if __name__ == "__main__":
    sys.exit(main())
