"""`stepaudio serve [SERVICE]`: the whole local stack, or one service in the foreground."""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import threading
from pathlib import Path

from services.cli.model_dir import add_model_dir_argument, model_root
from services.cli.profiles import PROFILES
from services.cli.stack import SERVICES, LocalStack
from services.cli.supervisor import Supervisor
from services.models import layout

RUNNABLE = (*SERVICES, "controller")
# a vLLM engine with torch.compile and CUDA graphs takes 1-3 minutes to start
PROFILE_START_TIMEOUT_S = 900.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("serve", help="run the local stack or one service")
    parser.add_argument("service", nargs="?", choices=RUNNABLE, help="one service only")
    add_model_dir_argument(parser, layout.CHAT_DIR, needs_root=True, default=Path("models/tiny"))
    parser.add_argument("--port", type=int, default=8000, help="controller HTTP port")
    parser.add_argument("--host", default="127.0.0.1", help="controller bind address")
    parser.add_argument("--workdir", type=Path, default=Path("var/stack"), help="logs, redis data")
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        help="the whole stack on one host: gpu = vLLM Chat and TTS LMs, tokenizer and token2wav "
        "on one GPU, services started one after another; cpu = the same limits, torch engines "
        "(fills in only settings the environment leaves unset)",
    )
    parser.add_argument(
        "--max-sessions", type=int, default=256, help="with --profile: sessions to size limits for"
    )
    parser.set_defaults(func=_serve)


def apply_profile(stack: LocalStack, profile: str, max_sessions: int) -> None:
    from services.cli.profiles import resolve_profile

    env, dropped = resolve_profile(profile, max_sessions, os.environ)
    stack.extra_env.update(env)
    stack.sequential = True
    stack.start_timeout_s = PROFILE_START_TIMEOUT_S
    for name, value in sorted(env.items()):
        print(f"profile {profile}: {name}={value}", flush=True)
    if dropped:
        print(f"profile {profile}: not declared by this code, left out: {' '.join(dropped)}")


def _serve(args: argparse.Namespace) -> int:
    if args.service:  # one service, configured by its own environment variables
        runpy.run_module(f"services.{args.service}", run_name="__main__")
        return 0
    root = model_root(args.model_dir, layout.CHAT_DIR)
    stack = LocalStack(
        model_dir=root.resolve(),
        workdir=args.workdir.resolve(),
        host=args.host,
        controller_port=args.port,
        redis_url=os.environ.get("CONTROLLER_REDIS__URL"),
    )
    if args.profile:
        apply_profile(stack, args.profile, args.max_sessions)
    print(f"starting the stack (logs in {stack.workdir}) ...", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stack.start()
    supervisor = Supervisor(stack).start()  # a crashed part is restarted (backoff, logged)
    try:
        print(f"ready: {stack.url}  (browser client at {stack.url}/, Ctrl-C stops)", flush=True)
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping ...", flush=True)
        supervisor.stop()
        stack.stop()
    return 0
