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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from services.models.audio_tokens import GROUP_SIZE
from services.models.token2wav.hift import SourceRandomness
from services.models.token2wav.model import (
    DEFAULT_N_TIMESTEPS,
    apply_volume,
    check_controls,
    model_codes,
)
from services.models.token2wav.noise import Randomness
from services.models.token2wav.speakers import SpeakerPrompt

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


class Token2WavStream:
    """Feed codes as they arrive; get audio chunks back. One utterance, one speaker."""

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
        self._prompt_codes = torch.from_numpy(speaker.prompt_codes)[None].to(device)
        self._prompt_mel = torch.from_numpy(speaker.prompt_mel)[None].to(device)
        self._embedding = torch.from_numpy(speaker.embedding)[None].to(device, dtype)
        self._codes: list[int] = []
        self._offset = 0  # first token of the next flow chunk
        self._hop = options.first_hop_tokens
        self._prompt_mu: torch.Tensor | None = None
        self._held: _HeldTail | None = None
        self._vocoder = _StreamingVocoder(model, self.randomness, options)
        self._finished = False
        self.chunks_decoded = 0
        self._mel_pieces: list[np.ndarray] = []

    @property
    def first_chunk_tokens(self) -> int:
        return self.options.first_hop_tokens + self.options.overlap_tokens

    def feed(self, codes: Sequence[int]) -> np.ndarray:
        """Add codes; returns the audio that became ready (possibly empty)."""
        if self._finished:
            raise RuntimeError("stream already finished")
        self._codes.extend(model_codes(self.model, codes).tolist())
        pieces = []
        overlap = self.options.overlap_tokens
        while len(self._codes) - self._offset >= self._hop + overlap:
            stop = self._offset + self._hop + overlap
            pieces.append(self._decode_chunk(self._offset, stop, final=False))
            self._offset += self._hop
            self._hop = self.options.next_hop(self._hop)
        return self._join(pieces)

    def finish(self) -> np.ndarray:
        """Decode what is left, including everything held back; the stream is then closed."""
        if self._finished:
            raise RuntimeError("stream already finished")
        self._finished = True
        if not self._codes:
            return np.zeros(0, dtype=np.float32)
        return self._join([self._decode_chunk(self._offset, len(self._codes), final=True)])

    @property
    def mel(self) -> np.ndarray:
        """(frames, 80) final mel so far; only with `record_mel=True`."""
        if not self.options.record_mel:
            raise RuntimeError("create the stream with record_mel=True to keep its mel")
        n_mels = self.model.config.flow.output_size
        return np.concatenate(self._mel_pieces) if self._mel_pieces else np.zeros((0, n_mels))

    def _join(self, pieces: list[np.ndarray]) -> np.ndarray:
        joined = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        return apply_volume(joined, self.options.volume)

    def _frame(self, token_index: int) -> int:
        return self.model.mel_frames(token_index, self.options.speed)

    def _segments(self, start: int, stop: int, final: bool) -> list[tuple[int, int]]:
        """(tokens, frames) pieces: [head overlap] [middle] [tail overlap unless final]."""
        overlap = self.options.overlap_tokens
        points = [start]
        if self._held is not None:
            points.append(start + overlap)
        if not final:
            points.append(stop - overlap)
        points.append(stop)
        points = sorted(set(points))
        pairs = zip(points, points[1:], strict=False)
        return [(b - a, self._frame(b) - self._frame(a)) for a, b in pairs]

    @torch.inference_mode()
    def _decode_chunk(self, start: int, stop: int, final: bool) -> np.ndarray:
        flow, options = self.model.flow, self.options
        tokens = torch.tensor(self._codes[start:stop], dtype=torch.long)[None].to(self.model.device)
        conditions = flow.conditions(
            tokens,
            self._prompt_codes,
            self._prompt_mel,
            self._embedding,
            self._segments(start, stop, final),
        )
        prompt_frames = conditions.prompt_frames
        if self._prompt_mu is None:
            self._prompt_mu = conditions.mu[:, :, :prompt_frames].clone()
        conditions.mu[:, :, :prompt_frames] = self._prompt_mu
        head = 0 if self._held is None else self._held.mu.shape[2]
        if self._held is not None:
            conditions.mu[:, :, prompt_frames : prompt_frames + head] = self._held.mu
        noise = self.randomness.flow_noise(prompt_frames, self._frame(start), self._frame(stop))
        mel = flow.sample(
            conditions,
            noise[None].to(self.model.device),
            options.n_timesteps or DEFAULT_N_TIMESTEPS,
            options.cfg_rate,
        )
        if self._held is not None:
            mel[:, :, :head] = crossfade(self._held.mel, mel[:, :, :head])
        if final:
            self._held = None
            ready = mel
        else:
            tail = self._frame(stop) - self._frame(stop - options.overlap_tokens)
            self._held = _HeldTail(mel=mel[:, :, -tail:], mu=conditions.mu[:, :, -tail:].float())
            ready = mel[:, :, :-tail]
        self.chunks_decoded += 1
        if options.record_mel:
            self._mel_pieces.append(ready[0].T.cpu().numpy())
        right_context = None if self._held is None else self._held.mel
        return self._vocoder.push(ready, right_context, final)


class _StreamingVocoder:
    """HiFT over a growing mel: left context with cached source, right context, crossfade."""

    def __init__(self, model: Token2Wav, randomness: Randomness, options: StreamOptions) -> None:
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
        new_mel = new_mel.to(self.device, torch.float32)
        n_new = new_mel.shape[2]
        right = torch.zeros(1, new_mel.shape[1], 0, device=self.device)
        if right_context is not None and not final:
            right = right_context[:, :, : self.right_frames].to(self.device, torch.float32)
        window = torch.cat([self.mel_tail, new_mel, right], dim=2)
        left = self.mel_tail.shape[2] * self.spf
        middle = n_new * self.spf
        fresh_source, cycles = self._fresh_source(window, left)
        wav = self.hift.decode(window, torch.cat([self.source_tail, fresh_source], dim=2))[0]

        held = self.speech_tail.shape[1]
        keep = 0 if final else min(self.crossfade_samples, middle)
        settled = wav[left - held : left + middle - keep].clone()
        if held:
            settled[:held] = crossfade(self.speech_tail[0], settled[:held])
        self.speech_tail = wav[None, left + middle - keep : left + middle]
        self._advance(new_mel, fresh_source[:, :, :middle], cycles, middle)
        return settled.cpu().numpy().astype(np.float32)

    def _fresh_source(self, window: torch.Tensor, left: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Source for every sample after the left context, continuing the harmonic phase."""
        f0 = self.hift.f0_per_sample(window)[:, left:]
        start = self.done_frames * self.spf
        randomness = SourceRandomness(
            phases=self.randomness.harmonic_phases[None].to(self.device),
            noise=self.randomness.source_rows(start, start + f0.shape[1])[None].to(self.device),
            carry=self.carry,
        )
        return self.hift.source(f0, randomness)

    def _advance(
        self, new_mel: torch.Tensor, new_source: torch.Tensor, cycles: torch.Tensor, middle: int
    ) -> None:
        if middle:
            self.carry = cycles[:, :, middle - 1]
        self.mel_tail = torch.cat([self.mel_tail, new_mel], dim=2)[:, :, -self.left_frames :]
        kept = self.mel_tail.shape[2] * self.spf
        source = torch.cat([self.source_tail, new_source], dim=2)
        self.source_tail = source[:, :, source.shape[2] - kept :]
        self.done_frames += new_mel.shape[2]
