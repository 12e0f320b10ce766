"""Realtime audio encodings: PCM16 and G.711 (µ-law, A-law) at 8 kHz.

G.711 comes from FFmpeg's pcm_mulaw / pcm_alaw codecs through PyAV, used once at import to
fill two lookup tables (every int16 value encoded, every byte decoded); a chunk is then one
numpy lookup. Why not the stdlib: ``audioop`` is deprecated and gone in Python 3.13 (and
``audioop-lts`` only installs on 3.13+); why not a codec context per stream: 20 ms chunks
would pay the frame/packet overhead for what is a table lookup per sample.
"""

from __future__ import annotations

from typing import Literal

import av
import numpy as np

from services.common.audio import AudioError, float_to_pcm16, pcm16_to_float

Encoding = Literal["pcm16", "g711_ulaw", "g711_alaw"]
G711_RATE_HZ = 8_000
_CODECS = {"g711_ulaw": "pcm_mulaw", "g711_alaw": "pcm_alaw"}


def _codec(name: str, mode: Literal["r", "w"]) -> av.AudioCodecContext:
    context = av.CodecContext.create(name, mode)
    assert isinstance(context, av.AudioCodecContext)  # G.711 is an audio codec
    context.sample_rate = G711_RATE_HZ
    context.layout = "mono"
    if mode == "w":
        context.format = "s16"
    return context


def _encode_table(codec: str) -> np.ndarray:
    every_sample = np.arange(-32768, 32768, dtype=np.int16).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(every_sample, format="s16", layout="mono")
    frame.sample_rate = G711_RATE_HZ
    context = _codec(codec, "w")
    packets = [*context.encode(frame), *context.encode(None)]
    table = np.frombuffer(b"".join(bytes(p) for p in packets), dtype=np.uint8)
    assert table.size == 65536
    return table


def _decode_table(codec: str) -> np.ndarray:
    frames = _codec(codec, "r").decode(av.Packet(bytes(range(256))))
    table = np.concatenate([f.to_ndarray().ravel() for f in frames]).astype(np.int16)
    assert table.size == 256
    return table


_ENCODE = {name: _encode_table(codec) for name, codec in _CODECS.items()}
_DECODE = {name: _decode_table(codec) for name, codec in _CODECS.items()}


def g711_encode(pcm16: np.ndarray, encoding: str) -> bytes:
    """int16 samples → one G.711 byte each."""
    return _ENCODE[encoding][pcm16.astype(np.int32) + 32768].tobytes()


def g711_decode(data: bytes, encoding: str) -> np.ndarray:
    """G.711 bytes → int16 samples."""
    return _DECODE[encoding][np.frombuffer(data, dtype=np.uint8)]


def decode_input(data: bytes, encoding: str) -> np.ndarray:
    """Client audio bytes → float32 mono in [-1, 1]."""
    if encoding == "pcm16":
        return pcm16_to_float(data)
    if encoding not in _DECODE:
        raise AudioError("invalid_audio", f"unknown audio encoding {encoding!r}")
    return g711_decode(data, encoding).astype(np.float32) / 32768.0


def encode_output(samples: np.ndarray, encoding: str) -> bytes:
    """float32 mono → the session's output encoding."""
    if encoding == "pcm16":
        return float_to_pcm16(samples)
    clipped = np.clip(samples, -1.0, 1.0)
    return g711_encode((clipped * 32767.0).round().astype(np.int16), encoding)
