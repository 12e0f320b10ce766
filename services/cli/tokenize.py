"""`stepaudio tokenize FILE --model-dir DIR`: audio file -> Step-Audio audio token ids."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from services.cli import CliError
from services.cli.model_dir import add_model_dir_argument, component_dir
from services.models import layout


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "tokenize",
        help="turn an audio file into interleaved audio token ids (Step-Audio-Tokenizer)",
        description="Prints the LLM ids (65536+code, 2 linguistic + 3 semantic per 120 ms).",
    )
    parser.add_argument("file", type=Path, help="audio file (WAV/FLAC/OGG, any rate 8-48 kHz)")
    add_model_dir_argument(parser, layout.TOKENIZER_DIR, needs_root=False)
    parser.add_argument("--json", action="store_true", help="print a JSON object instead")
    parser.add_argument("--trim", action="store_true", help="trim silence (TTS prompt recipe)")
    parser.set_defaults(func=_tokenize)


def _tokenize(args: argparse.Namespace) -> int:
    from services.common.audio import AudioError, decode_audio_file
    from services.models.audio_tokenizer import AudioTokenizer, CheckpointError
    from services.models.audio_tokens import GROUP_SIZE

    folder = component_dir(args.model_dir, layout.TOKENIZER_DIR)
    if not args.file.is_file():
        raise CliError(f"no such audio file: {args.file}")
    try:
        tokenizer = AudioTokenizer.from_pretrained(folder)
        samples, rate = decode_audio_file(args.file)
        ids = tokenizer.tokenize(samples, rate, trim=args.trim)
    except (AudioError, CheckpointError) as exc:
        raise CliError(str(exc)) from exc
    if args.json:
        report = {
            "token_ids": ids,
            "seconds": round(len(samples) / rate, 3),
            "groups": len(ids) // GROUP_SIZE,
        }
        print(json.dumps(report))
    else:
        print(" ".join(map(str, ids)))
    return 0
