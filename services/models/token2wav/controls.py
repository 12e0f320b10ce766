"""Decoding controls shared by the offline (model.py) and streaming (streaming.py) decoders."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_N_TIMESTEPS = 10  # upstream hard-codes 10 Euler steps
MIN_SPEED, MAX_SPEED = 0.5, 2.0
MAX_VOLUME = 10.0


def model_codes(vocab: int, codes: Sequence[int]) -> np.ndarray:
    """Validate flow codes; negatives are clamped to 0 inside the flow, as upstream does."""
    array = np.asarray(list(codes), dtype=np.int64).reshape(-1)
    if array.size and int(array.max()) >= vocab:
        raise ValueError(f"code {int(array.max())} is outside the flow vocabulary (< {vocab})")
    return array


def apply_volume(wav: np.ndarray, volume: float, limit: float = 0.99) -> np.ndarray:
    """Gain, then clip at ±limit so that a loud gain cannot wrap around in PCM conversion."""
    out = wav.astype(np.float32, copy=False)
    if volume != 1.0:
        out = np.clip(out * np.float32(volume), -limit, limit)
    return out


def check_controls(speed: float, volume: float, n_timesteps: int | None = None) -> None:
    if n_timesteps is not None and n_timesteps < 1:
        raise ValueError(f"n_timesteps must be at least 1, got {n_timesteps}")
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ValueError(f"speed {speed} is outside {MIN_SPEED}..{MAX_SPEED}")
    if not 0.0 <= volume <= MAX_VOLUME:
        raise ValueError(f"volume {volume} is outside 0..{MAX_VOLUME}")
