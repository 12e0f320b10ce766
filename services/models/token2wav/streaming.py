"""Chunked token2wav: the CosyVoice-1 streaming scheme adapted to 41.67 Hz mixed tokens.

Flow (per chunk of `hop + overlap` tokens, all with full attention over prompt + chunk):
  * the last `overlap` tokens of a chunk are synthesised but held back; the next chunk starts
    with them again ("head"). Head, middle and tail tokens are interpolated to mel rate
    separately, at absolute frame positions F(i) = mel_frames(i), so the held tail and the next
    head cover exactly the same frames;
  * those frames get the same starting noise (noise is addressed by absolute frame, noise.py)
    and the same `mu` (the held tail's), as CosyVoice's flow cache does, and the prompt's `mu`
    from the first chunk is reused;
  * the new head is crossfaded with the held tail (complementary raised-cosine).
HiFT (per batch of newly final mel frames, "overlap-save"):
  * left context: the last `hift_left_context_frames` final frames are vocoded again, with
    their cached source samples (CosyVoice's `cache_source`), so the decoder sees the same
    input it saw before;
  * right context: up to `hift_right_context_frames` of the held (provisional) flow tail, so
    the newest final frames are not vocoded against zero padding;
  * the harmonic phase continues from where the previous call ended (carry), instead of a new
    random phase per call;
  * the last `hift_crossfade_frames` of output are held and crossfaded with their recomputation.
`finish()` decodes the remaining tokens with nothing held back. A stream that never reached
its first hop decodes in one call and equals `Token2Wav.synthesize` with the same generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from services.models.audio_tokens import GROUP_SIZE
from services.models.token2wav.hift import SourceRandomness
from services.models.token2wav.controls import (
    DEFAULT_N_TIMESTEPS,
    apply_volume,
    check_controls,
    model_codes,
)
from services.models.token2wav.noise import Randomness
from services.models.token2wav.speakers import SpeakerPrompt
from services.models.token2wav.transfer import to_device

if TYPE_CHECKING:
    from services.models.token2wav.model import Token2Wav


@dataclass(frozen=True)
class StreamOptions:
    """Chunking knobs. Token counts are in mixed 41.67 Hz tokens (5 per 120 ms group)."""

    first_hop_tokens: int = 30  # 0.72 s; the first chunk fires at first hop + overlap tokens
    max_hop_tokens: int = 120  # 2.88 s
    hop_growth: float = 2.0  # each hop is the previous × growth, up to max_hop_tokens
    overlap_tokens: int = 15  # 0.36 s look-ahead ≈ 31 mel frames (15 tokens ≈ 31.008 frames)
    hift_left_context_frames: int = 20
    hift_right_context_frames: int = 16
    hift_crossfade_frames: int = 4
    n_timesteps: int | None = None
    cfg_rate: float | None = None
    speed: float = 1.0
    volume: float = 1.0
    record_mel: bool = False  # keep the final mel frames in `Token2WavStream.mel` (diagnostics)

    def __post_init__(self) -> None:
        if self.overlap_tokens < GROUP_SIZE:
            raise ValueError(f"overlap_tokens must be at least {GROUP_SIZE}")
        if self.first_hop_tokens < self.overlap_tokens:
            raise ValueError("first_hop_tokens must be at least overlap_tokens")
        if self.max_hop_tokens < self.first_hop_tokens or self.hop_growth < 1.0:
            raise ValueError("hops must not shrink (max_hop_tokens ≥ first, hop_growth ≥ 1)")
        if not 0 < self.hift_crossfade_frames <= self.hift_left_context_frames:
            raise ValueError("need 0 < hift_crossfade_frames ≤ hift_left_context_frames")
        if self.hift_right_context_frames < 0:
            raise ValueError("hift_right_context_frames must be ≥ 0")
        check_controls(self.speed, self.volume, self.n_timesteps)

    def next_hop(self, hop: int) -> int:
        grown = int(hop * self.hop_growth) // GROUP_SIZE * GROUP_SIZE
        return min(self.max_hop_tokens, max(hop, grown))


def crossfade(fading_out: torch.Tensor, fading_in: torch.Tensor) -> torch.Tensor:
    """Blend two equal-length signals along the last axis with weights that sum to one."""
    n = fading_in.shape[-1]
    ramp = torch.arange(n, dtype=torch.float64, device=fading_in.device)
    rising = (0.5 - 0.5 * torch.cos(torch.pi * (ramp + 0.5) / n)).to(fading_in.dtype)
    return fading_out * (1 - rising) + fading_in * rising


@dataclass
class _HeldTail:
    """The flow output of the last `overlap` tokens, not final until the next chunk."""

    mel: torch.Tensor  # (1, 80, M)
    mu: torch.Tensor  # (1, 80, M)


@dataclass(frozen=True)
class ChunkJob:
    """One flow chunk of one stream: tokens [start, stop), `final` when nothing is held back.

    Made by `Token2WavStream.next_job` (which advances the stream's schedule); decoded, alone
    or together with other streams' jobs, by `decode_chunks`.
    """

    stream: Token2WavStream
    start: int
    stop: int
    final: bool


def hift_window_shapes(
    model: Token2Wav, options: StreamOptions, tokens: int
) -> set[tuple[int, int, int]]:
    """The (left context, new, right context) HiFT window shapes, in mel frames, of every
    non-final chunk of an utterance of `tokens` codes under `options` — what a stream's
    schedule makes, found by walking it (mel frames round per absolute token, so steady
    chunks of one hop come in two or three lengths). Final chunks vary with the utterance's
    length and are left out."""
    shapes = set()
    start, hop, done = 0, options.first_hop_tokens, 0
    overlap = options.overlap_tokens

    def frame(token: int) -> int:
        return model.mel_frames(token, options.speed)

    while start + hop + overlap <= tokens:
        stop = start + hop + overlap
        new = frame(stop - overlap) - frame(start)
        right = min(options.hift_right_context_frames, frame(stop) - frame(stop - overlap))
        shapes.add((min(options.hift_left_context_frames, done), new, right))
        done += new
        start, hop = start + hop, options.next_hop(hop)
    return shapes


class Token2WavStream:
    """Feed codes as they arrive; get audio chunks back. One utterance, one speaker.

    `feed`/`finish` decode this stream's chunks one at a time. A server with many streams can
    instead `push` codes into each, collect the due `next_job`s and decode them together with
    `decode_chunks` (or `step_streams` in batching.py, which does both) — the audio is the
    same up to float summation order.
    """

    def __init__(
        self,
        model: Token2Wav,
        speaker: SpeakerPrompt,
        *,
        generator: torch.Generator | None,
        options: StreamOptions,
    ) -> None:
        self.model = model
        self.options = options
        self.randomness = model.new_randomness(generator)
        device, dtype = model.device, model.flow.dtype
        self._prompt_codes_cpu = torch.from_numpy(speaker.prompt_codes).long()
        self._prompt_codes = self._prompt_codes_cpu[None].to(device)
        self._prompt_mel = torch.from_numpy(speaker.prompt_mel)[None].to(device)
        self._embedding = torch.from_numpy(speaker.embedding)[None].to(device, dtype)
        self._codes: list[int] = []
        self._offset = 0  # first token of the next flow chunk
        self._hop = options.first_hop_tokens
        self._prompt_mu: torch.Tensor | None = None
        self._spks: torch.Tensor | None = None  # (80,) speaker features, made once
        self._held: _HeldTail | None = None
        self._vocoder = _StreamingVocoder(model, self.randomness, options)
        self._finished = False  # no more codes accepted
        self._final_job_made = False
        self.chunks_decoded = 0
        self._mel_pieces: list[np.ndarray] = []

    @property
    def first_chunk_tokens(self) -> int:
        return self.options.first_hop_tokens + self.options.overlap_tokens

    @property
    def prompt_frames(self) -> int:
        return int(self._prompt_mel.shape[1])

    @property
    def codes_received(self) -> int:
        return len(self._codes)

    @property
    def done(self) -> bool:
        """Finished and its last chunk handed out."""
        return self._final_job_made

    def feed(self, codes: Sequence[int]) -> np.ndarray:
        """Add codes; returns the audio that became ready (possibly empty)."""
        self.push(codes)
        pieces = []
        while (job := self.next_job()) is not None:
            pieces.append(decode_chunks(self.model, [job])[0])
        return self.join(pieces)

    def finish(self) -> np.ndarray:
        """Decode what is left, including everything held back; the stream is then closed."""
        if self._finished:
            raise RuntimeError("stream already finished")
        pieces = []
        while (job := self.next_job(finish=True)) is not None:
            pieces.append(decode_chunks(self.model, [job])[0])
        return self.join(pieces)

    def push(self, codes: Sequence[int]) -> None:
        """Add codes without decoding anything (see `next_job`)."""
        if self._finished:
            raise RuntimeError("stream already finished")
        self._codes.extend(model_codes(self.model.config.flow.vocab_size, codes).tolist())

    def has_due_chunk(self, finish: bool = False) -> bool:
        """Whether `next_job(finish)` would return a job (the schedule is not advanced)."""
        if self._final_job_made:
            return False
        overlap = self.options.overlap_tokens
        if not self._finished and len(self._codes) - self._offset >= self._hop + overlap:
            return True
        return finish and bool(self._codes)

    def next_job(self, finish: bool = False) -> ChunkJob | None:
        """The next chunk whose codes are all here (None if none), advancing the schedule.

        With `finish`, once no regular chunk is due, the stream closes and the remaining codes
        (held tail included) become the final job; a stream that never got a code has none.
        """
        if self._final_job_made:
            return None
        overlap = self.options.overlap_tokens
        if not self._finished and len(self._codes) - self._offset >= self._hop + overlap:
            job = ChunkJob(self, self._offset, self._offset + self._hop + overlap, final=False)
            self._offset += self._hop
            self._hop = self.options.next_hop(self._hop)
            return job
        if not finish:
            return None
        self._finished = self._final_job_made = True
        if not self._codes:
            return None
        return ChunkJob(self, self._offset, len(self._codes), final=True)

    @property
    def mel(self) -> np.ndarray:
        """(frames, 80) final mel so far; only with `record_mel=True`."""
        if not self.options.record_mel:
            raise RuntimeError("create the stream with record_mel=True to keep its mel")
        n_mels = self.model.config.flow.output_size
        return np.concatenate(self._mel_pieces) if self._mel_pieces else np.zeros((0, n_mels))

    def join(self, pieces: Sequence[np.ndarray]) -> np.ndarray:
        """Concatenate decoded pieces of this stream and apply its volume."""
        joined = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        return apply_volume(joined, self.options.volume)

    def _frame(self, token_index: int) -> int:
        return self.model.mel_frames(token_index, self.options.speed)

    def _segments(self, job: ChunkJob) -> list[tuple[int, int]]:
        """(tokens, frames) pieces: [head overlap] [middle] [tail overlap unless final]."""
        overlap = self.options.overlap_tokens
        points = [job.start]
        if self._held is not None:
            points.append(job.start + overlap)
        if not job.final:
            points.append(job.stop - overlap)
        points.append(job.stop)
        points = sorted(set(points))
        pairs = zip(points, points[1:], strict=False)
        return [(b - a, self._frame(b) - self._frame(a)) for a, b in pairs]

    def _flow_key(self) -> tuple[int, float]:
        options, cfm = self.options, self.model.flow.decoder
        rate = cfm.inference_cfg_rate if options.cfg_rate is None else options.cfg_rate
        return options.n_timesteps or DEFAULT_N_TIMESTEPS, float(rate)

    def _new_frames(self, job: ChunkJob) -> int:
        return self._frame(job.stop) - self._frame(job.start)

    def _tokens(self, job: ChunkJob) -> torch.Tensor:
        return torch.tensor(self._codes[job.start : job.stop], dtype=torch.long)

    def _noise(self, job: ChunkJob) -> torch.Tensor:
        return self.randomness.flow_noise(
            self.prompt_frames, self._frame(job.start), self._frame(job.stop)
        )

    def _fix_mu(self, mu: torch.Tensor) -> None:
        """Prompt `mu` from the first chunk, held tail's `mu` on the head (flow cache);
        `mu` (1, 80, T) is this item's row, changed in place."""
        prompt_frames = self.prompt_frames
        if self._prompt_mu is None:
            self._prompt_mu = mu[:, :, :prompt_frames].clone()
        mu[:, :, :prompt_frames] = self._prompt_mu
        if self._held is not None:
            head = self._held.mu.shape[2]
            mu[:, :, prompt_frames : prompt_frames + head] = self._held.mu

    def _settle(
        self, job: ChunkJob, mel: torch.Tensor, mu: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """After the flow: crossfade the head, hold the tail. mel (1, 80, new frames) float,
        mu (1, 80, new frames). Returns (final frames for HiFT, right context or None)."""
        if self._held is not None:
            head = self._held.mel.shape[2]
            mel[:, :, :head] = crossfade(self._held.mel, mel[:, :, :head])
        if job.final:
            self._held = None
            ready = mel
        else:
            tail = self._frame(job.stop) - self._frame(job.stop - self.options.overlap_tokens)
            self._held = _HeldTail(mel=mel[:, :, -tail:], mu=mu[:, :, -tail:].float())
            ready = mel[:, :, :-tail]
        self.chunks_decoded += 1
        if self.options.record_mel:
            self._mel_pieces.append(ready[0].T.cpu().numpy())
        return ready, None if self._held is None else self._held.mel


@torch.inference_mode()
def decode_chunks(
    model: Token2Wav,
    jobs: Sequence[ChunkJob],
    on_ready: Callable[[int, np.ndarray], None] | None = None,
) -> list[np.ndarray]:
    """Decode chunks of (different) streams together; returns each job's audio (before its
    stream's volume; `Token2WavStream.join` applies it), in job order.

    At most one job per stream, jobs in each stream's order. Jobs with the same solver
    settings (steps, CFG rate) share flow calls — with `Token2Wav.compile_for_gpu` grouped by
    padded frame count, shortest first, at most `max_batch` per call — and HiFT calls are
    shared by items with equal window shapes. `on_ready(job index, audio)` is called as each
    group finishes, so short chunks (first chunks) are not held back by long ones.
    """
    if len({id(job.stream) for job in jobs}) != len(jobs):
        raise ValueError("decode_chunks takes at most one job per stream")
    results: list[np.ndarray | None] = [None] * len(jobs)
    for group in _flow_groups(model, jobs):
        items = [jobs[i] for i in group]
        mels, mus = _run_flow(model, items)
        settled = [
            job.stream._settle(job, mel, mu) for job, mel, mu in zip(items, mels, mus, strict=True)
        ]
        audio = _vocode(
            [job.stream._vocoder for job in items],
            [ready for ready, _ in settled],
            [right for _, right in settled],
            [job.final for job in items],
        )
        for i, piece in zip(group, audio, strict=True):
            results[i] = piece
            if on_ready is not None:
                on_ready(i, piece)
    return [r if r is not None else np.zeros(0, dtype=np.float32) for r in results]


def _flow_groups(
    model: Token2Wav, jobs: Sequence[ChunkJob], apart: bool = True
) -> list[list[int]]:
    """Job indices per flow call: same (steps, CFG); with a solver, grouped by padded frame
    count (small groups join a longer one when padding is cheaper than another call, see
    `AccelOptions.merge_frames`), shortest first, at most its largest batch bucket a call;
    first chunks (the latency a listener waits for) go in calls of their own, ahead of the
    rest (`AccelOptions.first_chunks_apart`)."""
    solver = model.solver
    if apart and solver is not None and solver.options.first_chunks_apart:
        firsts = [i for i, job in enumerate(jobs) if job.start == 0]
        if 0 < len(firsts) < len(jobs):  # first chunks in their own calls, ahead of the rest
            rest = [i for i, job in enumerate(jobs) if job.start != 0]
            ahead = _flow_groups(model, [jobs[i] for i in firsts], apart=False)
            behind = _flow_groups(model, [jobs[i] for i in rest], apart=False)
            return [[firsts[i] for i in g] for g in ahead] + [[rest[i] for i in g] for g in behind]
    groups: dict[tuple[int, int, float], list[int]] = {}
    for i, job in enumerate(jobs):
        frames = job.stream.prompt_frames + job.stream._new_frames(job)
        padded = solver.padded_frames(frames) if solver is not None else 0
        groups.setdefault((padded, *job.stream._flow_key()), []).append(i)
    if solver is None:
        return [groups[key] for key in sorted(groups)]
    limit, merge_frames = solver.options.max_batch, solver.options.merge_frames
    merged: list[tuple[int, list[int]]] = []  # (padded frames, members), largest first
    for padded, *settings in sorted(groups, reverse=True):
        members = groups[(padded, *settings)]  # type: ignore[index]
        if merged and merged[-1][1] and _same_settings(jobs, merged[-1][1][0], members[0]):
            top, top_members = merged[-1]
            fits = len(top_members) + len(members) <= limit
            if fits and len(members) * (top - padded) <= merge_frames:
                top_members.extend(members)
                continue
        merged.append((padded, list(members)))
    out = []
    for _, members in reversed(merged):  # shortest first: first chunks are not held back
        out += [members[i : i + limit] for i in range(0, len(members), limit)]
    return out


def _same_settings(jobs: Sequence[ChunkJob], a: int, b: int) -> bool:
    return jobs[a].stream._flow_key() == jobs[b].stream._flow_key()


def _run_flow(
    model: Token2Wav, jobs: Sequence[ChunkJob]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One flow call for jobs with the same solver settings → per job (new mel (1, 80, n)
    float32, its mu (1, 80, n))."""
    flow = model.flow
    n_timesteps, cfg_rate = jobs[0].stream._flow_key()
    if model.solver is None and len(jobs) == 1:
        return _run_flow_single(model, jobs[0], n_timesteps, cfg_rate)
    streams = [job.stream for job in jobs]
    rows = [
        torch.cat([s._prompt_codes_cpu, s._tokens(j)]) for s, j in zip(streams, jobs, strict=True)
    ]
    segments = [
        [(int(s._prompt_codes.shape[1]), s.prompt_frames), *s._segments(j)]
        for s, j in zip(streams, jobs, strict=True)
    ]
    mu, lengths = flow.mu_padded(rows, segments)
    for i, stream in enumerate(streams):
        stream._fix_mu(mu[i : i + 1, :, : lengths[i]])
    spks = torch.stack([_spks(s) for s in streams])
    frames = mu.shape[2]
    cond = mu.new_zeros(mu.shape)
    noise = torch.zeros(len(jobs), mu.shape[1], frames)
    for i, (stream, job) in enumerate(zip(streams, jobs, strict=True)):
        cond[i, :, : stream.prompt_frames] = stream._prompt_mel[0].T.to(mu.dtype)
        noise[i, :, : lengths[i]] = stream._noise(job)
    noise = to_device(noise, model.device)
    if model.solver is not None:
        x = model.solver.solve(noise, mu, spks, cond, lengths, n_timesteps, cfg_rate)
    else:
        mask = torch.zeros(len(jobs), 1, frames, device=mu.device, dtype=mu.dtype)
        for i, n in enumerate(lengths):
            mask[i, :, :n] = 1
        x = flow.decoder.solve(noise, mu, spks, cond, mask, n_timesteps, cfg_rate)
    mels, mus = [], []
    for i, stream in enumerate(streams):
        mels.append(x[i : i + 1, :, stream.prompt_frames : lengths[i]].float())
        mus.append(mu[i : i + 1, :, stream.prompt_frames : lengths[i]])
    return mels, mus


def _run_flow_single(
    model: Token2Wav, job: ChunkJob, n_timesteps: int, cfg_rate: float
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One stream without a solver: the unpadded modules, exactly as upstream runs them."""
    stream, flow = job.stream, model.flow
    conditions = flow.conditions(
        stream._tokens(job)[None].to(model.device),
        stream._prompt_codes,
        stream._prompt_mel,
        stream._embedding,
        stream._segments(job),
    )
    stream._fix_mu(conditions.mu)
    noise = stream._noise(job)[None].to(model.device)
    mel = flow.sample(conditions, noise, n_timesteps, cfg_rate)
    return [mel], [conditions.mu[:, :, conditions.prompt_frames :]]


def _spks(stream: Token2WavStream) -> torch.Tensor:
    if stream._spks is None:
        stream._spks = stream.model.flow.speaker_features(stream._embedding)[0]
    return stream._spks


class _StreamingVocoder:
    """HiFT over a growing mel: left context with cached source, right context, crossfade."""

    def __init__(self, model: Token2Wav, randomness: Randomness, options: StreamOptions) -> None:
        self.model = model
        self.hift = model.hift
        self.device = model.device
        self.randomness = randomness
        self.spf = model.hift.samples_per_frame
        self.left_frames = options.hift_left_context_frames
        self.right_frames = options.hift_right_context_frames
        self.crossfade_samples = options.hift_crossfade_frames * self.spf
        n_mels = model.config.hift.in_channels
        self.mel_tail = torch.zeros(1, n_mels, 0, device=self.device)
        self.source_tail = torch.zeros(1, 1, 0, device=self.device)
        self.speech_tail = torch.zeros(1, 0, device=self.device)
        self.carry: torch.Tensor | None = None
        self.done_frames = 0  # final frames already vocoded

    def push(
        self, new_mel: torch.Tensor, right_context: torch.Tensor | None, final: bool
    ) -> np.ndarray:
        """Vocode `new_mel` (1, 80, n) final frames; returns the samples that are now settled."""
        return _push_group([self], [new_mel], [right_context], [final])[0]

    def _right(self, right_context: torch.Tensor | None, final: bool) -> torch.Tensor:
        if right_context is None or final:
            return torch.zeros(1, self.mel_tail.shape[1], 0, device=self.device)
        return right_context[:, :, : self.right_frames].to(self.device, torch.float32)

    def _settle(self, wav: torch.Tensor, left: int, middle: int, final: bool) -> torch.Tensor:
        """wav (L,) of this item's window → settled samples (on the device); keeps the
        crossfade tail."""
        held = self.speech_tail.shape[1]
        keep = 0 if final else min(self.crossfade_samples, middle)
        settled = wav[left - held : left + middle - keep].clone()
        if held:
            settled[:held] = crossfade(self.speech_tail[0], settled[:held])
        self.speech_tail = wav[None, left + middle - keep : left + middle]
        return settled

    def _advance(
        self, new_mel: torch.Tensor, new_source: torch.Tensor, last_cycles: torch.Tensor | None
    ) -> None:
        """Keep the left context: mel, its source samples, and the phase reached (cycles at
        the last new sample, (1, H); None when there were no new samples)."""
        if last_cycles is not None:
            self.carry = last_cycles
        self.mel_tail = torch.cat([self.mel_tail, new_mel], dim=2)[:, :, -self.left_frames :]
        kept = self.mel_tail.shape[2] * self.spf
        source = torch.cat([self.source_tail, new_source], dim=2)
        self.source_tail = source[:, :, source.shape[2] - kept :]
        self.done_frames += new_mel.shape[2]


def _vocode(
    vocoders: Sequence[_StreamingVocoder],
    new_mels: Sequence[torch.Tensor],
    rights: Sequence[torch.Tensor | None],
    finals: Sequence[bool],
) -> list[np.ndarray]:
    """HiFT for several streams: items with equal window shapes share one call."""
    groups: dict[tuple[int, int, int, bool], list[int]] = {}
    for i, (vocoder, mel, right, final) in enumerate(
        zip(vocoders, new_mels, rights, finals, strict=True)
    ):
        right_frames = vocoder._right(right, final).shape[2]
        key = (vocoder.mel_tail.shape[2], mel.shape[2], right_frames, vocoder.carry is None)
        groups.setdefault(key, []).append(i)
    out: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(vocoders)
    for members in groups.values():
        audio = _push_group(
            [vocoders[i] for i in members],
            [new_mels[i] for i in members],
            [rights[i] for i in members],
            [finals[i] for i in members],
        )
        for i, piece in zip(members, audio, strict=True):
            out[i] = piece
    return out


def _push_group(
    vocoders: Sequence[_StreamingVocoder],
    new_mels: Sequence[torch.Tensor],
    rights: Sequence[torch.Tensor | None],
    finals: Sequence[bool],
) -> list[np.ndarray]:
    """One HiFT call for streams whose windows have the same shape (left, new, right frames)."""
    first = vocoders[0]
    hift, device, spf = first.hift, first.device, first.spf
    mels = [mel.to(device, torch.float32) for mel in new_mels]
    windows = [
        torch.cat([v.mel_tail, mel, v._right(right, final)], dim=2)
        for v, mel, right, final in zip(vocoders, mels, rights, finals, strict=True)
    ]
    window = torch.cat(windows)
    left = first.mel_tail.shape[2] * spf
    middle = mels[0].shape[2] * spf
    fresh_samples = window.shape[2] * spf - left
    starts = [v.done_frames * spf for v in vocoders]
    carries = [v.carry for v in vocoders]
    phases = to_device(torch.stack([v.randomness.harmonic_phases for v in vocoders]), device)
    noise = to_device(
        torch.stack(
            [
                v.randomness.source_rows(start, start + fresh_samples)
                for v, start in zip(vocoders, starts, strict=True)
            ]
        ),
        device,
    )
    carry = None if carries[0] is None else torch.cat([c for c in carries if c is not None])
    source_tails = torch.cat([v.source_tail for v in vocoders])
    graphs = first.model.hift_graphs
    graphed = None
    if graphs is not None:
        graphed = graphs.run(window, source_tails, phases, noise, carry, left, middle)
    last_cycles: torch.Tensor | None
    if graphed is not None:
        wav, new_source, last_cycles = graphed
    else:
        f0 = hift.f0_per_sample(window)[:, left:]
        fresh_source, cycles = hift.source(f0, SourceRandomness(phases, noise, carry))
        wav = hift.decode(window, torch.cat([source_tails, fresh_source], dim=2))
        new_source = fresh_source[:, :, :middle]
        last_cycles = cycles[:, :, middle - 1] if middle else None
    settled = []
    for i, (vocoder, mel, final) in enumerate(zip(vocoders, mels, finals, strict=True)):
        settled.append(vocoder._settle(wav[i], left, middle, final))
        last = None if last_cycles is None else last_cycles[i : i + 1]
        vocoder._advance(mel, new_source[i : i + 1], last)
    # one device → host copy (one sync) for the whole group, not one per item
    host = torch.cat(settled).cpu().numpy().astype(np.float32)
    bounds = np.cumsum([piece.numel() for piece in settled])[:-1]
    return np.split(host, bounds)
