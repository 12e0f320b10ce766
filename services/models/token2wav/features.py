"""Speaker-prompt features: Matcha-style log-mel (prompt mel) and the CAM++ x-vector.

The mel filterbank is librosa's Slaney-scale, Slaney-normalised basis, computed here in numpy
(librosa is not a dependency). The CAM++ front end is torchaudio's `kaldi.fbank` rebuilt in torch
(torchaudio is not on the CPU image): 80 bins, dither 0, Povey window, 25/10 ms.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from services.models.token2wav.config import MelConfig

CAMPPLUS_FILE = "campplus.onnx"
CAMPPLUS_SAMPLE_RATE_HZ = 16000


def _hz_to_mel_slaney(hz: np.ndarray | float) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    linear = hz / f_sp
    log_part = min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
    return np.where(hz >= min_log_hz, log_part, linear)


def _mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(
        mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel
    )


@lru_cache(maxsize=8)
def slaney_mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None
) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2) float32 basis, as librosa.filters.mel (htk=False, norm='slaney')."""
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    fft_freqs = np.linspace(0, sample_rate / 2.0, 1 + n_fft // 2)
    mel_points = np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2)
    mel_freqs = _mel_to_hz_slaney(mel_points)
    widths = np.diff(mel_freqs)
    ramps = mel_freqs[:, None] - fft_freqs[None, :]
    weights = np.zeros((n_mels, fft_freqs.size), dtype=np.float32)  # float32 as librosa's
    for i in range(n_mels):
        lower = -ramps[i] / widths[i]
        upper = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_freqs[2 : n_mels + 2] - mel_freqs[:n_mels]))[:, None]
    return weights


def log_mel_spectrogram(wav: np.ndarray, config: MelConfig) -> np.ndarray:
    """Matcha/CosyVoice `mel_spectrogram` of a mono wav at config.sampling_rate → (T, n_mels).

    Reflect-pads (n_fft - hop) / 2 per side, |STFT| as sqrt(re² + im² + 1e-9), Slaney mel,
    natural log clamped at 1e-5. T = (len + 2·pad - n_fft) // hop + 1 ≈ len / hop.
    """
    signal = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None, None]
    pad = (config.n_fft - config.hop_size) // 2
    if signal.shape[-1] <= pad:
        raise ValueError(f"audio of {signal.shape[-1]} samples is too short for a mel frame")
    signal = torch.nn.functional.pad(signal, (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(
        signal,
        config.n_fft,
        hop_length=config.hop_size,
        win_length=config.win_size,
        window=torch.hann_window(config.win_size),
        center=config.center,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
    basis = torch.from_numpy(
        slaney_mel_filterbank(
            config.sampling_rate, config.n_fft, config.num_mels, config.fmin, config.fmax
        )
    )
    mel = torch.matmul(basis, magnitude[0])
    return torch.log(torch.clamp(mel, min=1e-5)).T.contiguous().numpy()


FBANK_FRAME = 400  # 25 ms at 16 kHz
FBANK_SHIFT = 160  # 10 ms
FBANK_FFT = 512  # the frame rounded up to a power of two
FBANK_LOW_HZ = 20.0
PREEMPHASIS = 0.97


def _kaldi_mel(hz: float) -> float:
    return 1127.0 * math.log(1.0 + hz / 700.0)


def _kaldi_mel_tensor(hz: torch.Tensor) -> torch.Tensor:
    return 1127.0 * (1.0 + hz / 700.0).log()


@lru_cache(maxsize=4)
def _kaldi_mel_banks(num_bins: int) -> torch.Tensor:
    """(num_bins, FBANK_FFT // 2 + 1) triangular Kaldi mel banks, float32 as torchaudio builds
    them (the last FFT bin gets no weight)."""
    low, high = _kaldi_mel(FBANK_LOW_HZ), _kaldi_mel(CAMPPLUS_SAMPLE_RATE_HZ / 2)
    delta = (high - low) / (num_bins + 1)
    index = torch.arange(num_bins).unsqueeze(1)
    left, center, right = (low + (index + k) * delta for k in (0.0, 1.0, 2.0))
    fft_mel = _kaldi_mel_tensor(CAMPPLUS_SAMPLE_RATE_HZ / FBANK_FFT * torch.arange(FBANK_FFT / 2))
    up = (fft_mel.unsqueeze(0) - left) / (center - left)
    down = (right - fft_mel.unsqueeze(0)) / (right - center)
    banks = torch.max(torch.zeros(1), torch.min(up, down))
    return torch.nn.functional.pad(banks, (0, 1))


def kaldi_fbank(wav_16k: np.ndarray, num_bins: int = 80) -> np.ndarray:
    """Kaldi fbank (T, num_bins) of float audio in [-1, 1] at 16 kHz, as CosyVoice's front end
    calls torchaudio's ``compliance.kaldi.fbank`` (dither 0, Povey window, 25/10 ms, snip
    edges, DC removal, pre-emphasis 0.97, power spectrum, 20 Hz..Nyquist, log floored at
    float32 eps), with torchaudio's operations in its order, so the x-vector input is its."""
    wav = torch.from_numpy(np.ascontiguousarray(wav_16k, dtype=np.float32))
    if wav.numel() < FBANK_FRAME:
        return np.zeros((0, num_bins), dtype=np.float32)
    frames = wav.unfold(0, FBANK_FRAME, FBANK_SHIFT)
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.nn.functional.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)
    frames = frames - PREEMPHASIS * previous[:, :-1]
    window = torch.hann_window(FBANK_FRAME, periodic=False).pow(0.85)
    frames = torch.nn.functional.pad(frames * window, (0, FBANK_FFT - FBANK_FRAME))
    power = torch.fft.rfft(frames).abs().pow(2.0)
    energies = torch.mm(power, _kaldi_mel_banks(num_bins).T)
    return energies.clamp_min(torch.finfo(torch.float32).eps).log().numpy()


class SpeakerEncoder:
    """CAM++ (campplus.onnx) on CPU: 16 kHz wav → 192-d x-vector."""

    def __init__(self, onnx_path: Path) -> None:
        if not onnx_path.is_file():
            raise FileNotFoundError(f"{onnx_path}: missing (CAM++ speaker encoder)")
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name

    def embed(self, wav_16k: np.ndarray) -> np.ndarray:
        feats = torch.from_numpy(kaldi_fbank(wav_16k))
        centered = (feats - feats.mean(dim=0, keepdim=True)).numpy()  # torch's mean, as upstream
        output = self.session.run(None, {self.input_name: centered[None]})[0]
        return np.asarray(output, dtype=np.float32).reshape(-1)
