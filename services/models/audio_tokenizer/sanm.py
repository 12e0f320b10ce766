"""Paraformer-streaming encoder (FunASR ``SANMEncoderChunkOpt``) in chunk mode, inference only.

Module and parameter names follow FunASR so that ``encoder.*`` tensors of ``model.pt`` load
one-to-one: ``encoders0.0`` (input_size -> output_size, no residual around attention),
``encoders.{i}`` (output_size -> output_size) and ``after_norm``.

Chunk mode, as the reference tokenizer runs it (chunk_size [0, 4, 5], look-back 4):
each call gets the new LFR frames, prepends the last 5 input frames of the previous call
(zeros at stream start), runs every layer with attention over [per-layer k/v cache | window],
and returns the outputs of the new frames only. Each layer caches the k/v of the window minus
its last 5 frames and keeps the last look_back * 4 = 16 of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from services.models.audio_tokenizer.config import EncoderConfig

CHUNK_SIZE = (0, 4, 5)  # (left pad, new frames per step, right context) of the reference
ENCODER_LOOK_BACK = 4  # chunks of k/v kept per layer
LAYER_NORM_EPS = 1e-12  # FunASR's LayerNorm


@dataclass
class LayerCache:
    key: torch.Tensor  # (batch, heads, frames, d_k)
    value: torch.Tensor


@dataclass
class EncoderState:
    """Per-stream state of the chunked encoder."""

    start_index: int = 0  # frames already position-encoded
    overlap: torch.Tensor | None = None  # last input frames re-fed with the next chunk
    layers: list[LayerCache | None] = field(default_factory=list)


class SanmAttention(nn.Module):
    """Self-attention plus an FSMN memory block (depthwise conv over the values)."""

    def __init__(self, heads: int, in_size: int, size: int, kernel_size: int, shift: int) -> None:
        super().__init__()
        self.heads = heads
        self.d_k = size // heads
        self.linear_q_k_v = nn.Linear(in_size, size * 3)
        self.linear_out = nn.Linear(size, size)
        self.fsmn_block = nn.Conv1d(size, size, kernel_size, groups=size, bias=False)
        left = (kernel_size - 1) // 2 + max(shift, 0)
        self.fsmn_padding = (left, kernel_size - 1 - left)

    def forward_chunk(
        self, x: torch.Tensor, cache: LayerCache | None
    ) -> tuple[torch.Tensor, LayerCache]:
        batch, frames, _ = x.shape
        q, k, v = torch.split(self.linear_q_k_v(x), self.heads * self.d_k, dim=-1)
        q_h, k_h, v_h = (
            t.reshape(batch, frames, self.heads, self.d_k).transpose(1, 2) for t in (q, k, v)
        )
        new_cache = self._update_cache(cache, k_h, v_h)
        if cache is not None:
            k_h = torch.cat((cache.key, k_h), dim=2)
            v_h = torch.cat((cache.value, v_h), dim=2)
        scores = torch.matmul(q_h * self.d_k**-0.5, k_h.transpose(-2, -1))
        context = torch.matmul(torch.softmax(scores, dim=-1), v_h)
        context = context.transpose(1, 2).reshape(batch, frames, self.heads * self.d_k)
        return self.linear_out(context) + self._fsmn(v), new_cache

    def _fsmn(self, v: torch.Tensor) -> torch.Tensor:
        """Memory over the current window only (zero padding at both window edges)."""
        padded = F.pad(v.transpose(1, 2), self.fsmn_padding)
        return self.fsmn_block(padded).transpose(1, 2) + v

    @staticmethod
    def _update_cache(cache: LayerCache | None, k_h: torch.Tensor, v_h: torch.Tensor) -> LayerCache:
        # the window's last chunk_size[2] frames are re-fed next call; cache only the rest
        keep_until = k_h.shape[2] - CHUNK_SIZE[2]
        k_new, v_new = k_h[:, :, :keep_until], v_h[:, :, :keep_until]
        if cache is None:
            return LayerCache(k_new, v_new)
        limit = ENCODER_LOOK_BACK * CHUNK_SIZE[1]
        key = torch.cat((cache.key, k_new), dim=2)[:, :, -limit:]
        value = torch.cat((cache.value, v_new), dim=2)[:, :, -limit:]
        return LayerCache(key, value)


class FeedForward(nn.Module):
    def __init__(self, size: int, hidden: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(size, hidden)
        self.w_2 = nn.Linear(hidden, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(torch.relu(self.w_1(x)))


class SanmLayer(nn.Module):
    def __init__(self, in_size: int, config: EncoderConfig) -> None:
        super().__init__()
        size = config.output_size
        self.self_attn = SanmAttention(
            config.attention_heads, in_size, size, config.kernel_size, config.sanm_shift
        )
        self.feed_forward = FeedForward(size, config.linear_units)
        self.norm1 = nn.LayerNorm(in_size, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(size, eps=LAYER_NORM_EPS)
        self.residual_attention = in_size == size
        self.normalize_before = config.normalize_before

    def forward_chunk(
        self, x: torch.Tensor, cache: LayerCache | None
    ) -> tuple[torch.Tensor, LayerCache]:
        residual = x
        if self.normalize_before:
            x = self.norm1(x)
        attention, cache = self.self_attn.forward_chunk(x, cache)
        x = residual + attention if self.residual_attention else attention
        if not self.normalize_before:
            x = self.norm1(x)
        residual = x
        if self.normalize_before:
            x = self.norm2(x)
        x = residual + self.feed_forward(x)
        if not self.normalize_before:
            x = self.norm2(x)
        return x, cache


class SanmEncoder(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoders0 = nn.ModuleList([SanmLayer(config.input_size, config)])
        self.encoders = nn.ModuleList(
            [SanmLayer(config.output_size, config) for _ in range(config.num_blocks - 1)]
        )
        # FunASR has after_norm only with pre-norm layers
        self.after_norm = (
            nn.LayerNorm(config.output_size, eps=LAYER_NORM_EPS)
            if config.normalize_before
            else None
        )

    def new_state(self) -> EncoderState:
        return EncoderState(layers=[None] * (len(self.encoders0) + len(self.encoders)))

    @torch.inference_mode()
    def forward_chunk(self, features: torch.Tensor, state: EncoderState) -> torch.Tensor:
        """(1, n, input_size) new LFR frames -> (1, n, output_size) encoder outputs."""
        return self.forward_chunks([features], [state])[0]

    @torch.inference_mode()
    def forward_chunks(
        self, features: Sequence[torch.Tensor], states: Sequence[EncoderState]
    ) -> list[torch.Tensor]:
        """One chunk each of many streams: (1, n_i, input_size) -> (1, n_i, output_size).

        Streams whose windows have the same shape (new frames, cached frames) run as one
        batch; nothing is padded, so each gets what `forward_chunk` alone gives it (rows of a
        batched matmul, up to the BLAS kernel's summation order). In a steady stream every
        chunk is 4 frames with a full cache, so all such streams share one call.
        """
        if len(features) != len(states):
            raise ValueError("forward_chunks needs one state per chunk")
        out: list[torch.Tensor | None] = [None] * len(features)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (chunk, state) in enumerate(zip(features, states, strict=True)):
            groups.setdefault((chunk.shape[1], _cached_frames(state)), []).append(i)
        for members in groups.values():
            outputs = self._forward_group(
                [features[i] for i in members], [states[i] for i in members]
            )
            for i, output in zip(members, outputs, strict=True):
                out[i] = output
        return [o for o in out if o is not None]

    def _forward_group(
        self, features: Sequence[torch.Tensor], states: Sequence[EncoderState]
    ) -> list[torch.Tensor]:
        """Chunks with equal shapes: stack the per-stream states, run, split them back."""
        new_frames = features[0].shape[1]
        scale = self.config.output_size**0.5
        x = torch.cat(
            [self._position_encode(f * scale, s) for f, s in zip(features, states, strict=True)]
        )
        batch = _stack_states(states, len(self.encoders0) + len(self.encoders))
        x = self._prepend_overlap(x, batch)
        for index, layer in enumerate([*self.encoders0, *self.encoders]):
            x, batch.layers[index] = layer.forward_chunk(x, batch.layers[index])
        if self.after_norm is not None:
            x = self.after_norm(x)
        _split_states(batch, states)
        x = x[:, x.shape[1] - new_frames :]
        return [x[i : i + 1] for i in range(len(states))]

    @staticmethod
    def _position_encode(x: torch.Tensor, state: EncoderState) -> torch.Tensor:
        """Sinusoidal encoding whose positions (1-based) continue across chunks."""
        frames, depth = x.shape[1], x.shape[2]
        positions = torch.arange(
            state.start_index + 1, state.start_index + frames + 1, device=x.device
        ).to(x.dtype)
        state.start_index += frames
        increment = torch.log(torch.tensor([10000.0], dtype=x.dtype)) / (depth / 2 - 1)
        inverse = torch.exp(torch.arange(depth // 2).to(x.dtype) * -increment).to(x.device)
        angles = positions[None, :, None] * inverse[None, None, :]
        return x + torch.cat((torch.sin(angles), torch.cos(angles)), dim=2)

    @staticmethod
    def _prepend_overlap(x: torch.Tensor, state: EncoderState) -> torch.Tensor:
        overlap_frames = CHUNK_SIZE[0] + CHUNK_SIZE[2]
        if state.overlap is None:  # the reference starts from zeros (not position-encoded)
            state.overlap = x.new_zeros((x.shape[0], overlap_frames, x.shape[2]))
        window = torch.cat((state.overlap, x), dim=1)
        state.overlap = window[:, -overlap_frames:]
        return window


def _cached_frames(state: EncoderState) -> int:
    """Frames of k/v cache a state holds (-1 before its first chunk, no overlap either)."""
    if state.overlap is None:
        return -1
    first = state.layers[0] if state.layers else None
    return 0 if first is None else int(first.key.shape[2])


def _stack_states(states: Sequence[EncoderState], n_layers: int) -> EncoderState:
    """One batched state from states of equal shapes (a single state is used as it is)."""
    if len(states) == 1:
        state = states[0]
        return EncoderState(state.start_index, state.overlap, list(state.layers))
    overlap = None if states[0].overlap is None else torch.cat([s.overlap for s in states])  # type: ignore[misc]
    layers: list[LayerCache | None] = []
    for index in range(n_layers):
        caches = [s.layers[index] for s in states]
        if caches[0] is None:
            layers.append(None)
        else:
            key = torch.cat([c.key for c in caches])  # type: ignore[union-attr]
            value = torch.cat([c.value for c in caches])  # type: ignore[union-attr]
            layers.append(LayerCache(key, value))
    return EncoderState(0, overlap, layers)


def _split_states(batch: EncoderState, states: Sequence[EncoderState]) -> None:
    """Write row i of the batched overlap and caches back into ``states[i]``."""
    for i, state in enumerate(states):
        row = slice(i, i + 1)
        state.overlap = None if batch.overlap is None else batch.overlap[row]
        state.layers = [
            None if c is None else LayerCache(c.key[row], c.value[row]) for c in batch.layers
        ]


def expected_shapes(config: EncoderConfig) -> dict[str, torch.Size]:
    """Tensor names (without ``encoder.``) and shapes the checkpoint must provide."""
    with torch.device("meta"):
        encoder = SanmEncoder(config)
    return {name: tensor.shape for name, tensor in encoder.state_dict().items()}


def build_encoder(config: EncoderConfig, tensors: dict[str, torch.Tensor]) -> SanmEncoder:
    """Encoder holding the checkpoint tensors themselves (no random init, no second copy)."""
    with torch.device("meta"):
        encoder = SanmEncoder(config)
    weights = {k: tensors[k].to(torch.float32).contiguous() for k in encoder.state_dict()}
    encoder.load_state_dict(weights, strict=True, assign=True)
    return encoder.eval().requires_grad_(False)
