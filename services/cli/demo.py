"""`stepaudio demo`: tiny pack (unless a model root is configured), stack, one spoken exchange."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

from services.cli import CliError
from services.cli.clients import run_chat
from services.cli.model_dir import MODEL_DIR_ENV, model_root
from services.cli.realtime_client import RealtimeError
from services.cli.stack import LocalStack, free_port
from services.models import layout
from services.models.tiny import ASSETS, write_tiny_pack


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = subparsers.add_parser("demo", help="start the stack and hold one spoken exchange")
    demo.add_argument("--out", type=Path, default=Path("var/demo"))
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    out: Path = args.out.resolve()
    configured = os.environ.get(MODEL_DIR_ENV)  # the model root or one of its folders
    model_dir = (
        model_root(Path(configured), layout.CHAT_DIR) if configured else out / "models" / "tiny"
    )
    if not configured:
        print(f"writing the tiny model pack to {model_dir} ...", flush=True)
        write_tiny_pack(model_dir)
    stack = LocalStack(
        model_dir=model_dir.resolve(), workdir=out / "stack", controller_port=free_port()
    )
    print("starting the stack ...", flush=True)
    stack.start()
    try:
        print(
            f"stack ready at {stack.url}; speaking {ASSETS / 'demo_question.wav'} ...", flush=True
        )
        summary = asyncio.run(run_chat(stack.url, ASSETS / "demo_question.wav", out / "reply.wav"))
    except (OSError, RealtimeError, TimeoutError) as exc:
        raise CliError(
            f"the spoken exchange failed: {exc} (service logs in {stack.workdir})"
        ) from exc
    finally:
        stack.stop()
    print(json.dumps(summary, ensure_ascii=False))
    if not summary["audio_seconds"]:
        print("the reply has no audio", flush=True)
        return 1
    print(f"reply saved to {out / 'reply.wav'}")
    return 0
