"""CosyVoice-1 flow: tokens + speaker prompt → mel (`MaskedDiffWithXvec` + `ConditionalCFM`).

Attribute names mirror upstream so `flow.pt` loads strictly: `input_embedding`,
`spk_embed_affine_layer`, `encoder.*`, `encoder_proj`, `length_regulator.model.*`,
`decoder.estimator.*`. Everything is batched; noise is always passed in (see noise.py), never
drawn here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from services.models.token2wav.config import FlowConfig, RegulatorConfig
from services.models.token2wav.encoder import ConformerEncoder
from services.models.token2wav.estimator import ConditionalDecoder, masked_group_norm
from services.models.token2wav.transfer import to_device


class InterpolateRegulator(nn.Module):
    """Linear interpolation from token rate to mel rate, then a small conv stack."""

    def __init__(self, config: RegulatorConfig) -> None:
        super().__init__()
        channels, out_channels = config.channels, config.out_channels or config.channels
        layers: list[nn.Module] = []
        for _ in config.sampling_ratios:
            layers += [
                nn.Conv1d(channels, channels, 3, 1, 1),
                nn.GroupNorm(config.groups, channels),
                nn.Mish(),
            ]
        layers.append(nn.Conv1d(channels, out_channels, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor, segments: Sequence[tuple[int, int]]) -> torch.Tensor:
        """h (B, T_tokens, C); segments = consecutive (tokens, frames) pieces, each
        interpolated on its own (upstream interpolates the prompt and the new part separately)."""
        pieces, start = [], 0
        for n_tokens, n_frames in segments:
            part = h[:, start : start + n_tokens].transpose(1, 2)
            start += n_tokens
            if n_frames == 0:
                continue
            if n_tokens == 0:
                raise ValueError(f"cannot stretch 0 tokens over {n_frames} mel frames")
            pieces.append(F.interpolate(part, size=n_frames, mode="linear"))
        if start != h.shape[1]:
            raise ValueError(f"segments cover {start} of {h.shape[1]} tokens")
        return self.model(torch.cat(pieces, dim=2))  # (B, C, T_frames)

    def stretch(self, h: torch.Tensor, segments: Sequence[tuple[int, int]]) -> torch.Tensor:
        """The interpolation half of `forward` for one item: h (T_tokens, C) → (C, T_frames)."""
        pieces, start = [], 0
        for n_tokens, n_frames in segments:
            part = h[None, start : start + n_tokens].transpose(1, 2)
            start += n_tokens
            if n_frames == 0:
                continue
            if n_tokens == 0:
                raise ValueError(f"cannot stretch 0 tokens over {n_frames} mel frames")
            pieces.append(F.interpolate(part, size=n_frames, mode="linear"))
        return torch.cat(pieces, dim=2)[0]

    def convolve_padded(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The conv stack over right-padded items x (B, C, T), mask (B, 1, T): every conv input
        is masked and GroupNorm counts valid frames only, so each item gets what `forward` gives
        it alone (up to float summation order)."""
        layers = list(self.model)
        x = x * mask
        for i in range(0, len(layers) - 1, 3):
            conv, norm, act = layers[i : i + 3]
            x = act(masked_group_norm(cast(nn.GroupNorm, norm), conv(x), mask)) * mask
        return layers[-1](x) * mask


@dataclass
class FlowConditions:
    """Everything the ODE solver conditions on, for a batch. `mu`/`cond` are (B, 80, T)."""

    mu: torch.Tensor
    spks: torch.Tensor  # (B, 80)
    cond: torch.Tensor
    prompt_frames: int


class ConditionalCFM(nn.Module):
    """Euler solver for the conditional flow (cosine t-schedule, classifier-free guidance)."""

    def __init__(self, config: FlowConfig) -> None:
        super().__init__()
        self.t_scheduler = config.cfm.t_scheduler
        self.inference_cfg_rate = config.cfm.inference_cfg_rate
        self.estimator = ConditionalDecoder(config.estimator)

    def use_estimator(self, fn: Callable[..., torch.Tensor] | None) -> None:
        """Call `fn` (e.g. a torch.compile'd estimator) instead of the module; None resets.
        Kept out of the module tree, so the state dict is unchanged."""
        self.__dict__["_estimator_fn"] = fn

    def _estimate(self, *args: torch.Tensor | bool) -> torch.Tensor:
        fn = self.__dict__.get("_estimator_fn")
        return (self.estimator if fn is None else fn)(*args)

    def time_span(self, n_timesteps: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        # computed in the flow's dtype, as upstream does (bf16 in the released setup)
        t_span = torch.linspace(0, 1, n_timesteps + 1, device=device, dtype=dtype)
        if self.t_scheduler == "cosine":
            t_span = 1 - torch.cos(t_span * 0.5 * torch.pi)
        return t_span

    def forward(
        self,
        noise: torch.Tensor,
        conditions: FlowConditions,
        n_timesteps: int,
        cfg_rate: float,
    ) -> torch.Tensor:
        c = conditions
        return self.solve(noise, c.mu, c.spks, c.cond, None, n_timesteps, cfg_rate)

    def solve(
        self,
        noise: torch.Tensor,
        mu: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        mask: torch.Tensor | None,
        n_timesteps: int,
        cfg_rate: float,
    ) -> torch.Tensor:
        """The Euler loop over plain tensors (what a CUDA graph captures): noise/mu/cond
        (B, 80, T), spks (B, 80), mask (B, 1, T) of right padding or None (all frames valid)."""
        x = noise.to(mu.dtype)
        t_span = self.time_span(n_timesteps, mu.dtype, mu.device)
        padded = mask is not None
        if mask is None:
            mask = torch.ones(mu.shape[0], 1, mu.shape[2], device=mu.device, dtype=mu.dtype)
        mask = mask.to(mu.dtype)
        t, dt = t_span[0], t_span[1] - t_span[0]
        for step in range(1, len(t_span)):
            velocity = self._velocity(x, mask, mu, spks, cond, t, cfg_rate, padded)
            x = x + dt * velocity
            t = t + dt
            if step < len(t_span) - 1:
                dt = t_span[step + 1] - t  # upstream re-derives dt from the accumulated t
        return x

    def _velocity(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        t: torch.Tensor,
        cfg_rate: float,
        padded: bool,
    ) -> torch.Tensor:
        batch = x.shape[0]
        if cfg_rate <= 0:
            return self._estimate(x, mask, mu, t.expand(batch), spks, cond, padded)
        both = self._estimate(
            torch.cat([x, x]),
            torch.cat([mask, mask]),
            torch.cat([mu, torch.zeros_like(mu)]),
            t.expand(2 * batch),
            torch.cat([spks, torch.zeros_like(spks)]),
            torch.cat([cond, torch.zeros_like(cond)]),
            padded,
        )
        conditional, unconditional = both[:batch], both[batch:]
        return (1.0 + cfg_rate) * conditional - cfg_rate * unconditional


class MaskedDiffWithXvec(nn.Module):
    def __init__(self, config: FlowConfig) -> None:
        super().__init__()
        self.config = config
        self.input_embedding = nn.Embedding(config.vocab_size, config.input_size)
        self.spk_embed_affine_layer = nn.Linear(config.spk_embed_dim, config.output_size)
        self.encoder = ConformerEncoder(config.encoder)
        self.encoder_proj = nn.Linear(self.encoder.output_size(), config.output_size)
        self.decoder = ConditionalCFM(config)
        self.length_regulator = InterpolateRegulator(config.length_regulator)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder_proj.weight.dtype

    def mel_frames(self, n_tokens: int, speed: float = 1.0) -> int:
        """Mel frames for the first `n_tokens` new tokens (upstream's `mel_len2`, ÷ speed)."""
        frames = n_tokens / self.config.input_frame_rate * self.config.mel_sample_rate_hz
        return int(frames / self.config.mel_hop_size / speed)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) → encoder features projected to mel width, (B, T, 80)."""
        embedded = self.input_embedding(torch.clamp(tokens, min=0))
        return self.encoder_proj(self.encoder(embedded))

    def conditions(
        self,
        tokens: torch.Tensor,
        prompt_tokens: torch.Tensor,
        prompt_mel: torch.Tensor,
        embedding: torch.Tensor,
        segments: Sequence[tuple[int, int]],
    ) -> FlowConditions:
        """Build (mu, spks, cond) for prompt + new tokens; `segments` split the new tokens into
        pieces interpolated separately (one piece reproduces upstream's offline path)."""
        batch, prompt_len = tokens.shape[0], prompt_tokens.shape[1]
        prompt_frames = prompt_mel.shape[1]
        if prompt_len == 0 and prompt_frames > 0:
            raise ValueError("a prompt mel needs prompt tokens")
        spks = self.speaker_features(embedding)
        h = self.encode(torch.cat([prompt_tokens, tokens], dim=1))
        mu = self.length_regulator(h, [(prompt_len, prompt_frames), *segments])
        cond = torch.zeros(
            batch, mu.shape[2], self.config.output_size, dtype=mu.dtype, device=mu.device
        )
        cond[:, :prompt_frames] = prompt_mel.to(mu.dtype)
        return FlowConditions(
            mu=mu, spks=spks, cond=cond.transpose(1, 2), prompt_frames=prompt_frames
        )

    def speaker_features(self, embedding: torch.Tensor) -> torch.Tensor:
        """x-vectors (B, 192) → `spks` (B, 80): L2-normalised, then the affine layer."""
        return self.spk_embed_affine_layer(F.normalize(embedding.to(self.dtype), dim=1))

    def mu_padded(
        self,
        token_rows: Sequence[torch.Tensor],
        segments: Sequence[Sequence[tuple[int, int]]],
    ) -> tuple[torch.Tensor, list[int]]:
        """`mu` for items of different lengths in one encoder and one regulator call.

        token_rows[i]: item i's prompt + new tokens (1-D, best on the CPU); segments[i]: its
        (tokens, frames) pieces, prompt first, as `conditions` takes them. Returns mu
        (B, 80, T) right-padded to the longest item and each item's frame count. The
        encoder masks padded tokens and the regulator counts valid frames only, so each item
        gets what `conditions` gives it alone (up to float summation order).
        """
        device = self.encoder_proj.weight.device
        lengths = [int(row.numel()) for row in token_rows]
        tokens = torch.zeros(len(token_rows), max(lengths), dtype=torch.long)
        for i, row in enumerate(token_rows):
            tokens[i, : lengths[i]] = row.cpu()
        tokens = to_device(tokens, device)
        embedded = self.input_embedding(torch.clamp(tokens, min=0))
        hidden = self.encoder(embedded, torch.tensor(lengths))
        h = self.encoder_proj(hidden)
        frames = [sum(f for _, f in item) for item in segments]
        x = h.new_zeros(len(token_rows), h.shape[2], max(frames))
        for i, item in enumerate(segments):
            if sum(n for n, _ in item) != lengths[i]:
                raise ValueError(f"segments of item {i} do not cover its {lengths[i]} tokens")
            x[i, :, : frames[i]] = self.length_regulator.stretch(h[i, : lengths[i]], item)
        steps = torch.arange(x.shape[2])
        mask = to_device((steps[None, :] < torch.tensor(frames)[:, None])[:, None], device)
        return self.length_regulator.convolve_padded(x, mask.to(x.dtype)), frames

    def sample(
        self,
        conditions: FlowConditions,
        noise: torch.Tensor,
        n_timesteps: int,
        cfg_rate: float | None = None,
    ) -> torch.Tensor:
        """Run the ODE from `noise` (B, 80, T); returns the new part's mel (B, 80, T - prompt)."""
        if noise.shape != conditions.mu.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != {tuple(conditions.mu.shape)}")
        rate = self.decoder.inference_cfg_rate if cfg_rate is None else cfg_rate
        mel = self.decoder(noise, conditions, n_timesteps, rate)
        return mel[:, :, conditions.prompt_frames :].float()
