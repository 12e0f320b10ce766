"""PCM validation, conversion and resampling shared by every service.

Everything here works on numpy arrays; float audio is float32 in [-1, 1], mono unless said.
Resampling here uses soxr, for conversions upstream Step-Audio has no counterpart for: output PCM
to a client's rate (TTS, controller), VAD input, test and tool audio. Model inputs (tokenizer
audio, speaker prompt features) go through services/common/resample.py instead, which has
upstream's torchaudio ``Resample`` numerics.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

MIN_SAMPLE_RATE_HZ = 8_000
MAX_SAMPLE_RATE_HZ = 48_000


class AudioError(ValueError):
    """Audio that cannot be used. ``code`` is a stable snake_case error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class AudioFormat:
    sample_rate_hz: int
    channels: int = 1
    encoding: str = "pcm_s16le"  # or "pcm_f32le"


def check_sample_rate(sample_rate_hz: int) -> int:
    if not MIN_SAMPLE_RATE_HZ <= int(sample_rate_hz) <= MAX_SAMPLE_RATE_HZ:
        raise AudioError(
            "unsupported_sample_rate",
            f"sample rate {sample_rate_hz} Hz is outside "
            f"{MIN_SAMPLE_RATE_HZ}..{MAX_SAMPLE_RATE_HZ} Hz",
        )
    return int(sample_rate_hz)


def as_float_mono(samples: np.ndarray, *, allow_empty: bool = False) -> np.ndarray:
    """Validate a waveform and return it as contiguous float32 mono.

    Accepts float (any width) in [-1, 1] or int16/int32 PCM, shaped (n,) or (n, channels);
    channels are averaged. Raises AudioError for NaN/inf, wrong dtype or empty input.
    """
    array = np.asarray(samples)
    if array.ndim not in (1, 2):
        raise AudioError(
            "invalid_audio", f"audio must be 1-D or (samples, channels), got {array.shape}"
        )
    if array.dtype == np.int16:  # scale before averaging channels, so int PCM is not truncated
        array = array.astype(np.float32) / 32768.0
    elif array.dtype == np.int32:
        array = array.astype(np.float32) / 2147483648.0
    elif np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32, copy=False)
    else:
        raise AudioError("invalid_audio", f"unsupported sample format {array.dtype}")
    if array.ndim == 2:
        array = array.mean(axis=1) if array.shape[1] > 1 else array[:, 0]
    if array.size == 0 and not allow_empty:
        raise AudioError("empty_audio", "audio is empty")
    if not np.isfinite(array).all():
        raise AudioError("invalid_audio", "audio contains NaN or infinite samples")
    return np.ascontiguousarray(array)


def resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Resample float32 mono audio (whole clip) with soxr; not for model inputs (see above)."""
    if from_hz == to_hz:
        return samples.astype(np.float32, copy=False)
    if samples.size == 0:
        return np.zeros(0, dtype=np.float32)
    resampled: np.ndarray = soxr.resample(samples, from_hz, to_hz, quality="VHQ")
    return resampled.astype(np.float32, copy=False)


class StreamResampler:
    """Chunk-by-chunk resampling with state, for live audio."""

    def __init__(self, from_hz: int, to_hz: int) -> None:
        self.from_hz, self.to_hz = from_hz, to_hz
        self._stream = (
            None if from_hz == to_hz else soxr.ResampleStream(from_hz, to_hz, 1, "float32", "HQ")
        )

    def process(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return samples.astype(np.float32, copy=False)
        resampled: np.ndarray = self._stream.resample_chunk(
            samples.astype(np.float32, copy=False), last=last
        )
        return resampled


def pcm16_to_float(data: bytes) -> np.ndarray:
    if len(data) % 2:
        raise AudioError("invalid_audio", "PCM16 data has an odd number of bytes")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(samples: np.ndarray) -> bytes:
    clipped: np.ndarray = np.clip(samples, -1.0, 1.0)
    return (clipped * 32767.0).round().astype("<i2").tobytes()


def decode_audio_file(data: bytes | Path | str) -> tuple[np.ndarray, int]:
    """Read WAV/FLAC/OGG (anything libsndfile reads) into float32 mono and its rate."""
    source = io.BytesIO(data) if isinstance(data, bytes | bytearray) else str(data)
    try:
        samples, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError("invalid_audio", f"cannot decode audio: {exc}") from exc
    return as_float_mono(samples), int(rate)


def encode_wav(samples: np.ndarray, sample_rate_hz: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate_hz, format="WAV", subtype=subtype)
    return buffer.getvalue()


def write_wav(path: Path | str, samples: np.ndarray, sample_rate_hz: int) -> None:
    sf.write(str(path), samples, sample_rate_hz, subtype="PCM_16")
