"""`--model-dir` for every command: the model root or one of its component folders.

Which folder a user points at depends on what they downloaded; ``services.models.layout``
resolves either form, this module gives the commands one argument, help text and error.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from services.cli import CliError
from services.models import layout

MODEL_DIR_ENV = "STEPAUDIO_MODEL_DIR"


def add_model_dir_argument(
    parser: argparse.ArgumentParser,
    component: str,
    *,
    needs_root: bool,
    default: Path | None = None,
) -> None:
    """``--model-dir`` defaulting to $STEPAUDIO_MODEL_DIR, then ``default``. ``needs_root``:
    the command reads the root's other folders too, so any of its folders will do."""
    configured = os.environ.get(MODEL_DIR_ENV)
    folder = f"any of its folders (e.g. {component}/)" if needs_root else f"the {component}/ folder"
    fallback = f" or {default}" if default is not None else ""
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=Path(configured) if configured else default,
        help=f"the model root (holding {component}/) or {folder} "
        f"(default ${MODEL_DIR_ENV}{fallback})",
    )


def model_root(path: Path | None, component: str) -> Path:
    """The model root from ``--model-dir`` (the root or one of its folders)."""
    try:
        return layout.resolve_root(_given(path), component)
    except layout.ModelDirError as exc:
        raise CliError(f"{exc} (write a tiny pack: stepaudio models tiny --out DIR)") from exc


def component_dir(path: Path | None, component: str) -> Path:
    """``component``'s folder from ``--model-dir`` (the root or that folder)."""
    try:
        return layout.resolve_component(_given(path), component)
    except layout.ModelDirError as exc:
        raise CliError(str(exc)) from exc


def _given(path: Path | None) -> Path:
    if path is None:
        raise CliError(f"--model-dir is required (or set {MODEL_DIR_ENV})")
    return path
