"""Shared PCM helpers."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.audio import (
    AudioError,
    StreamResampler,
    as_float_mono,
    check_sample_rate,
    float_to_pcm16,
    pcm16_to_float,
    resample,
)


def test_int16_stereo_is_scaled_then_averaged() -> None:
    stereo = np.array([[16384, 16384], [-16384, 0]], dtype=np.int16)
    assert as_float_mono(stereo).tolist() == [0.5, -0.25]


@pytest.mark.parametrize(
    ("samples", "code"),
    [
        (np.zeros(0, dtype=np.float32), "empty_audio"),
        (np.array([0.0, np.nan], dtype=np.float32), "invalid_audio"),
        (np.array([0.0, np.inf]), "invalid_audio"),
        (np.array(["a"]), "invalid_audio"),
        (np.zeros((2, 2, 2), dtype=np.float32), "invalid_audio"),
    ],
)
def test_bad_audio_is_rejected_with_a_code(samples: np.ndarray, code: str) -> None:
    with pytest.raises(AudioError) as error:
        as_float_mono(samples)
    assert error.value.code == code


def test_sample_rate_bounds_and_pcm16_round_trip() -> None:
    assert check_sample_rate(8000) == 8000
    with pytest.raises(AudioError, match="outside"):
        check_sample_rate(96_000)
    samples = np.array([0.0, 0.5, -0.5, 0.999], dtype=np.float32)
    assert np.allclose(pcm16_to_float(float_to_pcm16(samples)), samples, atol=1e-4)
    with pytest.raises(AudioError):
        pcm16_to_float(b"\x00")


def test_stream_resampling_matches_whole_clip_length() -> None:
    tone = np.sin(2 * np.pi * 440 * np.arange(48_000) / 48_000).astype(np.float32)
    whole = resample(tone, 48_000, 16_000)
    stream = StreamResampler(48_000, 16_000)
    pieces = [stream.process(tone[i : i + 960]) for i in range(0, tone.size, 960)]
    pieces.append(stream.process(np.zeros(0, dtype=np.float32), last=True))
    streamed = np.concatenate(pieces)
    assert abs(streamed.size - whole.size) <= 2 and abs(whole.size - 16_000) <= 1
