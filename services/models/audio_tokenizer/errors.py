"""Errors raised while loading a Step-Audio-Tokenizer folder."""

from __future__ import annotations

from pathlib import Path


class CheckpointError(RuntimeError):
    """A tokenizer file is missing, unreadable or does not match the expected layout.

    ``path`` is the offending file; ``tensor`` names the tensor when one is at fault.
    """

    def __init__(self, path: Path, problem: str, *, tensor: str | None = None) -> None:
        where = f"{path}" if tensor is None else f"{path} [tensor {tensor}]"
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.tensor = tensor


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise CheckpointError(path, "required file is missing")
    return path
