"""Reading the tokenizer's weight files: model.pt (encoder part), am.mvn and the k-means codebook.

Every check names the file (and the tensor) at fault, so a broken or mismatched download is
diagnosed from the message alone.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from services.models.audio_tokenizer.errors import CheckpointError, require_file

log = logging.getLogger(__name__)

ENCODER_PREFIX = "encoder."
# wrappers FunASR's load_pretrained_model unwraps, in its order
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_DDP_PREFIX = "module."


def load_encoder_state(path: Path) -> dict[str, torch.Tensor]:
    """The ``encoder.*`` tensors of a FunASR checkpoint, prefix removed; other keys ignored."""
    state = _unwrap(_torch_load(require_file(path)), path)
    encoder = {
        name[len(ENCODER_PREFIX) :]: tensor
        for name, tensor in _strip_ddp(state).items()
        if name.startswith(ENCODER_PREFIX) and isinstance(tensor, torch.Tensor)
    }
    if not encoder:
        raise CheckpointError(path, "no 'encoder.*' tensors in the checkpoint")
    return encoder


def check_tensors(
    path: Path, expected: Mapping[str, torch.Size], found: Mapping[str, torch.Tensor]
) -> None:
    """Every expected tensor present with its shape; extra encoder tensors are only logged."""
    for name, shape in expected.items():
        tensor = found.get(name)
        if tensor is None:
            raise CheckpointError(path, "missing tensor", tensor=ENCODER_PREFIX + name)
        if not isinstance(tensor, torch.Tensor) or tensor.shape != shape:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor)
            raise CheckpointError(
                path, f"shape {got} != expected {tuple(shape)}", tensor=ENCODER_PREFIX + name
            )
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        log.warning(
            "%s: ignoring %d unexpected encoder tensors, e.g. %s",
            path,
            len(unexpected),
            unexpected[:3],
        )


def _torch_load(path: Path) -> object:
    try:
        # mmap keeps the 0.9 GB Paraformer (mostly decoder weights we drop) out of RAM
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError):
        pass  # legacy (non-zip) torch.save files cannot be memory-mapped; retry plainly
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise CheckpointError(path, f"cannot load torch checkpoint: {exc}") from exc


def _unwrap(state: object, path: Path) -> dict[str, object]:
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(path, f"expected a state dict, got {type(state).__name__}")
    return state


def _strip_ddp(state: dict[str, object]) -> dict[str, object]:
    return {k[len(_DDP_PREFIX) :] if k.startswith(_DDP_PREFIX) else k: v for k, v in state.items()}


@dataclass(frozen=True)
class Cmvn:
    """Kaldi nnet CMVN: features are mapped to ``(x + shift) * scale``."""

    shift: np.ndarray
    scale: np.ndarray

    def apply(self, features: np.ndarray) -> np.ndarray:
        return ((features + self.shift) * self.scale).astype(np.float32, copy=False)


_COMPONENT = re.compile(
    r"<(AddShift|Rescale)>\s+(\d+)\s+(\d+)\s+<LearnRateCoef>\s+\S+\s+\[([^\]]*)\]"
)


def load_cmvn(path: Path, dim: int) -> Cmvn:
    """Parse ``am.mvn`` (Kaldi nnet text with <AddShift> and <Rescale> components)."""
    try:
        text = require_file(path).read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise CheckpointError(path, f"cannot read CMVN file: {exc}") from exc
    vectors: dict[str, np.ndarray] = {}
    for component, out_dim, _in_dim, values in _COMPONENT.findall(text):
        try:
            vector = np.array(values.split(), dtype=np.float32)
        except ValueError as exc:
            raise CheckpointError(path, f"<{component}> has a non-numeric value") from exc
        if vector.size != int(out_dim):
            raise CheckpointError(
                path, f"<{component}> declares {out_dim} values, has {vector.size}"
            )
        vectors[component] = vector
    for component in ("AddShift", "Rescale"):
        if component not in vectors:
            raise CheckpointError(path, f"no <{component}> <LearnRateCoef> [ ... ] vector")
        if vectors[component].size != dim:
            raise CheckpointError(
                path, f"<{component}> has {vectors[component].size} values, features have {dim}"
            )
    return Cmvn(shift=vectors["AddShift"], scale=vectors["Rescale"])


def load_codebook(path: Path, codes: int, dim: int) -> np.ndarray:
    """k-means centroids (codes x dim float32) from ``linguistic_tokenizer.npy``."""
    try:
        centroids = np.load(require_file(path), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CheckpointError(path, f"cannot read .npy codebook: {exc}") from exc
    if centroids.shape != (codes, dim):
        raise CheckpointError(
            path, f"codebook shape {centroids.shape} != ({codes}, {dim}) (codes, encoder output)"
        )
    if not np.isfinite(centroids).all():
        raise CheckpointError(path, "codebook contains NaN or infinite values")
    return np.ascontiguousarray(centroids, dtype=np.float32)
