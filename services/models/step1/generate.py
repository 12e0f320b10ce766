"""Single-sequence generation with the torch Step1 model (CLI, tests, reference checks).

The serving engine (services/lm_engine/engine.py) runs many sequences in one batch; this loop is
the simplest correct use of the same model and sampler.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from services.models.step1.model import Step1ForCausalLM
from services.models.step1.sampling import SamplingParams, select_token


@torch.inference_mode()
def generate(
    model: Step1ForCausalLM,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """Yield new ids until a stop id (not yielded) or ``params.max_tokens``."""
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    generator = generator or params.make_generator()
    eos = set() if params.ignore_eos else {model.config.eos_token_id}
    stops = eos | set(params.stop_token_ids)
    cache = model.new_cache(1, capacity=len(prompt_ids) + params.max_tokens)
    slots = torch.zeros(1, dtype=torch.long)
    history = list(prompt_ids)
    logits = model(torch.tensor([history]), cache, slots, last_only=True)[0, -1]
    for _ in range(params.max_tokens):
        token = select_token(logits, params, generator, history)
        if token in stops:
            return
        yield token
        history.append(token)
        logits = model(torch.tensor([[token]]), cache, slots)[0, -1]
