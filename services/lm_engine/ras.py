"""Repetition-aware sampling (RAS) for a batch, in the shape of a vLLM v1 logits processor.

This is the vLLM-free part: per-row state kept in step with vLLM's persistent batch (requests
added, removed and moved between rows) and the masking of one id per row. The vLLM class that
vLLM loads (``services.lm_engine.vllm_model:RepetitionAwareLogitsProcessor``) only forwards to
``RasBatchState``, so everything here runs and is tested on the CPU without vllm installed.

The rule is ``services.models.step1.repetition_banned_token`` (the torch reference's): over the
last 10 ids of prompt + output, an id that is the newest and occurs at least twice is banned at
the next step. A request opts in with ``SamplingParams.extra_args[RAS_EXTRA_ARG] = True``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from services.models.step1.sampling import RAS_WINDOW, repetition_banned_token

RAS_EXTRA_ARG = "repetition_aware"


class _BatchUpdate(Protocol):
    """What vLLM's ``BatchUpdate`` carries (vllm/v1/sample/logits_processor/interface.py)."""

    removed: Sequence[int]
    # (row, SamplingParams, prompt ids or None, the request's live output id list)
    added: Sequence[tuple[int, Any, list[int] | None, list[int]]]
    # (row a, row b, MoveDirectionality.UNIDIRECTIONAL | SWAP)
    moved: Sequence[tuple[int, int, Any]]


def ras_requested(extra_args: Mapping[str, Any] | None) -> bool:
    """Whether a request's vLLM ``extra_args`` ask for the rule; anything but a bool is an error."""
    value = (extra_args or {}).get(RAS_EXTRA_ARG, False)
    if not isinstance(value, bool):
        raise ValueError(f"extra_args[{RAS_EXTRA_ARG!r}] must be a bool, got {value!r}")
    return value


@dataclass
class RasRow:
    """One running request: its prompt tail and vLLM's live list of its generated ids."""

    prompt_tail: list[int]
    output_ids: list[int]  # a reference: vLLM appends to it every step

    def window(self) -> list[int]:
        """The last ``RAS_WINDOW`` ids of prompt + output (fewer when the sequence is short)."""
        recent = self.output_ids[-RAS_WINDOW:]
        missing = RAS_WINDOW - len(recent)
        return (self.prompt_tail[-missing:] + recent) if missing else recent

    def banned_token(self) -> int | None:
        return repetition_banned_token(self.window())


def _is_swap(direction: Any) -> bool:
    # vLLM's MoveDirectionality enum, compared by name so this module needs no vllm import
    return getattr(direction, "name", direction) == "SWAP"


class RasBatchState:
    """Rows of the persistent batch that use RAS, updated like vLLM's ``process_dict_updates``."""

    def __init__(self) -> None:
        self.rows: dict[int, RasRow] = {}

    def update(self, batch_update: _BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index, params, prompt_ids, output_ids in batch_update.added:
            if ras_requested(getattr(params, "extra_args", None)):
                self.rows[index] = RasRow(list((prompt_ids or [])[-RAS_WINDOW:]), output_ids)
            else:
                self.rows.pop(index, None)  # a new request took the row of an old one
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for a_index, b_index, direction in batch_update.moved:
            a_row, b_row = self.rows.pop(a_index, None), self.rows.pop(b_index, None)
            if a_row is not None:
                self.rows[b_index] = a_row
            if b_row is not None and _is_swap(direction):
                self.rows[a_index] = b_row

    def bans(self) -> tuple[list[int], list[int]]:
        """(row indices, banned ids) for the rows whose newest id repeats in its window."""
        rows, tokens = [], []
        for index, row in self.rows.items():
            banned = row.banned_token()
            if banned is not None:
                rows.append(index)
                tokens.append(banned)
        return rows, tokens

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Set each banned id's logit to -inf in place ([num_rows, vocab]); returns ``logits``."""
        rows, tokens = self.bans()
        if rows:
            index = torch.tensor([rows, tokens], dtype=torch.long).to(
                logits.device, non_blocking=True
            )
            logits[index[0], index[1]] = float("-inf")
        return logits
