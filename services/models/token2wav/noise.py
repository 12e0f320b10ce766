"""Reproducible noise addressed by absolute position.

Token2wav draws three kinds of randomness: the flow's starting noise (per mel frame), the
harmonic phases of the vocoder source (once per utterance) and the source noise (per sample).
All of it comes from seeds taken from one caller-supplied `torch.Generator`, and noise is
addressed by absolute frame / sample index: row n of the table is the same whether an utterance
is decoded in one call or in chunks. That is what lets a stream reuse the exact noise of the
frames it re-synthesises (CosyVoice-1's flow cache) and stay close to the offline output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_SEED_LIMIT = 2**62
_MIX_A = 0x9E3779B97F4A7C15
_MIX_B = 0xBF58476D1CE4E5B9
_BLOCKS_KEPT = 4


class NoiseTable:
    """An endless (rows, width) table of N(0, 1) float32, built in seeded blocks of rows."""

    def __init__(self, seed: int, width: int, block_rows: int) -> None:
        self.seed, self.width, self.block_rows = seed, width, block_rows
        self._blocks: dict[int, torch.Tensor] = {}

    def _block(self, index: int) -> torch.Tensor:
        block = self._blocks.get(index)
        if block is None:
            generator = torch.Generator().manual_seed(
                (self.seed * _MIX_A + index * _MIX_B) % _SEED_LIMIT
            )
            block = torch.randn(self.block_rows, self.width, generator=generator)
            if len(self._blocks) >= _BLOCKS_KEPT:
                self._blocks.pop(min(self._blocks))
            self._blocks[index] = block
        return block

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) as a (stop - start, width) tensor."""
        if stop <= start:
            return torch.zeros(0, self.width)
        first, last = start // self.block_rows, (stop - 1) // self.block_rows
        joined = torch.cat([self._block(i) for i in range(first, last + 1)])
        offset = first * self.block_rows
        return joined[start - offset : stop - offset]


@dataclass
class Randomness:
    """All random inputs of one utterance (one batch item)."""

    prompt_noise: NoiseTable  # flow noise of the prompt frames, (frames, mel bins)
    frame_noise: NoiseTable  # flow noise of the generated frames, (frames, mel bins)
    source_noise: NoiseTable  # vocoder source noise, (samples, harmonics)
    harmonic_phases: torch.Tensor  # (harmonics,) radians, fundamental at 0

    @classmethod
    def from_generator(
        cls, generator: torch.Generator | None, mel_bins: int, harmonics: int
    ) -> Randomness:
        if generator is None:
            generator = torch.Generator()
            generator.seed()  # fresh entropy, still an explicit generator
        seeds = torch.randint(0, _SEED_LIMIT, (3,), generator=generator).tolist()
        phases = (torch.rand(harmonics, generator=generator) * 2 - 1) * math.pi
        phases[0] = 0.0
        return cls(
            prompt_noise=NoiseTable(seeds[0], mel_bins, block_rows=64),
            frame_noise=NoiseTable(seeds[1], mel_bins, block_rows=64),
            source_noise=NoiseTable(seeds[2], harmonics, block_rows=16384),
            harmonic_phases=phases,
        )

    def flow_noise(self, prompt_frames: int, start: int, stop: int) -> torch.Tensor:
        """(80, prompt_frames + stop - start): prompt noise then generated frames [start, stop)."""
        prompt = self.prompt_noise.rows(0, prompt_frames)
        return torch.cat([prompt, self.frame_noise.rows(start, stop)]).T

    def source_rows(self, start: int, stop: int) -> torch.Tensor:
        """(harmonics, stop - start) source noise for samples [start, stop)."""
        return self.source_noise.rows(start, stop).T
