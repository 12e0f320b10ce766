"""``AudioChunk`` (stepaudio.serving.v1) ↔ numpy: validation of incoming PCM, encoding of outgoing.

Shared by every service that takes or returns audio over gRPC (VAD, tokenizer, TTS). Incoming
chunks must declare their format (rate 8–48 kHz, PCM_S16LE or PCM_F32LE, 1–8 interleaved
channels); a bad chunk raises ``AudioError`` with a stable code, so engines never see it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stepaudio.serving.v1 import audio_pb2

from services.common.audio import AudioError, as_float_mono, check_sample_rate, float_to_pcm16

MAX_CHANNELS = 8

PCM_S16LE = audio_pb2.AUDIO_ENCODING_PCM_S16LE
PCM_F32LE = audio_pb2.AUDIO_ENCODING_PCM_F32LE
_SAMPLE_DTYPES: dict[audio_pb2.AudioEncoding.ValueType, np.dtype[Any]] = {
    PCM_S16LE: np.dtype("<i2"),
    PCM_F32LE: np.dtype("<f4"),
}


def decode_chunk(chunk: audio_pb2.AudioChunk, max_chunk_ms: int) -> tuple[np.ndarray, int]:
    """Validate an AudioChunk and return (float32 mono samples, sample rate).

    Raises AudioError: ``invalid_audio`` (no format, unknown encoding, too many channels, a
    partial frame, NaN/inf), ``unsupported_sample_rate``, ``frame_too_large`` (longer than
    ``max_chunk_ms``). Empty data is allowed (an empty array comes back).
    """
    if not chunk.HasField("format") or chunk.format.sample_rate_hz == 0:
        raise AudioError("invalid_audio", "audio chunk needs format.sample_rate_hz")
    fmt = chunk.format
    rate = check_sample_rate(fmt.sample_rate_hz)
    dtype = _SAMPLE_DTYPES.get(fmt.encoding)
    if dtype is None:
        raise AudioError("invalid_audio", "format.encoding must be PCM_S16LE or PCM_F32LE")
    channels = fmt.channels or 1
    if channels > MAX_CHANNELS:
        raise AudioError("invalid_audio", f"format.channels must be 1..{MAX_CHANNELS}")
    frame_bytes = dtype.itemsize * channels
    if len(chunk.data) % frame_bytes:
        raise AudioError(
            "invalid_audio", f"data is not a whole number of {frame_bytes}-byte frames"
        )
    samples = len(chunk.data) // frame_bytes
    if samples * 1000 > max_chunk_ms * rate:
        raise AudioError("frame_too_large", f"chunk is longer than {max_chunk_ms} ms")
    pcm = np.frombuffer(chunk.data, dtype=dtype).reshape(samples, channels)
    if dtype.kind == "i":
        # Scale before as_float_mono: it averages channels first, which loses the int16 dtype.
        pcm = pcm.astype(np.float32) / 32768.0
    return as_float_mono(pcm, allow_empty=True), rate


def output_encoding(
    encoding: audio_pb2.AudioEncoding.ValueType,
) -> audio_pb2.AudioEncoding.ValueType:
    """The encoding to send for a requested one: UNSPECIFIED means PCM_S16LE."""
    if encoding == audio_pb2.AUDIO_ENCODING_UNSPECIFIED:
        return PCM_S16LE
    if encoding not in _SAMPLE_DTYPES:
        raise AudioError("invalid_audio", f"unknown output encoding {encoding}")
    return encoding


def encode_chunk(
    samples: np.ndarray, sample_rate_hz: int, encoding: audio_pb2.AudioEncoding.ValueType
) -> audio_pb2.AudioChunk:
    """Float32 mono in [-1, 1] → an AudioChunk (PCM16 clipped and rounded, or float32 LE)."""
    encoding = output_encoding(encoding)
    fmt = audio_pb2.AudioFormat(sample_rate_hz=sample_rate_hz, encoding=encoding, channels=1)
    if encoding == PCM_F32LE:
        data = np.asarray(samples, dtype="<f4").tobytes()
    else:
        data = float_to_pcm16(np.asarray(samples, dtype=np.float32))
    return audio_pb2.AudioChunk(format=fmt, data=data)
