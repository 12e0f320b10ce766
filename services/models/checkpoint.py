"""Loading weights from Hugging Face style folders with loud, specific errors.

A checkpoint is either one ``model.safetensors`` / ``model-*.safetensors`` file or a sharded set
listed in ``model.safetensors.index.json``. Nothing is ever silently initialised: a missing
file, a missing or unexpected tensor, or a wrong shape raises CheckpointError naming the file
and the tensor.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(RuntimeError):
    """A checkpoint folder that does not match what the model needs."""


def weight_map(folder: Path) -> dict[str, Path]:
    """Tensor name → safetensors file, from the index or from the single weights file."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            mapping = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index ({exc})") from exc
        files = {name: folder / file for name, file in mapping.items()}
        for path in sorted(set(files.values())):
            if not path.is_file():
                raise CheckpointError(f"{index} lists {path.name}, which is missing in {folder}")
        return files
    singles = sorted(folder.glob("*.safetensors"))
    if len(singles) != 1:
        raise CheckpointError(
            f"{folder}: expected {INDEX_FILE} or exactly one *.safetensors file, "
            f"found {[p.name for p in singles]}"
        )
    with safe_open(str(singles[0]), framework="pt") as handle:
        return dict.fromkeys(handle.keys(), singles[0])  # noqa: SIM118 (safe_open API)


def load_tensors(
    folder: Path,
    expected: Mapping[str, tuple[int, ...]],
    *,
    dtype: torch.dtype | None = None,
    ignore: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """Load exactly the ``expected`` tensors (name → shape) from a folder, checking each one."""
    files = weight_map(folder)
    ignored = set(ignore)
    missing = [name for name in expected if name not in files]
    if missing:
        raise CheckpointError(
            f"{folder}: missing tensor(s) {missing[:5]}{' …' if len(missing) > 5 else ''} "
            f"(the checkpoint has {len(files)} tensors)"
        )
    unexpected = sorted(set(files) - set(expected) - ignored)
    if unexpected:
        raise CheckpointError(f"{folder}: unexpected tensor(s) {unexpected[:5]} in the checkpoint")
    tensors: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for name in expected:
        by_file.setdefault(files[name], []).append(name)
    for path, names in by_file.items():
        with safe_open(str(path), framework="pt") as handle:
            for name in names:
                tensor = handle.get_tensor(name)
                if tuple(tensor.shape) != tuple(expected[name]):
                    raise CheckpointError(
                        f"{path}: tensor {name} has shape {tuple(tensor.shape)}, "
                        f"the config needs {tuple(expected[name])}"
                    )
                tensors[name] = tensor.to(dtype) if dtype is not None else tensor
    return tensors
