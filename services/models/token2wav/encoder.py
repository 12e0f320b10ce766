"""The flow's token encoder: wenet/espnet Conformer as CosyVoice configures it.

Attribute names mirror upstream (`embed.out.0`, `encoders.N.self_attn.linear_pos`, `norm_mha`,
`feed_forward.w_1`, ...) so that `flow.pt` loads with strict key matching. Positional tables are
plain tensors (not buffers), as upstream, so they are not part of the state dict.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from services.models.token2wav.config import EncoderConfig
from services.models.token2wav.transfer import to_device

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "swish": nn.SiLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
}


def _sinusoid_table(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    div_term = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model)
    )
    table = torch.zeros(positions.numel(), d_model)
    table[:, 0::2] = torch.sin(positions[:, None] * div_term)
    table[:, 1::2] = torch.cos(positions[:, None] * div_term)
    return table


class PositionalEncoding(nn.Module):
    """abs_pos / rel_pos / rel_pos_espnet / no_pos: scale the input, return the position table.

    rel_pos_espnet returns 2T-1 relative positions (T-1 .. -(T-1)); rel_pos returns T absolute
    ones; abs_pos adds its table to the input.
    """

    def __init__(self, kind: str, d_model: int) -> None:
        super().__init__()
        self.kind = kind
        self.d_model = d_model
        self.xscale = math.sqrt(d_model)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        length = x.size(1)
        if self.kind == "no_pos":
            return x, torch.zeros(1, length, self.d_model, device=x.device, dtype=x.dtype)
        if self.kind == "rel_pos_espnet":
            positions = torch.arange(length - 1, -length, -1, dtype=torch.float32)
        else:
            positions = torch.arange(length, dtype=torch.float32)
        table = to_device(_sinusoid_table(positions, self.d_model), x.device, x.dtype)[None]
        if self.kind == "abs_pos":
            return x * self.xscale + table, table
        return x * self.xscale, table


class LinearNoSubsampling(nn.Module):
    """`embed`: Linear + LayerNorm (+ ReLU for linear_legacy), then positional encoding."""

    def __init__(self, idim: int, odim: int, legacy: bool, pos_enc: PositionalEncoding) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(idim, odim), nn.LayerNorm(odim, eps=1e-5)]
        layers.append(nn.Dropout(0.0))
        if legacy:
            layers.append(nn.ReLU())
        self.out = nn.Sequential(*layers)
        self.pos_enc = pos_enc

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pos_enc(self.out(x))


class MultiHeadedAttention(nn.Module):
    """espnet attention; with `relative=True` Transformer-XL style relative positions."""

    def __init__(self, n_head: int, n_feat: int, key_bias: bool, relative: bool) -> None:
        super().__init__()
        self.d_k = n_feat // n_head
        self.h = n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat, bias=key_bias)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.relative = relative
        if relative:
            self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
            self.pos_bias_u = nn.Parameter(torch.zeros(n_head, self.d_k))
            self.pos_bias_v = nn.Parameter(torch.zeros(n_head, self.d_k))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1, self.h, self.d_k)  # (B, T, H, d_k)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, pos_emb: torch.Tensor
    ) -> torch.Tensor:
        q = self._heads(self.linear_q(x))
        k = self._heads(self.linear_k(x)).transpose(1, 2)
        v = self._heads(self.linear_v(x)).transpose(1, 2)
        if self.relative:
            p = self._heads(self.linear_pos(pos_emb)).transpose(1, 2)  # (1, H, P, d_k)
            content = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
            position = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1))
            if position.shape != content.shape:  # espnet 2T-1 relative table
                position = _rel_shift(position)
            scores = (content + position) / math.sqrt(self.d_k)
        else:
            scores = torch.matmul(q.transpose(1, 2), k.transpose(-2, -1)) / math.sqrt(self.d_k)
        if mask is not None:
            blocked = ~mask.unsqueeze(1)  # (B, 1, 1|T, T)
            attn = torch.softmax(scores.masked_fill(blocked, -float("inf")), dim=-1)
            attn = attn.masked_fill(blocked, 0.0)
        else:
            attn = torch.softmax(scores, dim=-1)
        context = torch.matmul(attn, v).transpose(1, 2).reshape(x.size(0), -1, self.h * self.d_k)
        return self.linear_out(context)


def _rel_shift(x: torch.Tensor) -> torch.Tensor:
    """Turn scores against relative positions (T-1..-(T-1)) into (query, key) scores."""
    b, h, t1, p = x.shape
    padded = torch.cat([x.new_zeros(b, h, t1, 1), x], dim=-1).view(b, h, p + 1, t1)
    return padded[:, :, 1:].reshape(b, h, t1, p)[:, :, :, : p // 2 + 1]


class PositionwiseFeedForward(nn.Module):
    def __init__(self, idim: int, hidden_units: int, activation: nn.Module) -> None:
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden_units)
        self.activation = activation
        self.w_2 = nn.Linear(hidden_units, idim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.activation(self.w_1(x)))


class ConvolutionModule(nn.Module):
    """Conformer convolution block (GLU, depthwise conv, norm, activation, pointwise)."""

    def __init__(self, channels: int, kernel_size: int, activation: nn.Module, norm: str) -> None:
        super().__init__()
        self.pointwise_conv1 = nn.Conv1d(channels, 2 * channels, 1)
        self.depthwise_conv = nn.Conv1d(
            channels, channels, kernel_size, padding=(kernel_size - 1) // 2, groups=channels
        )
        self.use_layer_norm = norm == "layer_norm"
        self.norm: nn.Module = (
            nn.LayerNorm(channels) if self.use_layer_norm else nn.BatchNorm1d(channels)
        )
        self.pointwise_conv2 = nn.Conv1d(channels, channels, 1)
        self.activation = activation

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
        x = x.transpose(1, 2)
        if pad_mask is not None:
            x = x.masked_fill(~pad_mask, 0.0)
        x = self.depthwise_conv(nn.functional.glu(self.pointwise_conv1(x), dim=1))
        if self.use_layer_norm:
            x = self.activation(self.norm(x.transpose(1, 2))).transpose(1, 2)
        else:
            x = self.activation(self.norm(x))
        x = self.pointwise_conv2(x)
        if pad_mask is not None:
            x = x.masked_fill(~pad_mask, 0.0)
        return x.transpose(1, 2)


class ConformerEncoderLayer(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        size = config.output_size
        activation = _ACTIVATIONS[config.activation_type]
        self.self_attn = MultiHeadedAttention(
            config.attention_heads,
            size,
            config.key_bias,
            relative=config.selfattention_layer_type == "rel_selfattn",
        )
        self.feed_forward = PositionwiseFeedForward(size, config.linear_units, activation())
        self.feed_forward_macaron = (
            PositionwiseFeedForward(size, config.linear_units, activation())
            if config.macaron_style
            else None
        )
        self.conv_module = (
            ConvolutionModule(size, config.cnn_module_kernel, activation(), config.cnn_module_norm)
            if config.use_cnn_module
            else None
        )
        self.norm_ff = nn.LayerNorm(size, eps=1e-5)
        self.norm_mha = nn.LayerNorm(size, eps=1e-5)
        if self.feed_forward_macaron is not None:
            self.norm_ff_macaron = nn.LayerNorm(size, eps=1e-5)
        if self.conv_module is not None:
            self.norm_conv = nn.LayerNorm(size, eps=1e-5)
            self.norm_final = nn.LayerNorm(size, eps=1e-5)
        self.ff_scale = 0.5 if config.macaron_style else 1.0
        self.normalize_before = config.normalize_before

    def _residual(
        self,
        x: torch.Tensor,
        norm: nn.Module,
        block: Callable[[torch.Tensor], torch.Tensor],
        scale: float = 1.0,
    ) -> torch.Tensor:
        out = x + scale * block(norm(x) if self.normalize_before else x)
        return out if self.normalize_before else norm(out)

    def forward(
        self, x: torch.Tensor, att_mask: torch.Tensor | None, pos_emb: torch.Tensor
    ) -> torch.Tensor:
        if self.feed_forward_macaron is not None:
            x = self._residual(x, self.norm_ff_macaron, self.feed_forward_macaron, self.ff_scale)
        x = self._residual(x, self.norm_mha, lambda h: self.self_attn(h, att_mask, pos_emb))
        if (conv_module := self.conv_module) is not None:
            x = self._residual(x, self.norm_conv, lambda h: conv_module(h, att_mask))
        x = self._residual(x, self.norm_ff, self.feed_forward, self.ff_scale)
        if self.conv_module is not None:
            x = self.norm_final(x)
        return x


class ConformerEncoder(nn.Module):
    """Full-context encoder over prompt + new tokens (CosyVoice-1's flow is not causal)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        pos_enc = PositionalEncoding(config.pos_enc_layer_type, config.output_size)
        self.embed = LinearNoSubsampling(
            config.input_size, config.output_size, config.input_layer == "linear_legacy", pos_enc
        )
        self.after_norm = nn.LayerNorm(config.output_size, eps=1e-5)
        self.encoders = nn.ModuleList(
            [ConformerEncoderLayer(config) for _ in range(config.num_blocks)]
        )

    def output_size(self) -> int:
        return self.config.output_size

    def forward(self, xs: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """xs (B, T, input_size) → (B, T, output_size); `lengths` masks right padding."""
        mask = None
        # lengths on the CPU decide without a device sync whether any item is padded
        if lengths is not None and bool((lengths < xs.size(1)).any()):
            steps = torch.arange(xs.size(1), device=lengths.device)
            mask = (steps[None, :] < lengths[:, None]).unsqueeze(1)  # (B, 1, T)
            mask = to_device(mask, xs.device)
        xs, pos_emb = self.embed(xs)
        for layer in self.encoders:
            xs = layer(xs, mask, pos_emb)
        if self.config.normalize_before:
            xs = self.after_norm(xs)
        return xs
