"""Prompt mel (Matcha recipe, Slaney filterbank) and the CAM++ front end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.models.token2wav import Token2Wav
from services.models.token2wav.config import MelConfig
from services.models.token2wav.features import (
    kaldi_fbank,
    log_mel_spectrogram,
    slaney_mel_filterbank,
)

MEL = MelConfig(
    n_fft=1024, num_mels=80, sampling_rate=22050, hop_size=256, win_size=1024, fmin=0, fmax=8000
)

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"


def test_slaney_filterbank_shape_and_area() -> None:
    basis = slaney_mel_filterbank(22050, 1024, 80, 0, 8000)
    assert basis.shape == (80, 513) and basis.dtype == np.float32
    assert (basis >= 0).all() and (basis.sum(axis=1) > 0).all()
    assert basis[:, np.fft.rfftfreq(1024, 1 / 22050) > 8000].max() == 0
    # Slaney normalisation: every triangle has unit area in Hz (sum · bin width ≈ 1)
    areas = basis.sum(axis=1) * (22050 / 1024)
    assert np.allclose(areas[20:], 1.0, rtol=0.08)
    # below 1 kHz the Slaney scale is linear: equal spacing of the first peaks
    peaks = np.argmax(basis[:10], axis=1)
    assert np.all(np.diff(peaks) >= 0)


def test_slaney_filterbank_centres_follow_the_slaney_scale() -> None:
    basis = slaney_mel_filterbank(22050, 1024, 80, 0, 8000)
    top = int(np.argmax(basis[40]))
    hz = np.fft.rfftfreq(1024, 1 / 22050)
    assert 1700 < hz[top] < 1900  # mel 40 of 80 up to 8 kHz sits near 1.8 kHz on the Slaney scale


def test_log_mel_frames_and_peak_bin() -> None:
    t = np.arange(22050) / 22050
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    mel = log_mel_spectrogram(tone, MEL)
    assert mel.shape == ((22050 + 768 - 1024) // 256 + 1, 80)
    basis = slaney_mel_filterbank(22050, 1024, 80, 0, 8000)
    expected_bin = int(np.argmax(basis[:, round(1000 / (22050 / 1024))]))
    assert abs(int(np.argmax(mel[40])) - expected_bin) <= 1
    assert mel.min() >= np.log(1e-5) - 1e-6


def test_silence_stays_near_the_log_floor() -> None:
    mel = log_mel_spectrogram(np.zeros(4096, np.float32), MEL)
    assert mel.max() < np.log(1e-3)  # only the 1e-9 magnitude floor is left


def test_kaldi_fbank_frames() -> None:
    wav = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    feats = kaldi_fbank(wav)
    assert feats.shape == (1 + (16000 - 400) // 160, 80) and np.isfinite(feats).all()
    assert kaldi_fbank(wav[:399]).shape == (0, 80)  # no whole 25 ms frame


def test_kaldi_fbank_matches_torchaudio() -> None:
    """Against torchaudio's kaldi.fbank as CosyVoice calls it (tests/fixtures/kaldi_fbank)."""
    with np.load(FIXTURES / "kaldi_fbank" / "fbank.npz") as data:
        signal, expected = data["input"], data["fbank"]
    got = kaldi_fbank(signal)
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= 1e-5


def test_speaker_embedding_is_mean_normalised(model: Token2Wav) -> None:
    """CAM++ gets fbank minus its time mean: a constant offset in the log domain cancels."""
    wav = np.random.default_rng(1).standard_normal(24000).astype(np.float32) * 0.1
    a = model.speaker_encoder.embed(wav)
    b = model.speaker_encoder.embed(wav * 2.0)  # ×2 amplitude = +log(4) on every fbank bin
    assert a.shape == (192,)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_prompt_too_short_for_a_frame() -> None:
    with pytest.raises(ValueError, match="too short"):
        log_mel_spectrogram(np.zeros(100, np.float32), MEL)
