"""Whisper-style 128-bin log-mel spectrogram (the input of speech_tokenizer_v1), in numpy.

Same recipe as ``whisper.log_mel_spectrogram(audio, n_mels=128)``: periodic Hann window of 400,
hop 160, centred frames with reflect padding, the last frame dropped, power spectrum, Slaney mel
filters (librosa's defaults, computed here instead of shipping ``mel_filters.npz``), log10 with a
1e-10 clamp, floor at (max - 8), then (x + 4) / 4.

Frames are computed independently, so a stream can compute them as samples arrive and get
the same values as the whole-clip call; only the floor needs the maximum over the whole piece.
"""

from __future__ import annotations

from functools import cache

import numpy as np

SAMPLE_RATE_HZ = 16_000
N_FFT = 400
HOP = 160
PAD = N_FFT // 2  # centred frames
N_MELS = 128
LOG_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0  # log10 units kept below the maximum (80 dB)


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, log_step = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    mel = hz / f_sp
    high = hz >= min_log_hz
    mel[high] = min_log_mel + np.log(hz[high] / min_log_hz) / log_step
    return mel


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, log_step = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    hz = f_sp * mel
    high = mel >= min_log_mel
    hz[high] = min_log_hz * np.exp(log_step * (mel[high] - min_log_mel))
    return hz


@cache
def mel_filters(
    sample_rate_hz: int = SAMPLE_RATE_HZ, n_fft: int = N_FFT, n_mels: int = N_MELS
) -> np.ndarray:
    """(n_mels, 1 + n_fft//2) float32, as librosa.filters.mel(sr, n_fft, n_mels) (Slaney norm)."""
    fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate_hz)
    edges_mel = np.linspace(
        hz_to_mel(np.array([0.0]))[0], hz_to_mel(np.array([sample_rate_hz / 2]))[0], n_mels + 2
    )
    edges_hz = mel_to_hz(edges_mel)
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    # librosa stores the triangles as float32 before scaling; keep that rounding
    triangles = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    area_norm = 2.0 / (edges_hz[2:] - edges_hz[:-2])
    filters = (triangles.astype(np.float64) * area_norm[:, None]).astype(np.float32)
    filters.flags.writeable = False
    return filters


@cache
def hann_window(size: int = N_FFT) -> np.ndarray:
    """Periodic Hann window (torch.hann_window default)."""
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(size) / size)).astype(np.float32)
    window.flags.writeable = False
    return window


def log10_mel_frames(padded: np.ndarray, count: int) -> np.ndarray:
    """(N_MELS, count) clamped log10 mel energies of frames starting every HOP in ``padded``."""
    if count == 0:
        return np.zeros((N_MELS, 0), dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:count]
    spectrum = np.fft.rfft(frames * hann_window(), axis=-1)
    power = (np.abs(spectrum) ** 2).astype(np.float32)
    # one frame at a time so a value never depends on how many frames a call computes
    mel = np.stack([mel_filters() @ frame for frame in power], axis=1)
    return np.log10(np.maximum(mel, LOG_FLOOR)).astype(np.float32)


def scale_log_mel(log10_mel: np.ndarray, max_value: float) -> np.ndarray:
    """Whisper's dynamic-range floor and scaling, given the maximum over the whole piece."""
    floored = np.maximum(log10_mel, np.float32(max_value - DYNAMIC_RANGE))
    return ((floored + 4.0) / 4.0).astype(np.float32)


def reflect_padded(audio: np.ndarray, start: int, stop: int, *, tail: bool) -> np.ndarray:
    """``np.pad(audio, PAD, 'reflect')[start:stop]`` without padding the whole clip.

    Without ``tail`` the slice must end within the audio (the end reflection is unknown yet).
    """
    n = len(audio)
    low, high = start - PAD, stop - PAD  # sample indices
    parts = []
    if low < 0:
        parts.append(audio[1 : 1 - low][::-1])
    parts.append(audio[max(low, 0) : min(high, n)])
    if high > n:
        if not tail:
            raise ValueError("frames past the end need the final reflection")
        parts.append(audio[2 * n - 1 - high : n - 1][::-1])
    return np.concatenate(parts)


def frame_count(samples: int) -> int:
    """Frames of a whole piece (whisper drops the last centred frame)."""
    return samples // HOP


def log_mel_spectrogram(audio: np.ndarray) -> np.ndarray:
    """(N_MELS, len(audio)//HOP) float32 for one piece of 16 kHz audio (> PAD samples)."""
    count = frame_count(len(audio))
    raw = log10_mel_frames(reflect_padded(audio, 0, (count - 1) * HOP + N_FFT, tail=True), count)
    return scale_log_mel(raw, float(raw.max()) if raw.size else 0.0)
