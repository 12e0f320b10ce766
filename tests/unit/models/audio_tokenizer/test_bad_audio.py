"""Unusable audio is refused with AudioError and a stable code."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.audio import AudioError
from services.models.audio_tokenizer import AudioTokenizer


@pytest.mark.parametrize(
    ("samples", "code"),
    [
        (np.array([0.1, np.nan, 0.2], dtype=np.float32), "invalid_audio"),
        (np.array([0.1, np.inf], dtype=np.float64), "invalid_audio"),
        (np.zeros(0, dtype=np.float32), "empty_audio"),
        (np.zeros(100, dtype=np.uint8), "invalid_audio"),
        (np.zeros(100, dtype=np.complex64), "invalid_audio"),
        (np.array(["a", "b"]), "invalid_audio"),
        (np.zeros((2, 2, 2), dtype=np.float32), "invalid_audio"),
    ],
    ids=["nan", "inf", "empty", "uint8", "complex", "strings", "3d"],
)
def test_bad_samples(tokenizer: AudioTokenizer, samples: np.ndarray, code: str) -> None:
    with pytest.raises(AudioError) as error:
        tokenizer.tokenize(samples, 16_000)
    assert error.value.code == code
    assert str(error.value)


@pytest.mark.parametrize("rate", [0, 4_000, 7_999, 48_001, 96_000])
def test_unsupported_rates(tokenizer: AudioTokenizer, rate: int) -> None:
    with pytest.raises(AudioError) as error:
        tokenizer.tokenize(np.zeros(16_000, dtype=np.float32), rate)
    assert error.value.code == "unsupported_sample_rate"
    assert str(rate) in str(error.value)


def test_silence_is_valid_audio(tokenizer: AudioTokenizer) -> None:
    ids = tokenizer.tokenize(np.zeros(16_000, dtype=np.float32), 16_000)
    assert len(ids) // 5 == pytest.approx(1 / 0.12, abs=2)
