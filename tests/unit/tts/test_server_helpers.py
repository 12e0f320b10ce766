"""Proto ↔ engine helpers of the TTS server and the shared PCM encoder."""

from __future__ import annotations

import numpy as np
import pytest
from stepaudio.serving.v1 import audio_pb2, tts_pb2

from services.common.audio import AudioError
from services.common.audio_proto import decode_chunk, encode_chunk, output_encoding
from services.tts.engine import SynthesisOptions
from services.tts.server import options_from_proto

S16 = audio_pb2.AUDIO_ENCODING_PCM_S16LE
F32 = audio_pb2.AUDIO_ENCODING_PCM_F32LE


def test_proto_zeros_mean_defaults() -> None:
    assert options_from_proto(tts_pb2.SynthesisOptions()) == SynthesisOptions()
    options = tts_pb2.SynthesisOptions(
        output_sample_rate_hz=16000, speed=1.5, volume=0.5, seed=0, encoding=F32
    )
    assert options_from_proto(options) == SynthesisOptions(16000, 1.5, 0.5, seed=0)


@pytest.mark.parametrize("encoding", [S16, F32])
def test_encode_then_decode_round_trips(encoding: int) -> None:
    samples = np.array([0.0, 0.5, -0.5, 1.5, -2.0], np.float32)  # out of range gets clipped
    chunk = encode_chunk(samples, 22050, encoding)
    assert (chunk.format.sample_rate_hz, chunk.format.encoding, chunk.format.channels) == (
        22050,
        encoding,
        1,
    )
    decoded, rate = decode_chunk(chunk, max_chunk_ms=1000)
    assert rate == 22050
    expected = np.clip(samples, -1, 1) if encoding == S16 else samples
    np.testing.assert_allclose(decoded, expected, atol=1 / 32767)


def test_output_encoding_defaults_to_pcm16() -> None:
    assert output_encoding(audio_pb2.AUDIO_ENCODING_UNSPECIFIED) == S16
    assert encode_chunk(np.zeros(3, np.float32), 16000, 0).format.encoding == S16
    with pytest.raises(AudioError):
        output_encoding(99)
