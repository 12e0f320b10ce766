"""Cross-stream batching: one step decodes the due chunks of many `Token2WavStream`s together.

Made to be the step function of a `services.common.worker.BatchStepLoop` (one item per
stream key per step)::

    loop = BatchStepLoop(lambda items: step_streams(model, items), max_batch=256, ...)
    audio = await loop.run(request_id, StreamStep(stream, codes, finish=last))

Each stream's audio is what its own `feed`/`finish` calls would return, up to float summation
order (the padded, batched flow; see accel.py and `decode_chunks`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from services.models.token2wav.model import Token2Wav
from services.models.token2wav.streaming import ChunkJob, Token2WavStream, decode_chunks


@dataclass
class StreamStep:
    """New codes for one stream (may be empty), and whether they are its last."""

    stream: Token2WavStream
    codes: Sequence[int] = field(default_factory=list)
    finish: bool = False


def step_streams(
    model: Token2Wav,
    steps: Sequence[StreamStep],
    on_chunk: Callable[[int, ChunkJob, np.ndarray], None] | None = None,
) -> list[np.ndarray]:
    """Push each step's codes, then decode every chunk that became due, batched across streams;
    returns each step's new audio (volume applied), like `feed` (+ `finish`) would.

    A stream with several due chunks (codes arrived in bulk) takes one per round, so rounds
    repeat until nothing is due. `on_chunk(step index, job, audio)` reports each chunk as
    soon as its group is decoded (audio before volume).
    """
    if len({id(step.stream) for step in steps}) != len(steps):
        raise ValueError("step_streams takes at most one step per stream")
    for step in steps:
        step.stream.push(step.codes)
    pieces: list[list[np.ndarray]] = [[] for _ in steps]
    while True:
        owners: list[int] = []
        jobs: list[ChunkJob] = []
        for i, step in enumerate(steps):
            job = step.stream.next_job(finish=step.finish)
            if job is not None:
                owners.append(i)
                jobs.append(job)
        if not jobs:
            break

        report = None if on_chunk is None else _reporter(on_chunk, owners, jobs)
        for index, audio in enumerate(decode_chunks(model, jobs, report)):
            pieces[owners[index]].append(audio)
    return [step.stream.join(p) for step, p in zip(steps, pieces, strict=True)]


def _reporter(
    on_chunk: Callable[[int, ChunkJob, np.ndarray], None],
    owners: list[int],
    jobs: list[ChunkJob],
) -> Callable[[int, np.ndarray], None]:
    def report(index: int, audio: np.ndarray) -> None:
        on_chunk(owners[index], jobs[index], audio)

    return report
