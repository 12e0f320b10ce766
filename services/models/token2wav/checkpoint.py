"""Strict loading of `flow.pt` / `hift.pt` with errors that name the file and the tensor."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

FLOW_FILE = "flow.pt"
HIFT_FILE = "hift.pt"
_LISTED = 5  # how many offending names an error message lists


class CheckpointError(RuntimeError):
    """A checkpoint file does not match the module built from cosyvoice.yaml."""

    def __init__(self, path: Path, message: str, tensors: list[str] | None = None) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.tensors = tensors or []


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or non-tensor pickles
        raise CheckpointError(path, f"cannot read checkpoint: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(path, "expected a state dict of tensors")
    return state


def load_strict(module: nn.Module, path: Path) -> None:
    """Copy every tensor of `path` into `module`; names and shapes must match exactly."""
    state = read_state_dict(path)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors {_listing(unexpected)}")
        raise CheckpointError(
            path,
            "; ".join(parts) + " (does cosyvoice.yaml match this checkpoint?)",
            missing + unexpected,
        )
    wrong = [
        f"{name}: checkpoint {tuple(state[name].shape)} vs model {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if state[name].shape != tensor.shape
    ]
    if wrong:
        names = [w.split(":", 1)[0] for w in wrong]
        raise CheckpointError(path, f"shape mismatch for {_listing(wrong)}", names)
    module.load_state_dict(state, strict=True)


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")
