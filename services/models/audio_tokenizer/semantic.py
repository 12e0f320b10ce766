"""vq06: semantic codes (25 Hz, 4096 codes) from CosyVoice's ``speech_tokenizer_v1.onnx``.

Offline, as the reference: the clip is cut into independent pieces of at most 30 s (a last piece
under 480 samples is dropped); each piece's whisper log-mel (floor relative to the piece
maximum) goes through the ONNX model, inputs addressed by position (mel, length).

Streaming (not in the reference, which is whole-clip only): log-mel frames are computed as audio
arrives; every ``hop`` codes the model runs on a window of mel frames = ``context`` codes of
left context + ``hop`` new codes + ``lookahead`` codes of right context, and the ``hop`` new
codes are committed. The floor uses the running maximum of the piece so far. Windows start at
multiples of 4 frames (one code) and never cross a 30 s piece boundary.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.models.audio_tokenizer import whisper_mel
from services.models.audio_tokenizer.batching import SemanticJob, drive
from services.models.audio_tokenizer.errors import CheckpointError, require_file
from services.models.audio_tokens import SEMANTIC_CODES

log = logging.getLogger(__name__)

PIECE_SAMPLES = 30 * whisper_mel.SAMPLE_RATE_HZ
MIN_PIECE_SAMPLES = 480  # shorter trailing pieces are dropped by the reference
FRAMES_PER_CODE = 4  # 100 Hz mel -> 25 Hz codes


@dataclass(frozen=True)
class SemanticStreamOptions:
    """Window geometry of the streaming semantic branch, in codes (40 ms each)."""

    hop_codes: int = 12  # codes committed per model run (0.48 s)
    context_codes: int = 120  # left context given to the model (4.8 s)
    lookahead_codes: int = 24  # right context before a code is committed (0.96 s)

    def __post_init__(self) -> None:
        if self.hop_codes < 1 or self.context_codes < 0 or self.lookahead_codes < 0:
            raise ValueError("hop_codes >= 1, context_codes >= 0 and lookahead_codes >= 0")


@dataclass(frozen=True)
class BatchRunner:
    """A second session of the same model whose batch axis is open (see `batch_runner`):
    stacked windows of equal length, with the length input per window or one for all."""

    session: ort.InferenceSession
    length_per_window: bool

    def run(self, mels: np.ndarray, run_options: ort.RunOptions | None = None) -> np.ndarray:
        """(B, N_MELS, T) → (B, codes)."""
        inputs = self.session.get_inputs()
        count = len(mels) if self.length_per_window else 1
        feeds = {
            inputs[0].name: np.ascontiguousarray(mels, dtype=np.float32),
            inputs[1].name: np.full(count, mels.shape[2], dtype=np.int32),
        }
        output = self.session.run(None, feeds, run_options)[0]
        return np.asarray(output).reshape(len(mels), -1)


class SemanticTokenizer:
    def __init__(
        self, session: ort.InferenceSession, path: Path, batch: BatchRunner | None = None
    ) -> None:
        self.session = session
        self.path = path
        inputs = session.get_inputs()
        self._mel_input, self._length_input = inputs[0].name, inputs[1].name
        self.batch = batch  # None: windows of a round run one call each

    @classmethod
    def load(
        cls, path: Path, *, num_threads: int | None, providers: list[str], batch: bool = False
    ) -> SemanticTokenizer:
        """``batch``: also open a batch session (`batch_runner`) for rounds of many streams."""
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = num_threads or 1  # the reference uses 1
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(
                str(require_file(path)), sess_options=options, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise CheckpointError(path, f"cannot load ONNX model: {exc}") from exc
        _check_signature(session, path)
        tokenizer = cls(session, path)
        if batch:
            tokenizer.batch = batch_runner(tokenizer, options, providers)
        return tokenizer

    def codes_for_mel(self, mel: np.ndarray) -> np.ndarray:
        """Codes for a (N_MELS, T) scaled log-mel window."""
        feeds = {
            self._mel_input: np.ascontiguousarray(mel[None], dtype=np.float32),
            self._length_input: np.array([mel.shape[1]], dtype=np.int32),
        }
        return self._checked(
            np.asarray(self.session.run(None, feeds)[0]).reshape(-1).astype(np.int64)
        )

    def codes_for_mels(self, mels: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Codes for many windows (of different streams) in one pass: with a batch session,
        windows of equal length as one stacked call; else one call each."""
        if self.batch is None:
            return [self.codes_for_mel(mel) for mel in mels]
        out: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(mels)
        groups: dict[int, list[int]] = {}
        for i, mel in enumerate(mels):
            groups.setdefault(mel.shape[1], []).append(i)
        for members in groups.values():
            if len(members) == 1:  # the reference session, exactly as alone
                out[members[0]] = self.codes_for_mel(mels[members[0]])
                continue
            codes = self.batch.run(np.stack([mels[i] for i in members]))
            for i, row in zip(members, codes.astype(np.int64), strict=True):
                out[i] = self._checked(row)
        return out

    def _checked(self, codes: np.ndarray) -> np.ndarray:
        if codes.size and (codes.min() < 0 or codes.max() >= SEMANTIC_CODES):
            raise CheckpointError(self.path, f"model produced codes outside [0, {SEMANTIC_CODES})")
        return codes

    def tokenize(self, samples: np.ndarray) -> list[int]:
        return drive(self.tokenize_steps(samples), self._run_one)

    def tokenize_steps(self, samples: np.ndarray) -> Generator[SemanticJob, np.ndarray, list[int]]:
        """`tokenize` as a step generator (batching.py): one job per 30 s piece."""
        codes: list[int] = []
        for start in range(0, len(samples), PIECE_SAMPLES):
            piece = samples[start : start + PIECE_SAMPLES]
            if len(piece) >= MIN_PIECE_SAMPLES:
                piece_codes = yield SemanticJob(whisper_mel.log_mel_spectrogram(piece))
                codes += piece_codes.tolist()
        return codes

    def _run_one(self, job: SemanticJob) -> np.ndarray:
        return self.codes_for_mel(job.mel)

    def stream(self, options: SemanticStreamOptions) -> SemanticStream:
        return SemanticStream(self, options)


def _check_signature(session: ort.InferenceSession, path: Path) -> None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) < 2 or not outputs:
        raise CheckpointError(path, "expected inputs (mel, length) and at least one output")
    mel_shape = inputs[0].shape
    mel_bins = mel_shape[1] if len(mel_shape) == 3 else None
    if len(mel_shape) != 3 or (isinstance(mel_bins, int) and mel_bins != whisper_mel.N_MELS):
        raise CheckpointError(
            path, f"input 0 should be mel (1, {whisper_mel.N_MELS}, T), model says {mel_shape}"
        )


def batch_runner(
    tokenizer: SemanticTokenizer, options: ort.SessionOptions, providers: list[str]
) -> BatchRunner | None:
    """The model with its batch axis opened, if stacking windows gives every window exactly
    the codes of its own call (checked on random windows); else None.

    The released ``speech_tokenizer_v1.onnx`` declares batch 1. Its graph may still compute
    per row; which length input it wants (one per window, or one for all — windows are
    stacked only at equal length) is found by trying both.
    """
    import onnx  # only needed here

    model = onnx.load(str(tokenizer.path))
    for value in (*model.graph.input[:2], model.graph.output[0]):
        shape = value.type.tensor_type.shape
        if shape.dim:
            shape.dim[0].dim_param = "batch"
    probe = np.random.default_rng(0).uniform(-1, 1, (3, whisper_mel.N_MELS, 96)).astype(np.float32)
    want = np.stack([tokenizer.codes_for_mel(mel) for mel in probe])
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # a variant that fails is expected; it raises, no need to log
    for length_per_window in (True, False):
        try:
            session = ort.InferenceSession(
                model.SerializeToString(), sess_options=options, providers=providers
            )
            runner = BatchRunner(session, length_per_window)
            if np.array_equal(runner.run(probe, quiet).astype(np.int64), want):
                return runner
        except Exception:  # onnxruntime's own errors: this variant does not batch
            continue
    log.warning(
        "%s: stacked windows do not reproduce single calls; vq06 runs per window", tokenizer.path
    )
    return None


class PieceFrames:
    """Raw log10 mel frames of one <= 30 s piece, computed as its samples arrive.

    Memory stays bounded: audio is kept only from the next frame's first sample on, frames
    only from the oldest frame a window can still need (see ``forget_before``).
    """

    def __init__(self) -> None:
        self.audio = np.zeros(0, dtype=np.float32)  # piece samples [audio_offset, samples)
        self.audio_offset = 0
        self.samples = 0
        self.frames = np.zeros((whisper_mel.N_MELS, 0), dtype=np.float32)  # [frame_offset, ready)
        self.frame_offset = 0
        self.ready = 0
        self.maximum = -np.inf
        self.complete = False

    def append(self, samples: np.ndarray) -> int:
        """Take as many samples as fit in the piece; returns how many were taken."""
        taken = min(len(samples), PIECE_SAMPLES - self.samples)
        self.audio = np.concatenate([self.audio, samples[:taken]])
        self.samples += taken
        self._compute(final=self.samples == PIECE_SAMPLES)
        return taken

    def close(self) -> None:
        """No more samples: the last frames use the end reflection."""
        self._compute(final=True)

    def window(self, start: int, stop: int) -> np.ndarray:
        return self.frames[:, start - self.frame_offset : stop - self.frame_offset]

    def forget_before(self, frame: int) -> None:
        if frame > self.frame_offset:
            self.frames = self.frames[:, frame - self.frame_offset :]
            self.frame_offset = frame

    def _compute(self, *, final: bool) -> None:
        hop, pad = whisper_mel.HOP, whisper_mel.PAD
        if final:
            target = whisper_mel.frame_count(self.samples)
            self.complete = True
        else:  # frame k needs samples up to k*HOP + PAD - 1, and sample PAD for the head
            target = max(0, (self.samples - pad - 1) // hop + 1)
        if target > self.ready:
            start = self.ready * hop - self.audio_offset
            stop = (target - 1) * hop + whisper_mel.N_FFT - self.audio_offset
            padded = whisper_mel.reflect_padded(self.audio, start, stop, tail=final)
            new = whisper_mel.log10_mel_frames(padded, target - self.ready)
            self.frames = np.concatenate([self.frames, new], axis=1)
            self.maximum = max(self.maximum, float(new.max()))
            self.ready = target
        self._forget_audio()

    def _forget_audio(self) -> None:
        # the head reflection reads samples 1..PAD, so keep everything until frame 2
        first_needed = self.ready * whisper_mel.HOP - whisper_mel.PAD if self.ready >= 2 else 0
        if first_needed > self.audio_offset:
            self.audio = self.audio[first_needed - self.audio_offset :]
            self.audio_offset = first_needed


class SemanticStream:
    """Incremental vq06 codes for one audio stream (see the module docstring)."""

    def __init__(self, tokenizer: SemanticTokenizer, options: SemanticStreamOptions) -> None:
        self.tokenizer = tokenizer
        self.options = options
        self.piece = PieceFrames()
        self.committed = 0  # codes of the current piece already returned

    def push(self, samples: np.ndarray) -> list[int]:
        return drive(self.push_steps(samples), self.tokenizer._run_one)

    def finish(self) -> list[int]:
        return drive(self.finish_steps(), self.tokenizer._run_one)

    def push_steps(self, samples: np.ndarray) -> Generator[SemanticJob, np.ndarray, list[int]]:
        """`push` as a step generator (batching.py): one job per model window."""
        codes: list[int] = []
        while len(samples):
            taken = self.piece.append(samples)
            samples = samples[taken:]
            codes += yield from self._run_windows()
            if self.piece.complete:
                self._next_piece()
        return codes

    def finish_steps(self) -> Generator[SemanticJob, np.ndarray, list[int]]:
        if self.piece.samples < MIN_PIECE_SAMPLES or self.piece.complete:
            return []
        self.piece.close()
        return (yield from self._run_windows())

    def _next_piece(self) -> None:
        self.piece = PieceFrames()
        self.committed = 0

    def _run_windows(self) -> Generator[SemanticJob, np.ndarray, list[int]]:
        codes: list[int] = []
        opts = self.options
        while True:
            total_codes = -(-self.piece.ready // FRAMES_PER_CODE)
            step_end = self.committed + opts.hop_codes + opts.lookahead_codes
            if self.piece.complete and self.committed < total_codes:
                end = min(step_end, total_codes)
                last = end == total_codes
            elif not self.piece.complete and step_end * FRAMES_PER_CODE <= self.piece.ready:
                end, last = step_end, False
            else:
                return codes
            new = yield from self._window_codes(end)
            if not last and len(new) < opts.hop_codes:
                raise CheckpointError(
                    self.tokenizer.path,
                    f"model returned {len(new)} new codes where {opts.hop_codes} were due "
                    f"(expected one code per {FRAMES_PER_CODE} mel frames)",
                )
            keep = new if last else new[: opts.hop_codes]
            codes += keep
            # a last window ends the piece even if the model returned fewer codes than due
            self.committed = total_codes if last else self.committed + len(keep)
            self.piece.forget_before(max(0, self.committed - opts.context_codes) * FRAMES_PER_CODE)

    def _window_codes(self, end_code: int) -> Generator[SemanticJob, np.ndarray, list[int]]:
        """Run the model on [committed - context, end_code) codes; codes from ``committed`` on."""
        first = max(0, self.committed - self.options.context_codes)
        start, stop = first * FRAMES_PER_CODE, min(end_code * FRAMES_PER_CODE, self.piece.ready)
        mel = whisper_mel.scale_log_mel(self.piece.window(start, stop), self.piece.maximum)
        codes = yield SemanticJob(mel)
        return codes[self.committed - first :].tolist()
