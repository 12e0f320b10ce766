"""HiFT vocoder (NSF source + iSTFTNet), CosyVoice's `HiFTGenerator` with its F0 predictor.

Weight-normed convolutions keep upstream's legacy parameter names (`weight_g`, `weight_v`) so
`hift.pt` loads strictly. The harmonic source takes its random phases and noise as arguments
and can continue the phase of an earlier call (`carry`), which streaming needs; upstream's
Step-Audio copy starts every call from a fresh random phase and ignores `cache_source`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from services.models.token2wav.config import F0PredictorConfig, HiftConfig


class WeightNormConv(nn.Module):
    """Conv1d / ConvTranspose1d with legacy weight norm (dim 0): weight = g · v / ‖v‖."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        transpose: bool = False,
    ) -> None:
        super().__init__()
        shape = (in_channels, out_channels) if transpose else (out_channels, in_channels)
        self.weight_g = nn.Parameter(torch.ones(shape[0], 1, 1))
        self.weight_v = nn.Parameter(torch.randn(*shape, kernel_size) * 0.01)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.transpose = transpose
        self._frozen: torch.Tensor | None = None

    def weight(self) -> torch.Tensor:
        if self._frozen is not None:
            return self._frozen
        # the same kernel torch's weight_norm uses, so results match upstream bit for bit
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    def freeze(self) -> None:
        """Keep the current weight (one kernel less per call; call again after loading)."""
        with torch.no_grad():
            self._frozen = torch._weight_norm(self.weight_v, self.weight_g, 0).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transpose:
            return F.conv_transpose1d(x, self.weight(), self.bias, self.stride, self.padding)
        return F.conv1d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation)


class Snake(nn.Module):
    """x + 1/α · sin²(αx), α per channel (linear scale, as HiFT uses it)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha[None, :, None]
        return x + (1.0 / (alpha + 1e-9)) * torch.sin(x * alpha).pow(2)


class ResBlock(nn.Module):
    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            WeightNormConv(channels, channels, kernel_size, 1, d * (kernel_size - 1) // 2, d)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            WeightNormConv(channels, channels, kernel_size, 1, (kernel_size - 1) // 2)
            for _ in dilations
        )
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv1, conv2, act1, act2 in zip(
            self.convs1, self.convs2, self.activations1, self.activations2, strict=True
        ):
            x = x + conv2(act2(conv1(act1(x))))
        return x


class ConvRNNF0Predictor(nn.Module):
    """5 × (weight-normed conv k3 + ELU) + linear → |f0| per mel frame."""

    def __init__(self, config: F0PredictorConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            in_ch = config.in_channels if i == 0 else config.cond_channels
            layers += [WeightNormConv(in_ch, config.cond_channels, 3, padding=1), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(config.cond_channels, config.num_class)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, 80, T) → f0 (B, T) in Hz."""
        hidden = self.condnet(mel).transpose(1, 2)
        return torch.abs(self.classifier(hidden).squeeze(-1))


@dataclass
class SourceRandomness:
    """Random inputs of the harmonic source for one call.

    phases: (B, H+1) initial phase of each harmonic in radians (upstream draws U(-π, π) and zeroes
    the fundamental); noise: (B, H+1, L) standard normal, one row per harmonic and sample;
    carry: (B, H+1) phase already accumulated before the first sample, in cycles (0 to start).
    """

    phases: torch.Tensor
    noise: torch.Tensor
    carry: torch.Tensor | None = None


class SourceModuleHnNSF(nn.Module):
    """Sine harmonics of f0 (+ noise, unvoiced = noise only) merged by Linear + tanh."""

    def __init__(self, config: HiftConfig) -> None:
        super().__init__()
        self.sample_rate = config.sampling_rate
        self.harmonics = config.nb_harmonics + 1
        self.sine_amp = config.nsf_alpha
        self.noise_std = config.nsf_sigma
        self.voiced_threshold = config.nsf_voiced_threshold
        self.l_linear = nn.Linear(self.harmonics, 1)

    def forward(
        self, f0: torch.Tensor, randomness: SourceRandomness
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """f0 (B, L) per sample → source (B, 1, L) and accumulated phase (B, H+1, L), in cycles."""
        multiples = torch.arange(1, self.harmonics + 1, device=f0.device, dtype=f0.dtype)
        increments = f0[:, None, :] * multiples[None, :, None] / self.sample_rate
        carry = randomness.carry
        cycles = torch.cumsum(increments, dim=-1)
        if carry is not None:
            cycles = cycles + carry[:, :, None]
        cycles = cycles % 1
        sines = self.sine_amp * torch.sin(2 * math.pi * cycles + randomness.phases[:, :, None])
        voiced = (f0 > self.voiced_threshold).to(f0.dtype)[:, None, :]
        noise_amp = voiced * self.noise_std + (1 - voiced) * self.sine_amp / 3
        excitation = sines * voiced + noise_amp * randomness.noise
        merged = torch.tanh(self.l_linear(excitation.transpose(1, 2)))
        return merged.transpose(1, 2), cycles


def istft_overlap_add(
    spectrum: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor
) -> torch.Tensor:
    """`torch.istft(spectrum, n_fft, hop, n_fft, window, center=True)` without host syncs:
    spectrum (B, n_fft // 2 + 1, F) → (B, hop · (F − 1))."""
    frames = torch.fft.irfft(spectrum, n=n_fft, dim=1) * window[None, :, None]
    count = frames.shape[2]
    length = n_fft + hop * (count - 1)
    fold = {"output_size": (1, length), "kernel_size": (1, n_fft), "stride": (1, hop)}
    summed = F.fold(frames, **fold)[:, 0, 0]
    envelope = F.fold((window**2)[None, :, None].expand(1, n_fft, count), **fold)[0, 0, 0]
    half = n_fft // 2
    return summed[:, half : length - half] / envelope[half : length - half]


class HiFTGenerator(nn.Module):
    stft_window: torch.Tensor  # a registered buffer

    def __init__(self, config: HiftConfig) -> None:
        super().__init__()
        self.config = config
        base = config.base_channels
        n_fft = config.istft_n_fft
        self.m_source = SourceModuleHnNSF(config)
        self.conv_pre = WeightNormConv(config.in_channels, base, 7, 1, padding=3)
        self.ups = nn.ModuleList(
            WeightNormConv(
                base // 2**i, base // 2 ** (i + 1), k, u, padding=(k - u) // 2, transpose=True
            )
            for i, (u, k) in enumerate(
                zip(config.upsample_rates, config.upsample_kernel_sizes, strict=True)
            )
        )
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        rates = [1, *config.upsample_rates[::-1][:-1]]
        cumulative = [math.prod(rates[: i + 1]) for i in range(len(rates))][::-1]
        for i, (u, k, d) in enumerate(
            zip(
                cumulative,
                config.source_resblock_kernel_sizes,
                config.source_resblock_dilation_sizes,
                strict=True,
            )
        ):
            ch = base // 2 ** (i + 1)
            down = (
                nn.Conv1d(n_fft + 2, ch, 1, 1)
                if u == 1
                else nn.Conv1d(n_fft + 2, ch, u * 2, u, padding=u // 2)
            )
            self.source_downs.append(down)
            self.source_resblocks.append(ResBlock(ch, k, tuple(d)))
        self.resblocks = nn.ModuleList(
            ResBlock(base // 2 ** (i + 1), k, tuple(d))
            for i in range(len(self.ups))
            for k, d in zip(
                config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True
            )
        )
        last_ch = base // 2 ** len(self.ups)
        self.conv_post = WeightNormConv(last_ch, n_fft + 2, 7, 1, padding=3)
        self.reflection_pad = nn.ReflectionPad1d((1, 0))
        window = torch.hann_window(n_fft, periodic=True)  # scipy get_window("hann", fftbins=True)
        self.register_buffer("stft_window", window, persistent=False)
        self.f0_predictor = ConvRNNF0Predictor(config.f0_predictor)

    @property
    def samples_per_frame(self) -> int:
        return self.config.samples_per_frame

    def f0_per_sample(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, 80, T) → f0 (B, T · samples_per_frame), nearest-neighbour upsampled."""
        f0 = self.f0_predictor(mel)  # (B, T); expand + reshape: no host sync (CUDA graphs)
        return f0[:, :, None].expand(-1, -1, self.samples_per_frame).reshape(f0.shape[0], -1)

    def source(
        self, f0: torch.Tensor, randomness: SourceRandomness
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.m_source(f0, randomness)

    def decode(
        self, mel: torch.Tensor, source: torch.Tensor, overlap_add: bool = False
    ) -> torch.Tensor:
        """mel (B, 80, T) + source (B, 1, T · 256) → waveform (B, T · 256) in ±audio_limit.

        `overlap_add`: inverse STFT by irfft + overlap-add (`istft_overlap_add`) instead of
        `torch.istft`, whose window check reads a value back to the host and so cannot be
        captured in a CUDA graph; equal up to float rounding."""
        n_fft, hop = self.config.istft_n_fft, self.config.istft_hop_len
        spec = torch.stft(
            source.squeeze(1), n_fft, hop, n_fft, window=self.stft_window, return_complex=True
        )
        s_stft = torch.cat([spec.real, spec.imag], dim=1)
        x = self.conv_pre(mel)
        kernels = len(self.config.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, self.config.lrelu_slope))
            if i == len(self.ups) - 1:
                x = self.reflection_pad(x)
            x = x + self.source_resblocks[i](self.source_downs[i](s_stft))
            blocks = self.resblocks[i * kernels : (i + 1) * kernels]
            x = sum(block(x) for block in blocks) / kernels
        x = self.conv_post(F.leaky_relu(x))  # default slope 0.01, as upstream
        magnitude = torch.exp(x[:, : n_fft // 2 + 1]).clamp(max=1e2)
        phase = torch.sin(x[:, n_fft // 2 + 1 :])
        spectrum = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        if overlap_add:
            wav = istft_overlap_add(spectrum, n_fft, hop, self.stft_window)
        else:
            wav = torch.istft(spectrum, n_fft, hop, n_fft, window=self.stft_window)
        return wav.clamp(-self.config.audio_limit, self.config.audio_limit)

    def forward(
        self,
        mel: torch.Tensor,
        randomness: SourceRandomness,
        cache_source: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Offline vocoding: (waveform (B, L), source (B, 1, L)); `cache_source` (B, 1, n)
        replaces the first n source samples (CosyVoice's streaming fix, applied here)."""
        source, _ = self.source(self.f0_per_sample(mel), randomness)
        if cache_source is not None and cache_source.shape[2] > 0:
            source[:, :, : cache_source.shape[2]] = cache_source
        return self.decode(mel, source), source
