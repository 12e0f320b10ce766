"""`stepaudio models ...`: model pack utilities."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("models", help="model pack utilities")
    commands = parser.add_subparsers(dest="models_command", required=True)
    tiny = commands.add_parser("tiny", help="write the tiny seeded model pack (real layouts)")
    tiny.add_argument("--out", type=Path, required=True, help="model root to write")
    tiny.add_argument("--variant", choices=("default", "aqaa"), default="default")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_tiny)
    dummy = commands.add_parser(
        "dummy", help="write every folder at the released sizes, random weights (GPU: seconds)"
    )
    dummy.add_argument("--out", type=Path, required=True, help="model root to write")
    dummy.add_argument(
        "--chat-layers",
        type=int,
        default=4,
        help="layers of the Chat stand-in at Step-Audio-Chat's width (released: 88)",
    )
    dummy.add_argument(
        "--device", default=None, help="where to draw weights (default: cuda if any)"
    )
    dummy.add_argument("--seed", type=int, default=0)
    dummy.set_defaults(func=_dummy)


def _tiny(args: argparse.Namespace) -> int:
    from services.models.tiny import write_tiny_pack

    started = time.perf_counter()
    root = write_tiny_pack(args.out, variant=args.variant, seed=args.seed)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    print(f"wrote {root} ({size / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s")
    return 0


def _dummy(args: argparse.Namespace) -> int:
    import json

    import torch

    from services.models.dummy import DummySizes, write_dummy_pack

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sizes = DummySizes().with_chat_layers(args.chat_layers)
    seconds = write_dummy_pack(args.out, sizes, seed=args.seed, device=device)
    total = sum(v for k, v in seconds.items() if k != "bytes")
    print(f"wrote {args.out} ({seconds['bytes'] / 1e9:.2f} GB) in {total:.1f} s on {device}")
    print(json.dumps(seconds))
    return 0
