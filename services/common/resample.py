"""Windowed-sinc resampling with the numerics of torchaudio's ``Resample`` defaults.

Upstream Step-Audio resamples every model input with ``torchaudio.transforms.Resample(orig,
new)``: the tokenizer's input to 16 kHz, and speaker prompts to 16 kHz (CAM++) and 22.05 kHz
(the flow's prompt mel). Codes and prompt features depend on those exact samples, so the same
filter is rebuilt here in torch (torchaudio is not installed on the CPU image): Hann-windowed
sinc, lowpass width 6, rolloff 0.99, rates reduced by their gcd, the kernel computed in float64
and cast to the signal's dtype, zero padding of ``width`` before and ``width + orig`` after, and
``ceil(new * length / orig)`` output samples (the ratio rounded to float32 first, as torchaudio's
``torch.as_tensor`` does). ``resample_sinc`` makes torchaudio's own ``conv1d`` call, so with the
same torch build it gives torchaudio's samples bit for bit (upstream's voice-clone prompt mel
depends on that: its log amplifies 1e-7 differences in quiet bins to 1e-4).
tests/unit/common/test_resample.py holds it against torchaudio's output (tests/fixtures/resample/).
``SincStreamResampler`` applies the same kernel chunk by chunk; its samples equal the one-shot
call's up to float32 summation order (a few 1e-7), since conv1d's accumulation order depends on
the call's size.

soxr stays in services/common/audio.py for what upstream never resamples (output PCM for
clients, VAD input).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99


@dataclass(frozen=True)
class SincKernel:
    """Polyphase filter bank for one rate pair: ``weights`` is (new, 1, 2·width + orig)."""

    orig: int  # input rate / gcd: input samples per block
    new: int  # output rate / gcd: output samples per block
    width: int  # zero padding before the signal (input samples)
    weights: torch.Tensor

    @property
    def taps(self) -> int:
        return self.weights.shape[-1]

    def output_length(self, input_length: int) -> int:
        """torchaudio's ``ceil(new * length / orig)``, the ratio rounded to float32 first."""
        return math.ceil(float(np.float32(self.new * input_length / self.orig)))


@functools.lru_cache(maxsize=64)
def sinc_kernel(orig_hz: int, new_hz: int, dtype: torch.dtype = torch.float32) -> SincKernel:
    """The kernel of ``torchaudio.transforms.Resample(orig_hz, new_hz)`` (cached per dtype)."""
    if orig_hz <= 0 or new_hz <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_hz} and {new_hz}")
    gcd = math.gcd(orig_hz, new_hz)
    orig, new = orig_hz // gcd, new_hz // gcd
    base_freq = min(orig, new) * ROLLOFF
    width = math.ceil(LOWPASS_FILTER_WIDTH * orig / base_freq)
    # same operations and dtypes as torchaudio: idx in float64, the phase offsets in the
    # default dtype (float32), promoted to float64 by the sum
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = torch.arange(0, -new, -1)[:, None, None] / new + idx
    t *= base_freq
    t = t.clamp_(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
    window = torch.cos(t * math.pi / LOWPASS_FILTER_WIDTH / 2) ** 2
    t *= math.pi
    scale = base_freq / orig
    kernels = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernels *= window * scale
    return SincKernel(orig, new, width, kernels.to(dtype))


def _apply(kernel: SincKernel, padded: torch.Tensor) -> torch.Tensor:
    """Blocks of ``new`` outputs, one per ``orig`` input samples of a zero-padded signal."""
    blocks = torch.nn.functional.conv1d(padded[None, None], kernel.weights, stride=kernel.orig)
    return blocks[0].transpose(0, 1).reshape(-1)


def resample_sinc(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Resample a whole float mono clip exactly as torchaudio's ``Resample(from_hz, to_hz)``."""
    if from_hz == to_hz:
        return np.asarray(samples, dtype=np.float32)
    signal = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    kernel = sinc_kernel(from_hz, to_hz, signal.dtype)
    padded = torch.nn.functional.pad(signal, (kernel.width, kernel.width + kernel.orig))
    with torch.inference_mode():
        out = _apply(kernel, padded)[: kernel.output_length(len(signal))]
    return out.numpy()


class SincStreamResampler:
    """Chunk-by-chunk ``resample_sinc``: the concatenated output of ``process`` calls (the last
    with ``last=True``) has the length of ``resample_sinc`` on the whole input and its samples
    up to float32 summation order.

    Output comes in blocks of ``new`` samples, each waiting for the ``width + orig`` input
    samples its filter reaches ahead: to 16 kHz that is 0.5 ms from 48 kHz, 10.4 ms from
    44.1 kHz and 20.4 ms from 22.05 kHz (rates with a small gcd make long blocks).
    """

    def __init__(self, from_hz: int, to_hz: int) -> None:
        self.from_hz, self.to_hz = from_hz, to_hz
        self._kernel = None if from_hz == to_hz else sinc_kernel(from_hz, to_hz)
        width = self._kernel.width if self._kernel else 0
        self._pending = np.zeros(width, dtype=np.float32)  # torchaudio's left zero padding
        self._input_samples = 0
        self._emitted = 0

    def process(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        chunk = np.asarray(samples, dtype=np.float32)
        if self._kernel is None:
            return chunk
        self._input_samples += len(chunk)
        kernel = self._kernel
        tail = np.zeros(kernel.width + kernel.orig if last else 0, dtype=np.float32)
        self._pending = np.concatenate([self._pending, chunk, tail])
        blocks = (len(self._pending) - kernel.taps) // kernel.orig + 1
        if blocks <= 0:
            return np.zeros(0, dtype=np.float32)
        used = (blocks - 1) * kernel.orig + kernel.taps
        with torch.inference_mode():
            out = _apply(kernel, torch.from_numpy(self._pending[:used])).numpy()
        self._pending = self._pending[blocks * kernel.orig :]
        if last:
            out = out[: kernel.output_length(self._input_samples) - self._emitted]
        self._emitted += len(out)
        return out
