"""Cross-utterance batching for the audio tokenizer: many streams, one model call per tick.

Every model call of the tokenizer is written as a step generator: the per-stream code (frontend,
resampling, window bookkeeping) runs as before, and where it needs the model it yields a job —
an ``EncoderJob`` (one Paraformer chunk, vq02) or a ``SemanticJob`` (one vq06 mel window) —
and receives the job's codes back. ``run_round`` executes the jobs of many streams together:
the encoder chunks as stacked batches (``SanmEncoder.forward_chunks``), the vq06 windows in one
pass (``SemanticTokenizer.codes_for_mels``). ``run_alone`` drives one generator by itself,
which is what ``AudioTokenizerStream.feed``/``finish`` and ``AudioTokenizer.tokenize`` do.

A generator's result does not depend on which other jobs share its rounds: equal-shape
batches are not padded, and codes are quantised per stream.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from services.models.audio_tokenizer import sanm

if TYPE_CHECKING:
    from services.models.audio_tokenizer.tokenizer import AudioTokenizer

T = TypeVar("T")
J = TypeVar("J")


@dataclass(frozen=True)
class EncoderJob:
    """One chunk of LFR features for a stream's Paraformer state → its vq02 codes."""

    state: sanm.EncoderState
    features: np.ndarray  # (n, input_size) float32


@dataclass(frozen=True)
class SemanticJob:
    """One scaled (128, T) log-mel window → its vq06 codes (np.int64 array)."""

    mel: np.ndarray


Job = EncoderJob | SemanticJob
Steps = Generator[Job, Any, T]


def drive(steps: Generator[J, Any, T], execute: Callable[[J], Any]) -> T:
    """Run a step generator by itself, executing each job it yields with ``execute``."""
    value: Any = None
    while True:
        try:
            job = steps.send(value)
        except StopIteration as stop:
            return stop.value
        value = execute(job)


def run_round(tokenizer: AudioTokenizer, jobs: Sequence[Job]) -> list[Any]:
    """Execute the jobs of one round (at most one per stream), batched by kind."""
    results: list[Any] = [None] * len(jobs)
    encoder = [i for i, job in enumerate(jobs) if isinstance(job, EncoderJob)]
    semantic = [i for i, job in enumerate(jobs) if isinstance(job, SemanticJob)]
    if encoder:
        codes = tokenizer.linguistic.encode_jobs([jobs[i] for i in encoder])  # type: ignore[misc]
        for i, c in zip(encoder, codes, strict=True):
            results[i] = c
    if semantic:
        mels = [jobs[i].mel for i in semantic]  # type: ignore[union-attr]
        for i, window in zip(semantic, tokenizer.semantic.codes_for_mels(mels), strict=True):
            results[i] = window
    return results


def run_alone(tokenizer: AudioTokenizer, steps: Steps[T]) -> T:
    """Drive one step generator to its result, each job a batch of one."""
    return run_together(tokenizer, [steps])[0]


def run_together(tokenizer: AudioTokenizer, generators: Sequence[Steps[T]]) -> list[T]:
    """Drive generators in lock-step rounds until all are done; each one's result, in order."""
    results: list[Any] = [None] * len(generators)
    pending: dict[int, Job] = {}
    for i, steps in enumerate(generators):
        advance(steps, None, i, pending, results)
    while pending:
        order = list(pending)
        outputs = run_round(tokenizer, [pending[i] for i in order])
        for i, output in zip(order, outputs, strict=True):
            advance(generators[i], output, i, pending, results)
    return results


def advance(
    steps: Steps[Any], value: Any, index: int, pending: dict[int, Job], results: list[Any]
) -> None:
    """Send ``value`` into a generator: its next job goes to ``pending``, or its result to
    ``results`` when it is done."""
    try:
        pending[index] = steps.send(value)
    except StopIteration as stop:
        pending.pop(index, None)
        results[index] = stop.value
