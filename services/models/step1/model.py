"""Step1ForCausalLM in PyTorch: the CPU reference for Step-Audio-Chat and the TTS-3B LM.

Pre-norm decoder, RMSNorm, SwiGLU MLP, grouped-query attention with no positional embedding:
position enters only through the square-root ALiBi bias ``-slope_h * sqrt(i - j)`` (as vLLM's
Step1 and upstream's modeling_step1). Module and parameter names follow the Hugging Face
checkpoint so ``state_dict`` keys equal the safetensors tensor names.

Incremental decoding uses a slot-based KV cache: each running sequence owns one slot (a row
of every layer's cache); one forward call may mix slots at different lengths, as long as each
row appends the same number of tokens (prefill one sequence, or decode one token per row).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from services.models.checkpoint import load_tensors
from services.models.step1.config import Step1Config


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """Standard ALiBi slopes (fp32); a head count that is not a power of two takes the
    odd-indexed slopes of the next power of two for the extra heads."""
    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = [2.0 ** (-8.0 * k / closest) for k in range(1, closest + 1)]
    extra = num_heads - closest
    slopes += [2.0 ** (-4.0 * m / closest) for m in range(1, 2 * extra, 2)]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_sqrt_bias(
    slopes: torch.Tensor, query_positions: torch.Tensor, key_count: int
) -> torch.Tensor:
    """Attention bias [B, H, Tq, key_count] in fp32.

    ``query_positions`` [B, Tq] are absolute positions; key j is visible to a query at
    position i when j <= i, with bias ``-slope * sqrt(i - j)``; later keys get -inf.
    """
    keys = torch.arange(key_count, device=query_positions.device)
    distance = query_positions[:, None, :, None] - keys[None, None, None, :]
    bias = -slopes.to(query_positions.device)[None, :, None, None] * distance.clamp(min=0).sqrt()
    return bias.masked_fill(distance < 0, float("-inf"))


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # variance in fp32 and the weight applied after the cast back, as upstream
        variance = x.float().pow(2).mean(-1, keepdim=True)
        normed = (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype)
        return normed * self.weight


class KVCache:
    """Per-layer key/value buffers [slots, kv_heads, capacity, head_dim] and slot lengths."""

    def __init__(
        self,
        config: Step1Config,
        slots: int,
        *,
        capacity: int = 256,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.config = config
        self.capacity = min(capacity, config.max_seq_len)
        shape = (slots, config.num_attention_groups, self.capacity, config.head_dim)
        layers = config.num_hidden_layers
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)

    @property
    def slots(self) -> int:
        return int(self.lengths.shape[0])

    def reset(self, slot: int) -> None:
        self.lengths[slot] = 0

    def ensure_capacity(self, needed: int) -> None:
        if needed > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {needed} tokens exceeds max_seq_len {self.config.max_seq_len}"
            )
        if needed <= self.capacity:
            return
        new_capacity = min(max(needed, 2 * self.capacity), self.config.max_seq_len)
        pad = new_capacity - self.capacity
        self.keys = [F.pad(k, (0, 0, 0, pad)) for k in self.keys]
        self.values = [F.pad(v, (0, 0, 0, pad)) for v in self.values]
        self.capacity = new_capacity


class Step1Attention(nn.Module):
    def __init__(self, config: Step1Config) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_groups = config.num_attention_groups
        self.head_dim = config.head_dim
        kv_size = self.num_groups * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, kv_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, kv_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(
        self,
        hidden: torch.Tensor,
        bias: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        slots: torch.Tensor | None = None,
        starts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, steps, _ = hidden.shape
        q = self.q_proj(hidden).view(batch, steps, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden).view(batch, steps, self.num_groups, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden).view(batch, steps, self.num_groups, self.head_dim).transpose(1, 2)
        if cache is not None:
            assert slots is not None and starts is not None
            k, v = self._append_to_cache(cache, layer, slots, starts, k, v, bias.shape[-1])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(batch, steps, -1))

    @staticmethod
    def _append_to_cache(
        cache: KVCache,
        layer: int,
        slots: torch.Tensor,
        starts: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_count: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        steps = k.shape[2]
        positions = starts[:, None] + torch.arange(steps, device=starts.device)[None, :]
        rows = slots[:, None].expand_as(positions)
        # advanced indexing [rows, :, positions] puts the indexed dims first: [B, T, kv, hd]
        cache.keys[layer][rows, :, positions] = k.transpose(1, 2)
        cache.values[layer][rows, :, positions] = v.transpose(1, 2)
        return cache.keys[layer][slots, :, :key_count], cache.values[layer][slots, :, :key_count]


class Step1MLP(nn.Module):
    def __init__(self, config: Step1Config) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Step1DecoderLayer(nn.Module):
    def __init__(self, config: Step1Config) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Step1Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = Step1MLP(config)

    def forward(
        self, hidden: torch.Tensor, bias: torch.Tensor, **cache_args: object
    ) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), bias, **cache_args)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class Step1Model(nn.Module):
    def __init__(self, config: Step1Config) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            Step1DecoderLayer(config) for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Step1ForCausalLM(nn.Module):
    slopes: torch.Tensor  # a registered buffer

    def __init__(self, config: Step1Config) -> None:
        super().__init__()
        self.config = config
        self.model = Step1Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.register_buffer("slopes", alibi_slopes(config.num_attention_heads), persistent=False)

    @classmethod
    def from_pretrained(
        cls,
        folder: Path | str,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Step1ForCausalLM:
        """Load config.json + safetensors (single or sharded); every tensor is checked."""
        folder = Path(folder)
        config = Step1Config.from_folder(folder)
        with torch.device("meta"):
            model = cls(config)
        expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
        tensors = load_tensors(folder, expected, dtype=dtype)
        model.load_state_dict(tensors, strict=True, assign=True)
        model.slopes = alibi_slopes(config.num_attention_heads)
        return model.to(device).eval()

    def new_cache(self, slots: int, capacity: int = 256) -> KVCache:
        weight = self.lm_head.weight
        return KVCache(
            self.config, slots, capacity=capacity, dtype=weight.dtype, device=weight.device
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        slots: torch.Tensor | None = None,
        *,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits for ``input_ids`` [B, T].

        Without a cache the rows are independent sequences starting at position 0. With a
        cache, row b appends its T tokens to slot ``slots[b]`` and attends to that slot's
        history; the slot lengths advance by T.
        """
        batch, steps = input_ids.shape
        if cache is None:
            starts = torch.zeros(batch, dtype=torch.long, device=input_ids.device)
            key_count = steps
            cache_args: dict[str, object] = {}
        else:
            if slots is None:
                raise ValueError("slots are required with a cache")
            starts = cache.lengths[slots].clone()
            key_count = int((starts + steps).max())
            cache.ensure_capacity(key_count)
        positions = starts[:, None] + torch.arange(steps, device=input_ids.device)[None, :]
        bias = alibi_sqrt_bias(self.slopes, positions, key_count)
        hidden = self.model.embed_tokens(input_ids)
        for index, layer in enumerate(self.model.layers):
            if cache is not None:
                cache_args = {"cache": cache, "layer": index, "slots": slots, "starts": starts}
            hidden = layer(hidden, bias, **cache_args)
        if cache is not None:
            cache.lengths[slots] = starts + steps
        if last_only:
            hidden = hidden[:, -1:]
        return self.lm_head(self.model.norm(hidden)).float()
