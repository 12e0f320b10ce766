"""Feature extraction against independent references: Kaldi fbank, LFR stacking, whisper log-mel."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from services.models.audio_tokenizer import whisper_mel
from services.models.audio_tokenizer.checkpoint import Cmvn, load_cmvn
from services.models.audio_tokenizer.config import FrontendConfig
from services.models.audio_tokenizer.frontend import (
    PCM16_SCALE,
    FrontendState,
    KaldiFbank,
    ParaformerFrontend,
)
from services.models.audio_tokenizer.linguistic import CHUNK_SAMPLES

# sha256 of whisper/assets/mel_filters.npz arrays (openai/whisper), float32 little-endian bytes
WHISPER_MEL_128_SHA256 = "2a5f9822897750e047c85dea37cc268d3be0ecfd23c28a5f10da129d99d05afe"
WHISPER_MEL_80_SHA256 = "4f2701b1d287d74a0dc9871026e9519d98cb76426615f2539b0d151a0ae4ec2e"


def kaldi_fbank_reference(samples: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """Textbook Kaldi fbank in float64 (hamming, DC removal, pre-emphasis, 512-point power
    spectrum, Kaldi mel banks 20 Hz..8 kHz, natural log with float eps floor)."""
    wave = samples.astype(np.float64) * PCM16_SCALE
    count = 1 + (len(wave) - 400) // 160
    frames = np.stack([wave[i * 160 : i * 160 + 400] for i in range(count)])
    frames -= frames.mean(axis=1, keepdims=True)
    emphasized = frames.copy()
    emphasized[:, 1:] -= 0.97 * frames[:, :-1]
    emphasized[:, 0] -= 0.97 * frames[:, 0]
    window = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(400) / 399)
    power = np.abs(np.fft.rfft(emphasized * window, n=512)) ** 2

    def mel(hz: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log(1.0 + np.asarray(hz) / 700.0)

    low, high = mel(20.0), mel(8000.0)
    step = (high - low) / (n_mels + 1)
    bin_mel = mel(np.arange(256) * 16000 / 512)
    banks = np.zeros((n_mels, 256))
    for m in range(n_mels):
        left, center, right = low + m * step, low + (m + 1) * step, low + (m + 2) * step
        rising = (bin_mel - left) / (center - left)
        falling = (right - bin_mel) / (right - center)
        inside = (bin_mel > left) & (bin_mel < right)
        banks[m] = np.where(inside, np.where(bin_mel <= center, rising, falling), 0.0)
    energies = power[:, :256] @ banks.T
    return np.log(np.maximum(energies, np.finfo(np.float32).eps))


def test_kaldi_fbank_matches_numpy_reference(demo_audio: tuple[np.ndarray, int]) -> None:
    samples = demo_audio[0][: 16_000 * 2]
    ours = KaldiFbank(FrontendConfig())(samples)
    reference = kaldi_fbank_reference(samples)
    assert ours.shape == reference.shape == (1 + (len(samples) - 400) // 160, 80)
    assert np.abs(ours - reference).max() < 1e-3


def lfr_reference(frames: np.ndarray, m: int = 7, n: int = 6) -> np.ndarray:
    """Offline LFR: (m-1)//2 copies of the first frame in front, windows of m every n."""
    padded = np.concatenate([np.repeat(frames[:1], (m - 1) // 2, axis=0), frames])
    count = -(-len(frames) // n)
    rows = []
    for i in range(count):
        window = padded[i * n : i * n + m]
        window = np.concatenate([window, np.repeat(padded[-1:], m - len(window), axis=0)])
        rows.append(window.reshape(-1))
    return np.stack(rows)


def identity_cmvn(dim: int = 560) -> Cmvn:
    return Cmvn(shift=np.zeros(dim, np.float32), scale=np.ones(dim, np.float32))


def test_online_lfr_in_strides_equals_offline_stacking(demo_audio: tuple[np.ndarray, int]) -> None:
    samples = demo_audio[0][: 9 * CHUNK_SAMPLES + 2500]
    frontend = ParaformerFrontend(FrontendConfig(lfr_m=7, lfr_n=6), identity_cmvn())
    state = FrontendState()
    pieces = [samples[i : i + CHUNK_SAMPLES] for i in range(0, len(samples), CHUNK_SAMPLES)]
    outputs = [
        frontend.process(state, p, is_final=i == len(pieces) - 1) for i, p in enumerate(pieces)
    ]
    assert [len(o) for o in outputs[:-1]] == [4] * 9  # every full 240 ms stride: 4 LFR frames
    online = np.concatenate(outputs)
    offline = lfr_reference(frontend.fbank(samples))
    assert online.shape == offline.shape
    assert np.array_equal(online, offline)


def test_final_tail_too_short_for_a_window_is_dropped_like_the_reference() -> None:
    frontend = ParaformerFrontend(FrontendConfig(), identity_cmvn())
    state = FrontendState()
    rng = np.random.default_rng(1)
    assert (
        len(
            frontend.process(
                state, rng.standard_normal(CHUNK_SAMPLES).astype(np.float32), is_final=False
            )
        )
        == 4
    )
    # 320 carried samples + 800 new = 5 fbank frames; with the 1 cached frame < 7: nothing
    assert (
        len(frontend.process(state, rng.standard_normal(800).astype(np.float32), is_final=True))
        == 0
    )


def test_cmvn_parse_and_apply(tmp_path: Path) -> None:
    shift = np.linspace(-10, -5, 560)
    scale = np.linspace(0.1, 0.3, 560)
    text = (
        "<Nnet>\n<Splice> 560 560\n[ 0 ]\n<AddShift> 560 560\n<LearnRateCoef> 0 [ "
        + " ".join(f"{v:.6f}" for v in shift)
        + " ]\n<Rescale> 560 560\n<LearnRateCoef> 0 [ "
        + " ".join(f"{v:.6f}" for v in scale)
        + " ]\n</Nnet>\n"
    )
    path = tmp_path / "am.mvn"
    path.write_text(text)
    cmvn = load_cmvn(path, 560)
    assert cmvn.shift.dtype == np.float32 and cmvn.shift.shape == (560,)
    np.testing.assert_allclose(cmvn.shift, shift, atol=1e-6)
    np.testing.assert_allclose(cmvn.scale, scale, atol=1e-6)
    features = np.ones((2, 560), np.float32)
    expected = np.broadcast_to((1 + shift) * scale, (2, 560))
    np.testing.assert_allclose(cmvn.apply(features), expected, atol=1e-5)


def test_tiny_am_mvn_is_560_dim(tiny_tokenizer_dir: Path) -> None:
    from services.models import layout

    cmvn = load_cmvn(tiny_tokenizer_dir / layout.PARAFORMER_DIR / "am.mvn", 560)
    assert (cmvn.shift < 0).all() and (cmvn.scale > 0).all()


@pytest.mark.parametrize(
    ("mels", "digest"), [(128, WHISPER_MEL_128_SHA256), (80, WHISPER_MEL_80_SHA256)]
)
def test_mel_filters_equal_whisper_assets(mels: int, digest: str) -> None:
    filters = whisper_mel.mel_filters(16_000, 400, mels)
    assert hashlib.sha256(filters.astype("<f4").tobytes()).hexdigest() == digest


def whisper_reference(audio: np.ndarray) -> np.ndarray:
    """whisper.log_mel_spectrogram(audio, n_mels=128), written with torch.stft."""
    stft = torch.stft(
        torch.from_numpy(audio), 400, 160, window=torch.hann_window(400), return_complex=True
    )
    magnitudes = stft[..., :-1].abs() ** 2
    mel = torch.from_numpy(whisper_mel.mel_filters().copy()) @ magnitudes
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).numpy()


def test_whisper_log_mel_matches_torch_stft_reference(demo_audio: tuple[np.ndarray, int]) -> None:
    audio = demo_audio[0][: 16_000 * 2 + 77]
    ours = whisper_mel.log_mel_spectrogram(audio)
    reference = whisper_reference(audio)
    assert ours.shape == reference.shape == (128, len(audio) // 160)
    assert np.abs(ours - reference).max() < 1e-4


def test_log_mel_frames_do_not_depend_on_how_many_are_computed(
    demo_audio: tuple[np.ndarray, int],
) -> None:
    audio = demo_audio[0][:16_000]
    count = whisper_mel.frame_count(len(audio))
    padded = whisper_mel.reflect_padded(audio, 0, (count - 1) * 160 + 400, tail=True)
    whole = whisper_mel.log10_mel_frames(padded, count)
    pieces = [
        whisper_mel.log10_mel_frames(padded[k * 160 :], n)
        for k, n in ((0, 7), (7, 30), (37, count - 37))
    ]
    assert np.array_equal(whole, np.concatenate(pieces, axis=1))


def test_reflect_padded_matches_numpy_pad() -> None:
    audio = np.arange(1000, dtype=np.float32)
    full = np.pad(audio, 200, mode="reflect")
    for start, stop in ((0, 400), (150, 900), (700, 1400), (1000, 1400)):
        assert np.array_equal(
            whisper_mel.reflect_padded(audio, start, stop, tail=True), full[start:stop]
        )
    with pytest.raises(ValueError):
        whisper_mel.reflect_padded(audio, 1000, 1400, tail=False)
