"""Next-token selection: repetition-aware rule, temperature, top-k, top-p, seeded draws.

Each sequence carries its own ``torch.Generator`` so a seeded request repeats exactly no matter
which other requests share its batch.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

RAS_WINDOW = 10
RAS_THRESHOLD = 0.1


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7  # 0 → greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 → off
    max_tokens: int = 2048
    repetition_aware: bool = False
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False  # generate past EOS (benchmarks and tests, as vLLM's option)

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 10.0:
            raise ValueError(f"temperature must be in [0, 10], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    def make_generator(self) -> torch.Generator:
        generator = torch.Generator()
        generator.manual_seed(self.seed if self.seed is not None else secrets.randbits(63))
        return generator


# Upstream defaults (section 5/6.5 of docs/upstream notes): HF generate adds top_k 50.
CHAT_DEFAULTS = SamplingParams(temperature=0.7, top_p=0.9, top_k=50, max_tokens=2048)
TTS_DEFAULTS = SamplingParams(
    temperature=0.7, top_p=1.0, top_k=50, max_tokens=4096, repetition_aware=True
)


def repetition_banned_token(history: Sequence[int]) -> int | None:
    """Step-Audio's RepetitionAwareLogitsProcessor for one sequence (prompt included).

    Looks at the last 10 ids; if the newest id fills more than 10 % of them (it occurs at
    least twice), that id is forbidden at the next step. Fewer than 10 ids: no rule.
    """
    if len(history) < RAS_WINDOW:
        return None
    window = history[-RAS_WINDOW:]
    last = window[-1]
    if window.count(last) / RAS_WINDOW > RAS_THRESHOLD:
        return last
    return None


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature-scaled, top-k and top-p filtered logits (fp32, one row)."""
    logits = logits.float() / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # drop tokens once the mass before them already exceeds top_p (keeps at least one)
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) > params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def select_token(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator,
    history: Sequence[int],
) -> int:
    """Choose the next id for one sequence from its logits row [V]."""
    logits = logits.float().clone()
    if params.repetition_aware:
        banned = repetition_banned_token(history)
        if banned is not None:
            logits[banned] = float("-inf")
    if params.temperature == 0.0:
        return int(torch.argmax(logits))
    probs = torch.softmax(filter_logits(logits, params), dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
