"""Streaming silero-vad with explicit per-session state, batched across sessions.

No gRPC here: numpy in, dataclasses out, synchronous.

- ``SileroVad`` runs the package's ``silero_vad.onnx`` through onnxruntime. Unlike silero's own
  ``OnnxWrapper`` (one implicit state per wrapper), the recurrent state ``[2, 128]`` and the
  64-sample context of each session live in that session's ``ModelState``; ``step`` stacks the
  next 512-sample frame of many sessions into ONE ``[B, 64 + 512]`` ORT call with state
  ``[2, B, 128]`` and writes each session's new state back. It is the step function of a
  ``services.common.worker.BatchStepLoop`` (one frame per session per step).
- ``VadSession`` is one stream: resampling from the declared input rate to 16 kHz, 32 ms frame
  assembly, and the turn logic turning per-frame probabilities into ``VadEvent``s.

Turn logic (hysteresis as in silero's VADIterator: speech needs p >= threshold, silence needs
p < threshold - 0.15; in between, the current state holds):
  SPEECH_STARTED  min_speech_ms of speech frames in a candidate run; the run survives gaps
                  shorter than min_silence_ms (as silero's offline segmentation); audio_ms =
                  the run's first speech frame.
  SPEECH_PAUSED   in speech, silence for pause_ms (only if pause_ms > 0); audio_ms = silence start.
  SPEECH_RESUMED  speech (p >= threshold) after a pause, before the turn ended.
  SPEECH_STOPPED  silence for min_silence_ms, or end of input during speech; audio_ms = silence
                  start (or the end of the audio).
Times are stream time in ms of 16 kHz audio (one frame = 32 ms); detected_at_ms is the end of
the frame that triggered the event.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.common.audio import StreamResampler, check_sample_rate

SAMPLE_RATE_HZ = 16_000
FRAME_SAMPLES = 512  # what silero accepts at 16 kHz
FRAME_MS = FRAME_SAMPLES * 1000 // SAMPLE_RATE_HZ  # 32
CONTEXT_SAMPLES = 64  # previous samples silero prepends to each frame at 16 kHz
STATE_SHAPE = (2, 128)
HYSTERESIS = 0.15  # low threshold = threshold - 0.15 (VADIterator)

# Parameter bounds, shared by VadSettings, the per-stream VadConfig check and VadParams.
THRESHOLD_RANGE = (0.05, 0.95)
MIN_SPEECH_MS_RANGE = (0, 10_000)
MIN_SILENCE_MS_RANGE = (FRAME_MS, 30_000)
PAUSE_MS_RANGE = (0, 30_000)


class VadParamsError(ValueError):
    code = "invalid_argument"


class VadEventKind(enum.Enum):
    SPEECH_STARTED = 1
    SPEECH_PAUSED = 2
    SPEECH_RESUMED = 3
    SPEECH_STOPPED = 4


@dataclass(frozen=True)
class VadEvent:
    kind: VadEventKind
    audio_ms: int
    detected_at_ms: int
    probability: float


def _check_range(name: str, value: float, bounds: tuple[float, float]) -> None:
    low, high = bounds
    if not low <= value <= high:
        raise VadParamsError(f"{name}={value} is outside {low}..{high}")


@dataclass(frozen=True)
class VadParams:
    threshold: float = 0.5
    min_speech_ms: int = 250
    min_silence_ms: int = 600
    pause_ms: int = 0  # 0 = no SPEECH_PAUSED events

    def __post_init__(self) -> None:
        _check_range("threshold", self.threshold, THRESHOLD_RANGE)
        _check_range("min_speech_ms", self.min_speech_ms, MIN_SPEECH_MS_RANGE)
        _check_range("min_silence_ms", self.min_silence_ms, MIN_SILENCE_MS_RANGE)
        _check_range("pause_ms", self.pause_ms, PAUSE_MS_RANGE)
        if self.pause_ms and self.pause_ms >= self.min_silence_ms:
            raise VadParamsError(
                f"pause_ms={self.pause_ms} must be below min_silence_ms={self.min_silence_ms}"
            )

    @property
    def low_threshold(self) -> float:
        return max(self.threshold - HYSTERESIS, 0.01)

    def with_overrides(
        self,
        threshold: float = 0,
        min_speech_ms: int = 0,
        min_silence_ms: int = 0,
        pause_ms: int = 0,
    ) -> VadParams:
        """These params with every non-zero argument replacing its field (proto: 0 = default)."""
        return replace(
            self,
            threshold=float(threshold) or self.threshold,
            min_speech_ms=int(min_speech_ms) or self.min_speech_ms,
            min_silence_ms=int(min_silence_ms) or self.min_silence_ms,
            pause_ms=int(pause_ms) or self.pause_ms,
        )


# ----- batched model -----


@dataclass
class ModelState:
    """One session's silero state; only the step thread touches it while a frame is queued."""

    rnn: np.ndarray = field(default_factory=lambda: np.zeros(STATE_SHAPE, dtype=np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT_SAMPLES, np.float32))


@dataclass
class FrameJob:
    """One 512-sample 16 kHz frame of one session, for ``SileroVad.step``."""

    state: ModelState
    frame: np.ndarray


def default_model_path() -> Path:
    return Path(str(resources.files("silero_vad.data").joinpath("silero_vad.onnx")))


class SileroVad:
    """silero_vad.onnx with explicit state: ``step`` runs one frame for each of B sessions."""

    def __init__(self, model_path: Path | None = None, threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle = 0 CPU
        self._session = ort.InferenceSession(
            str(model_path or default_model_path()),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        self._sample_rate = np.array(SAMPLE_RATE_HZ, dtype=np.int64)

    def step(self, jobs: Sequence[FrameJob]) -> list[float]:
        """Speech probability of each job's frame; updates each job's state in place."""
        batch = len(jobs)
        inputs = np.empty((batch, CONTEXT_SAMPLES + FRAME_SAMPLES), dtype=np.float32)
        states = np.empty((STATE_SHAPE[0], batch, STATE_SHAPE[1]), dtype=np.float32)
        for row, job in enumerate(jobs):
            inputs[row, :CONTEXT_SAMPLES] = job.state.context
            inputs[row, CONTEXT_SAMPLES:] = job.frame
            states[:, row] = job.state.rnn
        probs, new_states = self._session.run(
            None, {"input": inputs, "state": states, "sr": self._sample_rate}
        )
        for row, job in enumerate(jobs):
            job.state.rnn = np.array(new_states[:, row], dtype=np.float32)
            job.state.context = inputs[row, -CONTEXT_SAMPLES:].copy()
        return [float(p) for p in probs[:, 0]]


# ----- one stream -----


class _FrameAssembler:
    """Resamples to 16 kHz and cuts 512-sample frames; counts samples for stream time."""

    def __init__(self, input_rate_hz: int) -> None:
        self._resampler = StreamResampler(input_rate_hz, SAMPLE_RATE_HZ)
        self._buffer = np.zeros(0, dtype=np.float32)
        self.samples = 0  # 16 kHz samples received so far

    def push(self, samples: np.ndarray, last: bool = False) -> list[np.ndarray]:
        resampled = self._resampler.process(samples, last=last)
        self.samples += len(resampled)
        self._buffer = np.concatenate([self._buffer, resampled])
        count = len(self._buffer) // FRAME_SAMPLES
        frames = [self._buffer[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES] for i in range(count)]
        self._buffer = self._buffer[count * FRAME_SAMPLES :]
        if last and len(self._buffer):  # zero-pad the tail, as silero does
            frames.append(np.pad(self._buffer, (0, FRAME_SAMPLES - len(self._buffer))))
            self._buffer = np.zeros(0, dtype=np.float32)
        return frames


class VadSession:
    """One audio stream: frames in (``push``/``flush``), probabilities in, events out."""

    def __init__(self, params: VadParams, input_rate_hz: int) -> None:
        self.params = params
        self.input_rate_hz = check_sample_rate(input_rate_hz)
        self.model_state = ModelState()
        self._frames = _FrameAssembler(self.input_rate_hz)
        self._frame_index = 0
        self._in_speech = False
        self._paused = False
        self._speech_start_ms: int | None = None  # candidate speech start, before STARTED
        self._candidate_speech_ms = 0  # speech frames in the candidate so far
        self._silence_start_ms: int | None = None  # current silence run (candidate or turn)
        self._last_probability = 0.0

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        """Float32 mono samples at ``input_rate_hz`` → complete 16 kHz frames."""
        return self._frames.push(samples)

    def flush(self) -> list[np.ndarray]:
        """End of input: the resampler's tail and the last partial frame (zero-padded)."""
        return self._frames.push(np.zeros(0, dtype=np.float32), last=True)

    def on_probability(self, probability: float) -> list[VadEvent]:
        """Advance by one frame with its speech probability."""
        start_ms = self._frame_index * FRAME_MS
        self._frame_index += 1
        self._last_probability = probability
        if self._in_speech:
            return self._while_speaking(probability, start_ms, start_ms + FRAME_MS)
        return self._while_silent(probability, start_ms, start_ms + FRAME_MS)

    def finish(self) -> list[VadEvent]:
        """End of input: close an open turn at the end of the audio."""
        if not self._in_speech:
            return []
        end_ms = self._frames.samples * 1000 // SAMPLE_RATE_HZ
        start_ms = end_ms if self._silence_start_ms is None else self._silence_start_ms
        self._reset_turn()
        return [VadEvent(VadEventKind.SPEECH_STOPPED, start_ms, end_ms, self._last_probability)]

    def _while_silent(self, probability: float, start_ms: int, end_ms: int) -> list[VadEvent]:
        """Candidate speech: survives gaps shorter than min_silence_ms (as silero's offline
        segmentation does); STARTED once it holds min_speech_ms of speech frames."""
        params = self.params
        if probability >= params.threshold:
            if self._speech_start_ms is None:
                self._speech_start_ms, self._candidate_speech_ms = start_ms, 0
            self._silence_start_ms = None
        elif self._speech_start_ms is None:
            return []
        if probability < params.threshold and (
            probability < params.low_threshold or self._silence_start_ms is not None
        ):
            return self._candidate_gap(start_ms, end_ms)
        self._candidate_speech_ms += FRAME_MS
        if self._candidate_speech_ms < params.min_speech_ms:
            return []
        self._in_speech, started_ms = True, self._speech_start_ms
        self._speech_start_ms = None
        return [VadEvent(VadEventKind.SPEECH_STARTED, started_ms, end_ms, probability)]

    def _candidate_gap(self, start_ms: int, end_ms: int) -> list[VadEvent]:
        if self._silence_start_ms is None:
            self._silence_start_ms = start_ms
        if end_ms - self._silence_start_ms >= self.params.min_silence_ms:
            self._reset_turn()  # too long a gap: the burst before it was noise
        return []

    def _while_speaking(self, probability: float, start_ms: int, end_ms: int) -> list[VadEvent]:
        params = self.params
        if probability >= params.threshold:
            self._silence_start_ms = None
            if not self._paused:
                return []
            self._paused = False
            return [VadEvent(VadEventKind.SPEECH_RESUMED, start_ms, end_ms, probability)]
        if self._silence_start_ms is None:
            if probability >= params.low_threshold:
                return []  # between thresholds: still speech
            self._silence_start_ms = start_ms
        return self._silence_events(probability, self._silence_start_ms, end_ms)

    def _silence_events(self, probability: float, since_ms: int, end_ms: int) -> list[VadEvent]:
        silent_ms = end_ms - since_ms
        events = []
        if self.params.pause_ms and not self._paused and silent_ms >= self.params.pause_ms:
            self._paused = True
            events.append(VadEvent(VadEventKind.SPEECH_PAUSED, since_ms, end_ms, probability))
        if silent_ms >= self.params.min_silence_ms:
            self._reset_turn()
            events.append(VadEvent(VadEventKind.SPEECH_STOPPED, since_ms, end_ms, probability))
        return events

    def _reset_turn(self) -> None:
        self._in_speech = self._paused = False
        self._speech_start_ms = self._silence_start_ms = None


def detect(model: SileroVad, session: VadSession, samples: np.ndarray) -> list[VadEvent]:
    """Run one whole clip through a session, unbatched (tests, offline use)."""
    events: list[VadEvent] = []
    for frame in [*session.push(samples), *session.flush()]:
        (probability,) = model.step([FrameJob(session.model_state, frame)])
        events.extend(session.on_probability(probability))
    return [*events, *session.finish()]
