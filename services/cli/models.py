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


def _tiny(args: argparse.Namespace) -> int:
    from services.models.tiny import write_tiny_pack

    started = time.perf_counter()
    root = write_tiny_pack(args.out, variant=args.variant, seed=args.seed)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    print(f"wrote {root} ({size / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s")
    return 0
