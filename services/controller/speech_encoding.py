"""Compressed speech for /v1/audio/speech: Ogg Opus and AAC (ADTS), encoded by FFmpeg via PyAV.

The encoder is streamed: each chunk of PCM goes through the codec and the muxer at once and
the container bytes written so far are handed on, so the HTTP body starts with the first
clause. PyAV's encoder re-frames (Opus 20 ms, AAC 1024 samples) and converts the sample format
itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import av
import numpy as np


@dataclass(frozen=True)
class Codec:
    container: str  # FFmpeg muxer
    codec: str
    rate_hz: int | None  # None: the input rate
    bit_rate: int
    media_type: str


CODECS = {
    # Opus runs at 48 kHz inside Ogg by convention (RFC 7845); 24 kHz speech is resampled
    "opus": Codec("ogg", "libopus", 48_000, 32_000, "audio/ogg"),
    "aac": Codec("adts", "aac", None, 64_000, "audio/aac"),
}


class _Collector:
    """A write-only file for the muxer: collects what it writes until taken."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


class StreamEncoder:
    def __init__(self, name: str, input_rate_hz: int) -> None:
        spec = CODECS[name]
        self._input_rate_hz = input_rate_hz
        self._out = _Collector()
        self._container = av.open(self._out, mode="w", format=spec.container)
        stream = self._container.add_stream(spec.codec, rate=spec.rate_hz or input_rate_hz)
        assert isinstance(stream, av.AudioStream)  # the codecs in CODECS are audio codecs
        self._stream = stream
        self._stream.layout = "mono"
        self._stream.bit_rate = spec.bit_rate
        formats = self._stream.codec_context.codec.audio_formats or []
        self._resampler = av.AudioResampler(
            format=formats[0].name,
            layout="mono",
            rate=int(self._stream.rate),
        )

    def encode(self, samples: np.ndarray) -> bytes:
        """float32 mono at the input rate → the container bytes produced so far."""
        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = self._input_rate_hz
        self._mux(self._resampler.resample(frame))
        return self._out.take()

    def finish(self) -> bytes:
        self._mux(self._resampler.resample(None))
        self._container.mux(self._stream.encode(None))
        self._container.close()
        return self._out.take()

    def _mux(self, frames: list[av.AudioFrame]) -> None:
        for frame in frames:
            self._container.mux(self._stream.encode(frame))


async def encode_stream(
    chunks: AsyncIterator[np.ndarray], name: str, rate_hz: int
) -> AsyncIterator[bytes]:
    encoder = StreamEncoder(name, rate_hz)
    async for pcm in chunks:
        if data := encoder.encode(pcm):
            yield data
    yield encoder.finish()
