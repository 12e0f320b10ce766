"""Shared test helpers: synthetic prompt audio, random audio ids and codes, metrics."""

from __future__ import annotations

import numpy as np
import torch

from services.models.audio_tokens import AUDIO_ID_OFFSET

PROMPT_SECONDS = 1.2
PROMPT_SAMPLE_RATE_HZ = 24000


def voiced_wav(seconds: float, sample_rate_hz: int, seed: int = 0) -> np.ndarray:
    """A speech-like test signal: a gliding harmonic tone with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate_hz)) / sample_rate_hz
    f0 = 160 + 30 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate_hz
    wav = sum(0.2 / k * np.sin(k * phase) for k in range(1, 6))
    return (wav + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def audio_ids(n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [AUDIO_ID_OFFSET + int(c) for c in rng.integers(0, 5120, n)]


def random_codes(n: int, seed: int = 1) -> list[int]:
    return np.random.default_rng(seed).integers(0, 5120, n).tolist()


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    error = np.sum((reference.astype(np.float64) - other) ** 2)
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / max(error, 1e-30)))
