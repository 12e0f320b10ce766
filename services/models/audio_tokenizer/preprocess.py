"""Waveform preparation before tokenisation (upstream ``preprocess_wav``): 16 kHz, peak
normalisation, optional silence trim.

Resampling has upstream's numerics (torchaudio ``Resample`` defaults, rebuilt in
services/common/resample.py). Deviations from upstream, on purpose: input rates 8..16 kHz are
upsampled with the same filter instead of rejected, and the trim is a numpy re-implementation of
``librosa.effects.trim`` (librosa is not a dependency).
"""

from __future__ import annotations

import math

import numpy as np

from services.common.audio import check_sample_rate
from services.common.resample import resample_sinc

SAMPLE_RATE_HZ = 16_000
PEAK_TARGET = 0.999
PEAK_FLOOR = 0.01  # quieter clips are not amplified beyond 0.999 / 0.01

# upstream trim_silence / librosa.effects.trim settings
TRIM_TOP_DB = 20.0
TRIM_FRAME = 512
TRIM_HOP = 128
TRIM_KEEP_LEFT_S = 0.05
TRIM_KEEP_RIGHT_S = 0.22
TRIM_LENGTH_STEP = 240


def to_16k(samples: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    return resample_sinc(samples, check_sample_rate(sample_rate_hz), SAMPLE_RATE_HZ)


def peak_reference(peak: float) -> float:
    return max(float(peak), PEAK_FLOOR)


def apply_gain(samples: np.ndarray, reference: float) -> np.ndarray:
    """``samples / reference * 0.999`` in float32, the operation order of upstream."""
    return (samples / np.float32(reference)) * np.float32(PEAK_TARGET)


def normalize_energy(samples: np.ndarray) -> np.ndarray:
    """Whole-clip peak normalisation to 0.999 (upstream ``energy_norm_fn``)."""
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    return apply_gain(samples, peak_reference(peak))


def nonsilent_span(samples: np.ndarray) -> tuple[int, int]:
    """[start, end) of ``librosa.effects.trim(top_db=20, frame_length=512, hop_length=128)``.

    Frames are centred (zero padding), loudness is RMS in dB relative to the loudest frame.
    """
    padded = np.pad(samples.astype(np.float64), TRIM_FRAME // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, TRIM_FRAME)[::TRIM_HOP]
    mean_square = np.mean(frames**2, axis=1)
    power_db = 10 * np.log10(np.maximum(mean_square, 1e-10))
    reference_db = 10 * np.log10(max(float(mean_square.max()), 1e-10))
    loud = np.flatnonzero(power_db - reference_db > -TRIM_TOP_DB)
    if loud.size == 0:
        return 0, 0
    return int(loud[0]) * TRIM_HOP, min(len(samples), (int(loud[-1]) + 1) * TRIM_HOP)


def trim_silence(samples: np.ndarray) -> np.ndarray:
    """Upstream ``trim_silence``: keep 50 ms before the speech, cut/pad the tail so the length
    is ceil(speech / 240) * 240 + 0.27 s."""
    start, end = nonsilent_span(samples)
    steps = math.ceil((end - start) / TRIM_LENGTH_STEP)
    keep_left = int(TRIM_KEEP_LEFT_S * SAMPLE_RATE_HZ)
    out_len = int(
        steps * TRIM_LENGTH_STEP + (TRIM_KEEP_LEFT_S + TRIM_KEEP_RIGHT_S) * SAMPLE_RATE_HZ
    )
    first = start - keep_left
    trimmed = samples[first:] if first > 0 else np.pad(samples, (-first, 0))
    if out_len < len(trimmed):
        return trimmed[:out_len]
    return np.pad(trimmed, (0, out_len - len(trimmed))).astype(np.float32, copy=False)
