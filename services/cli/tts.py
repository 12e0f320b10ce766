"""`stepaudio tts TEXT -o out.wav --model-dir DIR [--voice NAME]`: local synthesis, no server.

Runs the same TtsEngine as the TTS service (Step1 TTS LM → streaming token2wav) in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np

from services.cli import CliError
from services.cli.model_dir import add_model_dir_argument, model_root
from services.common.audio import write_wav
from services.models import layout


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("tts", help="synthesize locally with the TTS-3B stack")
    parser.add_argument("text")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output WAV (22.05 kHz)")
    add_model_dir_argument(parser, layout.TTS_DIR, needs_root=True, default=Path("models/tiny"))
    parser.add_argument("--voice", default="Tingting")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--voices-dir", type=Path, default=Path("var/voices"))
    parser.set_defaults(func=_tts)


async def synthesize_locally(args: argparse.Namespace) -> tuple[np.ndarray, int, int]:
    from services.tts.config import TtsSettings
    from services.tts.engine import SynthesisOptions, TtsEngine, TtsModels

    settings = TtsSettings(
        model_dir=args.model_dir, voices_dir=args.voices_dir, device=args.device, warm_up=False
    )
    models = await asyncio.to_thread(TtsModels.load, settings)
    engine = TtsEngine(models, settings)
    await engine.start()
    try:
        options = SynthesisOptions(speed=args.speed, seed=args.seed)
        pieces, ids = [], 0
        async for piece in engine.synthesize(args.text, args.voice, options):
            pieces.append(piece.samples)
            ids += len(piece.token_ids)
            rate = piece.sample_rate_hz
    finally:
        await engine.close()
    audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    return audio, rate, ids


def _tts(args: argparse.Namespace) -> int:
    # the root: the TTS LM's siblings (Step-Audio-Tokenizer/, speakers/) are needed too
    args.model_dir = model_root(args.model_dir, layout.TTS_DIR)
    started = time.perf_counter()
    try:
        audio, rate, ids = asyncio.run(synthesize_locally(args))
    except (ValueError, KeyError) as exc:
        raise CliError(str(exc)) from exc
    write_wav(args.out, audio, rate)
    summary = {
        "out": str(args.out),
        "sample_rate_hz": rate,
        "audio_ids": ids,
        "audio_seconds": round(audio.size / rate, 3),
        "seconds": round(time.perf_counter() - started, 2),
    }
    print(json.dumps(summary))
    return 0
