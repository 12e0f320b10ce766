"""Properties of the realtime event parser and the PCM framing, for any input (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.common.audio import AudioError, decode_audio_file, float_to_pcm16, pcm16_to_float
from services.common.errors import ErrorCode, ServiceError
from services.controller.limits import parse_event_json
from services.controller.protocol import CLIENT_EVENT, CLIENT_EVENT_TYPES

pytestmark = pytest.mark.fuzz
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
abusive_texts = st.one_of(
    st.text(max_size=200),
    st.integers(1, 200_000).map(lambda n: "[" * n),
    st.integers(1, 50_000).map(lambda n: '{"a":' * n),
    st.integers(4000, 20_000).map(lambda n: "9" * n),
    st.integers(4000, 20_000).map(lambda n: '{"type": "session.update", "x": ' + "1" * n + "}"),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)


@FAST
@given(abusive_texts)
def test_any_text_parses_or_is_invalid_json(text: str) -> None:
    try:
        parse_event_json(text)
    except ServiceError as exc:
        assert exc.code == ErrorCode.INVALID_JSON and str(exc).startswith("invalid JSON")


@FAST
@given(
    st.sampled_from(sorted(CLIENT_EVENT_TYPES)),
    st.dictionaries(
        st.sampled_from(["session", "audio", "item", "event_id", "content", "x"]), json_values
    ),
)
def test_any_event_shape_validates_or_fails_with_a_validation_error(
    kind: str, fields: dict[str, object]
) -> None:
    try:
        CLIENT_EVENT.validate_python({"type": kind, **fields})
    except ValidationError as exc:
        assert exc.errors()  # a located message for the client's invalid_event


@FAST
@given(st.binary(max_size=4096))
def test_pcm16_framing_of_any_bytes(data: bytes) -> None:
    if len(data) % 2:
        with pytest.raises(AudioError) as bad:
            pcm16_to_float(data)
        assert bad.value.code == "invalid_audio"
        return
    samples = pcm16_to_float(data)
    assert samples.dtype == np.float32 and samples.size == len(data) // 2
    assert np.all(samples >= -1.0) and np.all(samples < 1.0)


@FAST
@given(st.lists(st.floats(-4, 4, allow_nan=False, width=32), max_size=512))
def test_pcm16_round_trip_is_within_one_step(values: list[float]) -> None:
    samples = np.asarray(values, dtype=np.float32)
    back = pcm16_to_float(float_to_pcm16(samples))
    assert back.size == samples.size
    assert np.all(np.abs(back - np.clip(samples, -1, 1)) <= 1.5 / 32767)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2048))
def test_any_uploaded_file_decodes_or_is_invalid_audio(data: bytes) -> None:
    wav_header = b"RIFF\x24\x08\x00\x00WAVEfmt "  # half the examples look like a WAV
    for candidate in (data, wav_header + data):
        try:
            samples, rate = decode_audio_file(candidate)
        except AudioError as exc:
            assert exc.code == "invalid_audio"
        else:
            assert samples.ndim == 1 and rate > 0
