"""Shared helpers for the audio tokenizer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.models.audio_tokenizer import AudioTokenizerStream

DEMO_CLIP = Path(__file__).resolve().parents[4] / "services/models/tiny/assets/demo_question.wav"


def split_ids(ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved ids -> (linguistic codes, semantic codes)."""
    groups = np.asarray(ids, dtype=np.int64).reshape(-1, 5) - 65536
    return groups[:, :2].ravel(), groups[:, 2:].ravel() - 1024


def feed_in_chunks(
    stream: AudioTokenizerStream, samples: np.ndarray, chunk: int
) -> tuple[list[int], list[int]]:
    """(ids returned by feed calls, ids returned by finish)."""
    during: list[int] = []
    for start in range(0, len(samples), chunk):
        during += stream.feed(samples[start : start + chunk])
    return during, stream.finish()
