"""The `stepaudio` command line.

Each sub-command lives in its own module exposing ``register(subparsers)``; the module
sets ``func`` on its parser. Modules are imported lazily at parse time only through
``register`` so that a CPU-only command never imports heavy optional dependencies.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# module names under services.cli, each with register(subparsers)
COMMAND_MODULES = [
    "models",
    "serve",
    "clients",
    "demo",
    "tokenize",
    "tts",
    "config",
    "keys",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stepaudio", description="Step-Audio realtime voice-dialogue serving backend"
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"services.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except CliError as exc:
        print(f"stepaudio: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder that cannot be read or written, a port in use
        print(f"stepaudio: error: {exc}", file=sys.stderr)
        return 2


class CliError(Exception):
    """An error to show the user as one line, without a traceback."""


if __name__ == "__main__":
    sys.exit(main())
