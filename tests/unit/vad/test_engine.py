"""VAD engine on the bundled speech clip, compared with silero's own reference code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from silero_vad import get_speech_timestamps
from silero_vad.utils_vad import OnnxWrapper

from services.common.audio import AudioError, resample
from services.vad.engine import (
    FRAME_MS,
    FrameJob,
    SileroVad,
    VadEvent,
    VadEventKind,
    VadParams,
    VadParamsError,
    VadSession,
    default_model_path,
    detect,
)
from tests.helpers.grpc import speech_with_silence

STARTED, PAUSED, RESUMED, STOPPED = (
    VadEventKind.SPEECH_STARTED,
    VadEventKind.SPEECH_PAUSED,
    VadEventKind.SPEECH_RESUMED,
    VadEventKind.SPEECH_STOPPED,
)
TOLERANCE_MS = 2 * FRAME_MS


@pytest.fixture(scope="module")
def model() -> SileroVad:
    return SileroVad()


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    samples, rate = speech_with_silence(1.0)
    assert rate == 16_000
    return samples


def silero_reference() -> OnnxWrapper:
    """silero's own streaming wrapper (implicit state), on the same ONNX file."""
    return OnnxWrapper(str(default_model_path()), force_onnx_cpu=True)


def reference_segments(clip: np.ndarray, min_silence_ms: int) -> list[tuple[int, int]]:
    """silero's offline segmentation (no padding), in ms."""
    segments = get_speech_timestamps(
        torch.from_numpy(clip),
        silero_reference(),
        threshold=0.5,
        min_speech_duration_ms=250,
        min_silence_duration_ms=min_silence_ms,
        speech_pad_ms=0,
    )
    return [(s["start"] * 1000 // 16_000, s["end"] * 1000 // 16_000) for s in segments]


def turns(events: list[VadEvent]) -> list[tuple[int, int]]:
    """(start, stop) audio_ms pairs from STARTED/STOPPED events."""
    starts = [e.audio_ms for e in events if e.kind is STARTED]
    stops = [e.audio_ms for e in events if e.kind is STOPPED]
    assert len(starts) == len(stops)
    return list(zip(starts, stops, strict=True))


@pytest.mark.parametrize("min_silence_ms", [600, 100])
def test_turns_match_silero_segments(
    model: SileroVad, clip: np.ndarray, min_silence_ms: int
) -> None:
    params = VadParams(min_silence_ms=min_silence_ms)
    events = detect(model, VadSession(params, 16_000), clip)
    expected = reference_segments(clip, min_silence_ms)
    got = turns(events)
    assert len(got) == len(expected) == (1 if min_silence_ms == 600 else 2)
    for (start, stop), (ref_start, ref_end) in zip(got, expected, strict=True):
        assert abs(start - ref_start) <= TOLERANCE_MS
        assert abs(stop - ref_end) <= TOLERANCE_MS
    for event in events:  # decisions follow the audio they describe
        assert event.detected_at_ms >= event.audio_ms
    first = events[0]
    assert first.detected_at_ms - first.audio_ms >= params.min_speech_ms
    last = events[-1]
    assert last.detected_at_ms - last.audio_ms >= min_silence_ms


def test_plausible_times_for_the_demo_question(model: SileroVad, clip: np.ndarray) -> None:
    ((start, stop),) = turns(detect(model, VadSession(VadParams(), 16_000), clip))
    assert 0 <= start <= 300  # "Hello there." starts right away
    assert 2_800 <= stop <= 3_400  # "...today?" ends before the appended silence


def test_silence_gives_no_events(model: SileroVad) -> None:
    silence = np.zeros(16_000 * 2, dtype=np.float32)
    assert detect(model, VadSession(VadParams(), 16_000), silence) == []
    hiss = np.random.default_rng(0).normal(0, 0.003, 16_000 * 2).astype(np.float32)
    assert detect(model, VadSession(VadParams(), 16_000), hiss) == []


def test_batched_step_equals_each_session_alone(model: SileroVad, clip: np.ndarray) -> None:
    signals = [clip, np.roll(clip, 5_000), clip * 0.3, np.zeros_like(clip)]
    sessions = [VadSession(VadParams(), 16_000) for _ in signals]
    frames = [session.push(signal) for session, signal in zip(sessions, signals, strict=True)]
    batched = np.array(
        [
            model.step(
                [FrameJob(s.model_state, f[i]) for s, f in zip(sessions, frames, strict=True)]
            )
            for i in range(len(frames[0]))
        ]
    )
    for column, signal in enumerate(signals):
        alone = VadSession(VadParams(), 16_000)
        probs = [model.step([FrameJob(alone.model_state, f)])[0] for f in alone.push(signal)]
        np.testing.assert_allclose(batched[:, column], probs, atol=1e-5)


def test_probabilities_match_silero_onnx_wrapper(model: SileroVad, clip: np.ndarray) -> None:
    reference = silero_reference().audio_forward(torch.from_numpy(clip), 16_000)
    session = VadSession(VadParams(), 16_000)
    frames = [*session.push(clip), *session.flush()]
    probs = [model.step([FrameJob(session.model_state, frame)])[0] for frame in frames]
    np.testing.assert_allclose(probs, reference.numpy()[0], atol=1e-5)


@pytest.mark.parametrize("rate", [8_000, 16_000, 44_100, 48_000])
def test_input_rates_are_resampled(model: SileroVad, clip: np.ndarray, rate: int) -> None:
    audio = resample(clip, 16_000, rate)
    session = VadSession(VadParams(), rate)
    events = []
    step = rate // 50  # 20 ms chunks, as a live client sends them
    for start in range(0, len(audio), step):
        for frame in session.push(audio[start : start + step]):
            (probability,) = model.step([FrameJob(session.model_state, frame)])
            events.extend(session.on_probability(probability))
    for frame in session.flush():
        events.extend(session.on_probability(model.step([FrameJob(session.model_state, frame)])[0]))
    ((start_ms, stop_ms),) = turns([*events, *session.finish()])
    ((ref_start, ref_stop),) = turns(detect(model, VadSession(VadParams(), 16_000), clip))
    assert abs(start_ms - ref_start) <= TOLERANCE_MS
    assert abs(stop_ms - ref_stop) <= TOLERANCE_MS


def test_unsupported_rate_is_rejected() -> None:
    with pytest.raises(AudioError) as error:
        VadSession(VadParams(), 96_000)
    assert error.value.code == "unsupported_sample_rate"


def test_pause_and_resume_inside_a_turn(model: SileroVad, clip: np.ndarray) -> None:
    events = detect(model, VadSession(VadParams(pause_ms=200), 16_000), clip)
    kinds = [event.kind for event in events]
    assert kinds == [STARTED, PAUSED, RESUMED, PAUSED, STOPPED]
    paused, resumed = events[1], events[2]
    assert 700 <= paused.audio_ms <= 1_000  # the gap after "Hello there."
    assert paused.detected_at_ms - paused.audio_ms >= 200
    assert paused.audio_ms < resumed.audio_ms <= 1_400
    assert events[3].audio_ms == events[4].audio_ms  # the final pause is where the turn ends


def test_no_pause_events_when_off(model: SileroVad, clip: np.ndarray) -> None:
    kinds = [e.kind for e in detect(model, VadSession(VadParams(), 16_000), clip)]
    assert PAUSED not in kinds and RESUMED not in kinds


def test_end_of_input_closes_an_open_turn(model: SileroVad, clip: np.ndarray) -> None:
    speech_only = clip[: 16_000 * 2]  # cut mid-sentence
    events = detect(model, VadSession(VadParams(), 16_000), speech_only)
    assert [e.kind for e in events] == [STARTED, STOPPED]
    assert events[-1].detected_at_ms == 2_000


def test_hysteresis_gaps_and_min_speech() -> None:
    """Frames are 32 ms; low threshold = 0.5 - 0.15 = 0.35."""
    session = VadSession(VadParams(min_speech_ms=96, min_silence_ms=64), 16_000)
    feed = [
        *[0.9, 0.2, 0.1],  # burst, then a 64 ms gap: the candidate is dropped
        *[0.9, 0.2, 0.45],  # 0.45 after silence began is still silence (hysteresis): dropped
        *[0.9, 0.45, 0.9],  # 0.45 inside speech holds it: 96 ms of speech from 192 ms
    ]
    events = [event for p in feed for event in session.on_probability(p)]
    assert [(e.kind, e.audio_ms, e.detected_at_ms) for e in events] == [(STARTED, 192, 288)]
    events = [event for p in [0.4, 0.3, 0.45] for event in session.on_probability(p)]
    assert [(e.kind, e.audio_ms, e.detected_at_ms) for e in events] == [(STOPPED, 320, 384)]


def test_short_dip_does_not_restart_the_start_count() -> None:
    session = VadSession(VadParams(min_speech_ms=96, min_silence_ms=100), 16_000)
    events = [event for p in [0.9, 0.9, 0.1, 0.9] for event in session.on_probability(p)]
    assert [(e.kind, e.audio_ms, e.detected_at_ms) for e in events] == [(STARTED, 0, 128)]


@pytest.mark.parametrize(
    "overrides",
    [
        {"threshold": 1.5},
        {"min_speech_ms": 20_000},
        {"min_silence_ms": 10},
        {"pause_ms": 700, "min_silence_ms": 600},
    ],
)
def test_invalid_params_are_rejected(overrides: dict[str, float]) -> None:
    with pytest.raises(VadParamsError) as error:
        VadParams().with_overrides(**overrides)  # type: ignore[arg-type]
    assert error.value.code == "invalid_argument"


def test_zero_overrides_keep_defaults() -> None:
    params = VadParams(threshold=0.6, pause_ms=100)
    assert params.with_overrides() == params
    assert params.with_overrides(min_silence_ms=900).min_silence_ms == 900
