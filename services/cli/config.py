"""`stepaudio config env [--write-readme]`: the environment variables of every service."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from pydantic_settings import BaseSettings

from services.cli import CliError
from services.common.settings import env_var_table

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- env-tables:start -->", "<!-- env-tables:end -->"
CLI_VARIABLES = (
    "### CLI (`stepaudio serve`, `demo`, `tts`)\n\n"
    "| Variable | Type | Default | Description |\n|---|---|---|---|\n"
    "| `STEPAUDIO_MODEL_DIR` | path | `models/tiny` | Model root for `serve`, `demo`, `tts`; "
    "the demo writes the tiny pack when it is unset. |"
)


def settings_classes() -> list[tuple[str, type[BaseSettings]]]:
    from services.controller.config import ControllerSettings
    from services.llm.config import LlmSettings
    from services.tokenizer.config import TokenizerSettings
    from services.tts.config import TtsSettings
    from services.vad.config import VadSettings

    return [
        ("Controller (`CONTROLLER_`)", ControllerSettings),
        ("VAD service (`VAD_`)", VadSettings),
        ("Tokenizer service (`TOKENIZER_`)", TokenizerSettings),
        ("LLM service (`LLM_`)", LlmSettings),
        ("TTS service (`TTS_`)", TtsSettings),
    ]


def env_tables() -> str:
    sections = [f"### {title}\n\n{env_var_table(cls)}" for title, cls in settings_classes()]
    return "\n\n".join([*sections, CLI_VARIABLES])


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("config", help="configuration reference")
    commands = parser.add_subparsers(dest="config_command", required=True)
    env = commands.add_parser("env", help="print every environment variable as markdown")
    env.add_argument("--write-readme", action="store_true", help="update README.md's tables")
    env.set_defaults(func=_env)


def _env(args: argparse.Namespace) -> int:
    tables = env_tables()
    if not args.write_readme:
        print(tables)
        return 0
    text = README.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise CliError(f"{README} has no {START} … {END} markers")
    README.write_text(pattern.sub(f"{START}\n{tables}\n{END}", text), encoding="utf-8")
    print(f"updated {README}")
    return 0
