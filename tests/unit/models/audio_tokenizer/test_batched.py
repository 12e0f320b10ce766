"""Batched tokenizer rounds (batching.py): many utterances, one encoder batch and one vq06 pass
per round, each utterance's codes equal to the codes it gets alone; utterances join and leave
at different rounds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from services.models.audio_tokenizer import AudioTokenizer, AudioTokenizerStream
from services.models.audio_tokenizer.batching import (
    EncoderJob,
    Job,
    SemanticJob,
    Steps,
    advance,
    run_round,
)
from services.models.audio_tokenizer.sanm import EncoderState
from services.models.audio_tokenizer.semantic import BatchRunner

# Stacked rows of a batched matmul differ from one-row calls only in the BLAS kernel's
# summation order: encoder frames max |diff| measured 7.2e-7 (fp32, CPU, tiny pack); the codes
# (k-means / vq argmin) come out identical.
FRAME_ATOL = 2e-6


@dataclass
class Utterance:
    """One live stream: its audio in chunks, from round ``start`` on; ``leaves_after`` chunks
    and it is abandoned (the client left) without finishing."""

    samples: np.ndarray
    rate: int
    chunk: int  # samples per feed call
    start: int
    leaves_after: int | None = None
    stream: AudioTokenizerStream | None = None
    ids: list[int] = field(default_factory=list)
    calls: int = 0
    done: bool = False

    def chunks(self) -> list[np.ndarray]:
        return [self.samples[i : i + self.chunk] for i in range(0, len(self.samples), self.chunk)]

    def next_call(self) -> Steps[list[int]] | None:
        """The generator of its next feed/finish (None when it has nothing more to do)."""
        assert self.stream is not None
        chunks = self.chunks()
        if self.leaves_after is not None and self.calls >= self.leaves_after:
            return None
        if self.calls < len(chunks):
            return self.stream.feed_steps(chunks[self.calls])
        if self.calls == len(chunks):
            return self.stream.finish_steps()
        return None


def speech_like(seconds: float, rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 2.5 * t) ** 2
    wav = envelope * sum(0.3 / k * np.sin(k * phase) for k in range(1, 8))
    return (wav + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def alone(tokenizer: AudioTokenizer, utterance: Utterance) -> list[int]:
    stream = tokenizer.stream(utterance.rate)
    chunks = utterance.chunks()
    if utterance.leaves_after is not None:
        return [i for c in chunks[: utterance.leaves_after] for i in stream.feed(c)]
    return [i for c in chunks for i in stream.feed(c)] + stream.finish()


def run_rounds(
    tokenizer: AudioTokenizer, utterances: list[Utterance], clip: np.ndarray
) -> tuple[list[list[Any]], list[int]]:
    """A round loop in lock-step: each round starts the next call of every utterance whose
    previous call returned (from its start round on), then runs one batched round.
    A whole-clip ``tokenize`` runs alongside. Returns the rounds' jobs and the clip's ids."""
    calls: dict[int, Steps[Any]] = {}
    pending: dict[int, Job] = {}
    results: list[Any] = [None] * (len(utterances) + 1)
    clip_index = len(utterances)
    calls[clip_index] = tokenizer.tokenize_steps(clip, 16_000)
    advance(calls[clip_index], None, clip_index, pending, results)
    rounds: list[list[Any]] = []
    round_number = 0
    while True:
        for i, u in enumerate(utterances):
            if u.done or i in calls or round_number < u.start:
                continue
            if u.stream is None:
                u.stream = tokenizer.stream(u.rate)
            steps = u.next_call()
            if steps is None:
                u.done = True  # finished, or left: its stream is simply dropped
                continue
            calls[i] = steps
            advance(steps, None, i, pending, results)
        for i in [i for i in calls if i not in pending]:  # returned without a model call
            _collect(utterances, calls, results, i, clip_index)
        if not pending and all(u.done for u in utterances):
            return rounds, results[clip_index]
        order = list(pending)
        jobs = [pending[i] for i in order]
        rounds.append(jobs)
        for i, output in zip(order, run_round(tokenizer, jobs), strict=True):
            advance(calls[i], output, i, pending, results)
            if i not in pending:
                _collect(utterances, calls, results, i, clip_index)
        round_number += 1


def _collect(
    utterances: list[Utterance],
    calls: dict[int, Steps[Any]],
    results: list[Any],
    index: int,
    clip_index: int,
) -> None:
    del calls[index]
    if index == clip_index:
        return
    utterances[index].ids += results[index]
    utterances[index].calls += 1


@pytest.fixture(scope="module")
def batching(tiny_tokenizer_dir: Path) -> AudioTokenizer:
    """The tokenizer as the service loads it: vq06 windows of a round stacked in one call."""
    tokenizer = AudioTokenizer.from_pretrained(tiny_tokenizer_dir, semantic_batch=True)
    assert tokenizer.semantic.batch is not None  # the tiny model batches exactly
    return tokenizer


def test_batched_codes_equal_single_utterance_codes(
    batching: AudioTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer = batching
    same = {"rate": 16_000, "chunk": 3840}
    utterances = [
        Utterance(speech_like(3.0, 16_000, seed=1), **same, start=0),
        Utterance(speech_like(2.2, 16_000, seed=2), **same, start=0),
        # joins later, at another input rate
        Utterance(speech_like(4.1, 24_000, seed=3), 24_000, chunk=4800, start=3),
        # short, chunks smaller than a stride
        Utterance(speech_like(1.3, 16_000, seed=4), 16_000, chunk=1600, start=5),
        # leaves mid-way (never finishes)
        Utterance(speech_like(5.0, 16_000, seed=5), **same, start=1, leaves_after=12),
        # two strides and a bit per call
        Utterance(speech_like(2.6, 16_000, seed=6), 16_000, chunk=8000, start=9),
    ]
    clip = speech_like(2.0, 16_000, seed=7)
    wanted = [alone(tokenizer, u) for u in utterances]
    wanted_clip = tokenizer.tokenize(clip, 16_000)

    encoder = tokenizer.linguistic.encoder
    stacked: list[int] = []  # streams per encoder call
    forward_group = encoder._forward_group

    def spy(features: Any, states: Any) -> Any:
        stacked.append(len(states))
        return forward_group(features, states)

    monkeypatch.setattr(encoder, "_forward_group", spy)
    stacked_windows: list[int] = []
    batch_run = BatchRunner.run

    def spy_windows(runner: BatchRunner, mels: np.ndarray, *args: Any) -> np.ndarray:
        stacked_windows.append(len(mels))
        return batch_run(runner, mels, *args)

    monkeypatch.setattr(BatchRunner, "run", spy_windows)
    rounds, clip_ids = run_rounds(tokenizer, utterances, clip)

    for u, want in zip(utterances, wanted, strict=True):
        assert len(want) > 0
        assert u.ids == want
    assert clip_ids == wanted_clip
    encoder_batch = max(sum(isinstance(j, EncoderJob) for j in jobs) for jobs in rounds)
    semantic_batch = max(sum(isinstance(j, SemanticJob) for j in jobs) for jobs in rounds)
    assert encoder_batch >= 4 and semantic_batch >= 2  # rounds really were shared
    assert max(stacked) >= 4  # and steady streams ran as one stacked encoder call
    assert max(stacked_windows) >= 2  # and equal vq06 windows as one stacked ONNX call


def test_batched_encoder_matches_per_stream_calls(tokenizer: AudioTokenizer) -> None:
    """The stacked encoder itself: per-stream outputs and states as alone (3 streams, states
    at different stages: the groups by shape keep early chunks apart)."""
    encoder = tokenizer.linguistic.encoder
    torch.manual_seed(0)
    size = encoder.config.input_size
    chunks = [[torch.randn(1, 4, size) for _ in range(6)] for _ in range(3)]
    starts = [0, 0, 2]  # the third stream joins two chunks later
    alone_states = [encoder.new_state() for _ in chunks]
    want = [[encoder.forward_chunk(c, alone_states[k]) for c in chunks[k]] for k in range(3)]
    states = [encoder.new_state() for _ in chunks]
    got: list[list[torch.Tensor]] = [[] for _ in chunks]
    for step in range(8):
        live = [k for k in range(3) if 0 <= step - starts[k] < len(chunks[k])]
        features = [chunks[k][step - starts[k]] for k in live]
        outputs = encoder.forward_chunks(features, [states[k] for k in live])
        for k, output in zip(live, outputs, strict=True):
            got[k].append(output)
    for k in range(3):
        for a, b in zip(want[k], got[k], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=FRAME_ATOL)
        _assert_same_state(alone_states[k], states[k])


def _assert_same_state(a: EncoderState, b: EncoderState) -> None:
    assert a.start_index == b.start_index
    assert a.overlap is not None and b.overlap is not None
    torch.testing.assert_close(a.overlap, b.overlap, rtol=0, atol=FRAME_ATOL)
    for x, y in zip(a.layers, b.layers, strict=True):
        assert x is not None and y is not None
        torch.testing.assert_close(x.key, y.key, rtol=0, atol=FRAME_ATOL)
