"""The flow-matching vector-field estimator: Matcha-TTS `ConditionalDecoder` (1-D U-Net).

Module names mirror upstream (Step-Audio `cosyvoice/flow/decoder.py`, `cosyvoice/matcha/*` and
the diffusers blocks they use: `attn1.to_q`, `attn1.to_out.0`, `ff.net.0.proj`, `ff.net.2`) so
`flow.pt` keys match. Every input is batched: (B, C, T) features, (B,) times, (B, C) speakers.

Padded mode (`padded=True`): items of different lengths share one (B, C, T) tensor, right-padded,
with `mask` marking the valid frames. Upstream masks every convolution input already; padded mode
also computes GroupNorm statistics over the valid frames only and hides padded keys from
attention, so each item's valid frames get what an unpadded call gives them (up to float
summation order). Without padding (the default) the modules run exactly as upstream.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from services.models.token2wav.config import EstimatorConfig


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError("SinusoidalPosEmb needs an even dimension")
        self.dim = dim

    def forward(self, t: torch.Tensor, scale: float = 1000.0) -> torch.Tensor:
        half = self.dim // 2
        step = math.log(10000) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=t.device).float() * -step)
        # scale·t is rounded in t's dtype before the float product, as upstream (bf16 there)
        angles = (scale * t.reshape(-1, 1)).float() * freqs[None, :]
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, time_embed_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(sample)))


def masked_group_norm(norm: nn.GroupNorm, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GroupNorm of x (B, C, T) with statistics over the frames where mask (B, 1, T) is 1.

    Computed in float32 (as torch's kernel accumulates) and returned in x's dtype. An item with
    no valid frame (batch padding) gets finite garbage, never NaN.
    """
    b, c, t = x.shape
    groups = norm.num_groups
    xf = x.float().reshape(b, groups, c // groups, t)
    m = mask.float().reshape(b, 1, 1, t)
    count = (m.sum(dim=-1, keepdim=True) * (c // groups)).clamp(min=1.0)
    mean = (xf * m).sum(dim=(2, 3), keepdim=True) / count
    centred = xf - mean
    var = (centred * m).pow(2).sum(dim=(2, 3), keepdim=True) / count
    y = (centred * torch.rsqrt(var + norm.eps)).reshape(b, c, t)
    if norm.affine:
        y = y * norm.weight.float()[:, None] + norm.bias.float()[:, None]
    return y.to(x.dtype)


class Block1D(nn.Module):
    def __init__(self, dim: int, dim_out: int, groups: int = 8) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(dim, dim_out, 3, padding=1), nn.GroupNorm(groups, dim_out), nn.Mish()
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor, padded: bool = False) -> torch.Tensor:
        if not padded:
            return self.block(x * mask) * mask
        conv, norm, act = self.block
        return act(masked_group_norm(cast(nn.GroupNorm, norm), conv(x * mask), mask)) * mask


class ResnetBlock1D(nn.Module):
    def __init__(self, dim: int, dim_out: int, time_emb_dim: int, groups: int = 8) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_emb_dim, dim_out))
        self.block1 = Block1D(dim, dim_out, groups=groups)
        self.block2 = Block1D(dim_out, dim_out, groups=groups)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, time_emb: torch.Tensor, padded: bool = False
    ) -> torch.Tensor:
        h = self.block1(x, mask, padded) + self.mlp(time_emb).unsqueeze(-1)
        return self.block2(h, mask, padded) + self.res_conv(x * mask)


class Downsample1D(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample1D(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Attention(nn.Module):
    """diffusers `Attention` as used here: no q/k/v bias, biased output, no mask."""

    def __init__(self, query_dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(query_dim, inner, bias=False)
        self.to_v = nn.Linear(query_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C); key_mask (B, 1, 1, T) bool, False for padded keys (None: all valid)."""
        b, t, _ = x.shape

        def split(h: torch.Tensor) -> torch.Tensor:
            return h.view(b, t, self.heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x)), attn_mask=key_mask
        )
        return self.to_out[0](out.transpose(1, 2).reshape(b, t, -1))


class _Projection(nn.Module):
    """diffusers GELU / GEGLU: a projection followed by the activation."""

    def __init__(self, dim_in: int, dim_out: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.proj = nn.Linear(dim_in, dim_out * 2 if kind == "geglu" else dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        if self.kind == "geglu":
            h, gate = h.chunk(2, dim=-1)
            return h * F.gelu(gate)
        return F.gelu(h, approximate="tanh" if self.kind == "gelu-approximate" else "none")


class FeedForward(nn.Module):
    def __init__(self, dim: int, activation_fn: str, mult: int = 4) -> None:
        super().__init__()
        if activation_fn not in ("gelu", "gelu-approximate", "geglu"):
            raise ValueError(f"estimator act_fn {activation_fn!r} is not supported")
        inner = dim * mult
        self.net = nn.ModuleList(
            [_Projection(dim, inner, activation_fn), nn.Dropout(0.0), nn.Linear(inner, dim)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.net:
            x = module(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention + feed-forward (no cross-attention, no ada-norm)."""

    def __init__(self, dim: int, heads: int, dim_head: int, activation_fn: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim_head)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), key_mask)
        return x + self.ff(self.norm3(x))


def _transformers(dim: int, config: EstimatorConfig) -> nn.ModuleList:
    return nn.ModuleList(
        [
            BasicTransformerBlock(dim, config.num_heads, config.attention_head_dim, config.act_fn)
            for _ in range(config.n_blocks)
        ]
    )


def _run_transformers(
    blocks: nn.ModuleList, x: torch.Tensor, mask: torch.Tensor, padded: bool
) -> torch.Tensor:
    key_mask = mask.bool()[:, :, None, :] if padded else None  # (B, 1, 1, T)
    # contiguous (B, T, C), as upstream's rearrange(...).contiguous(): LayerNorm and the
    # residual adds then read rows, not a strided view (the B=16 profile had them at ~30 %)
    x = x.transpose(1, 2).contiguous()
    for block in blocks:
        x = block(x, key_mask)
    return x.transpose(1, 2).contiguous()


class ConditionalDecoder(nn.Module):
    def __init__(self, config: EstimatorConfig) -> None:
        super().__init__()
        channels = tuple(config.channels)
        self.time_embeddings = SinusoidalPosEmb(config.in_channels)
        time_dim = channels[0] * 4
        self.time_mlp = TimestepEmbedding(config.in_channels, time_dim)
        self.down_blocks = nn.ModuleList()
        self.mid_blocks = nn.ModuleList()
        self.up_blocks = nn.ModuleList()

        out_ch = config.in_channels
        for i, ch in enumerate(channels):
            in_ch, out_ch = out_ch, ch
            last = i == len(channels) - 1
            down: nn.Module = (
                nn.Conv1d(out_ch, out_ch, 3, padding=1) if last else Downsample1D(out_ch)
            )
            self.down_blocks.append(
                nn.ModuleList(
                    [ResnetBlock1D(in_ch, out_ch, time_dim), _transformers(out_ch, config), down]
                )
            )
        for _ in range(config.num_mid_blocks):
            self.mid_blocks.append(
                nn.ModuleList(
                    [
                        ResnetBlock1D(channels[-1], out_ch, time_dim),
                        _transformers(out_ch, config),
                    ]
                )
            )
        up_channels = channels[::-1] + (channels[0],)
        for i in range(len(up_channels) - 1):
            out_ch = up_channels[i + 1]
            last = i == len(up_channels) - 2
            up: nn.Module = nn.Conv1d(out_ch, out_ch, 3, padding=1) if last else Upsample1D(out_ch)
            self.up_blocks.append(
                nn.ModuleList(
                    [
                        ResnetBlock1D(up_channels[i] * 2, out_ch, time_dim),
                        _transformers(out_ch, config),
                        up,
                    ]
                )
            )
        self.final_block = Block1D(up_channels[-1], up_channels[-1])
        self.final_proj = nn.Conv1d(up_channels[-1], config.out_channels, 1)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        padded: bool = False,
    ) -> torch.Tensor:
        """x, mu, cond (B, 80, T); mask (B, 1, T); t (B,); spks (B, 80) → velocity (B, 80, T).

        `padded`: `mask` marks right padding (see the module docstring); False when every frame
        is valid, which runs upstream's exact operations."""
        dtype = self.final_proj.weight.dtype
        t_emb = self.time_mlp(self.time_embeddings(t).to(dtype))
        spk_map = spks[:, :, None].expand(-1, -1, x.shape[-1])
        h = torch.cat([x, mu, spk_map, cond], dim=1).to(dtype)
        mask = mask.to(dtype)

        skips, masks = [], [mask]
        # each level is a ModuleList: (resnet, transformer blocks[, down/up-sample])
        for level in self.down_blocks:
            resnet, blocks, down = cast(nn.ModuleList, level)
            level_mask = masks[-1]
            h = resnet(h, level_mask, t_emb, padded)
            h = _run_transformers(cast(nn.ModuleList, blocks), h, level_mask, padded)
            skips.append(h)
            h = down(h * level_mask)
            next_mask = level_mask[:, :, ::2]
            masks.append(next_mask.contiguous() if padded else next_mask)
        masks.pop()
        for level in self.mid_blocks:
            resnet, blocks = cast(nn.ModuleList, level)
            h = resnet(h, masks[-1], t_emb, padded)
            h = _run_transformers(cast(nn.ModuleList, blocks), h, masks[-1], padded)
        for level in self.up_blocks:
            resnet, blocks, up = cast(nn.ModuleList, level)
            level_mask, skip = masks.pop(), skips.pop()
            h = torch.cat([h[:, :, : skip.shape[-1]], skip], dim=1)
            h = resnet(h, level_mask, t_emb, padded)
            h = _run_transformers(cast(nn.ModuleList, blocks), h, level_mask, padded)
            h = up(h * level_mask)
        h = self.final_block(h, level_mask, padded)
        return self.final_proj(h * level_mask) * mask
