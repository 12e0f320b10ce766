"""GPU speed for token2wav: the flow's Euler loop as bucketed, padded CUDA graphs.

The eager decoder is launch-bound: one chunk is 10 Euler steps × a CFG-doubled U-Net call of
about a thousand small kernels, so a call costs about the same for 1 or 64 items and for 45 or
420 codes (docs/gpu-results.md). `FlowSolver` removes the launches and makes batching cheap:

* items of different lengths are right-padded to a common frame count and run in the
  estimator's padded mode (masked GroupNorm statistics and attention keys; estimator.py), so a
  batch may mix speakers, prompt lengths and chunk sizes and each item still gets what it would
  get alone, up to float summation order;
* the frame count is rounded up to a multiple of `frame_bucket` and the batch up to the next
  of `batch_buckets` (padding rows are one valid frame of zeros), so a handful of static shapes
  cover every chunk;
* each (batch, frames, steps, cfg) shape runs the whole Euler loop — 10 steps × CFG estimator
  calls — as one CUDA graph, captured on first use and replayed after that;
* optionally (`compile_estimator`) the estimator's transformer and ResNet blocks are
  `torch.compile`d with dynamic shapes ("regional" compilation: one compilation per block
  class and channel layout serves all 64 transformer blocks, 16 ResNets and every shape), so
  the captured kernels are Inductor's fused ones.

Graphs share one memory pool; every replay's outputs are cloned before anything else runs, which
is what makes sharing safe. On the CPU (or with `cuda_graphs=False`) the same padded solve runs
eagerly, which is what the CPU tests check against the unpadded path.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from services.models.token2wav.estimator import BasicTransformerBlock, ResnetBlock1D
from services.models.token2wav.flow import MaskedDiffWithXvec
from services.models.token2wav.hift import HiFTGenerator, SourceRandomness, WeightNormConv
from services.models.token2wav.transfer import to_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AccelOptions:
    """How `Token2Wav.compile_for_gpu` speeds the model up."""

    cuda_graphs: bool = True  # replay the Euler loop as CUDA graphs (CUDA devices only)
    compile_estimator: bool = False  # torch.compile(dynamic=True) the U-Net inside the graphs
    frame_bucket: int = 64  # frame counts are padded up to a multiple of this
    # largest = most items per call; steps of ≤ 1.5× so a call pads at most a third of its
    # rows (powers of two wasted up to half: 33 items ran as 64)
    batch_buckets: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
    max_graph_frames: int = 2048  # longer calls (long offline utterances) run eagerly
    max_graphs: int = 160  # shapes beyond this many run eagerly (padded) instead of capturing
    # a group of n items at T frames joins a group at T' > T frames in one call when
    # n · (T' − T) ≤ merge_frames. Under load one call per step is cheapest: on an H200 a
    # call has a fixed cost of ≈ 10-30 ms of launches and the host waits on each call's end,
    # so the default merges everything (docs/gpu-results.md, issue 19)
    merge_frames: int = 1 << 20
    first_chunks_apart: bool = True  # first chunks in their own calls, ahead of the merged one
    freeze_hift_weights: bool = True  # compute HiFT's weight-norm weights once
    hift_graphs: bool = True  # streaming HiFT windows as CUDA graphs
    max_hift_graphs: int = 256
    hift_capture_after: int = 1  # capture a HiFT window shape the n-th time it is seen

    def __post_init__(self) -> None:
        if self.frame_bucket < 1:
            raise ValueError("frame_bucket must be at least 1")
        buckets = self.batch_buckets
        if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
            raise ValueError("batch_buckets must be increasing positive sizes")

    @property
    def max_batch(self) -> int:
        return self.batch_buckets[-1]

    def frames_for(self, frames: int) -> int:
        return math.ceil(frames / self.frame_bucket) * self.frame_bucket

    def batch_for(self, batch: int) -> int:
        for size in self.batch_buckets:
            if size >= batch:
                return size
        raise ValueError(f"batch {batch} is above the largest bucket {self.max_batch}")


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]


class GraphCache:
    """CUDA graphs keyed by shape: `run(key, fn, inputs)` captures `fn(*inputs)` on first use
    and replays it after that. Outputs are cloned after each replay (graphs share one pool)."""

    def __init__(self, max_graphs: int) -> None:
        self.max_graphs = max_graphs
        self._graphs: dict[Hashable, _Graph] = {}
        self._pool: Any = None
        self._stream: Any = None
        self._lock = threading.Lock()
        self.captures = 0
        self.replays = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._graphs

    def __len__(self) -> int:
        return len(self._graphs)

    def full(self) -> bool:
        return len(self._graphs) >= self.max_graphs

    def run(
        self,
        key: Hashable,
        fn: Callable[..., tuple[torch.Tensor, ...]],
        inputs: Sequence[torch.Tensor],
    ) -> tuple[torch.Tensor, ...]:
        with self._lock:
            entry = self._graphs.get(key)
            if entry is None:
                entry = self._capture(fn, inputs)
                self._graphs[key] = entry
            else:
                for static, value in zip(entry.inputs, inputs, strict=True):
                    static.copy_(value, non_blocking=True)
            entry.graph.replay()
            self.replays += 1
            return tuple(out.clone() for out in entry.outputs)

    def _capture(
        self, fn: Callable[..., tuple[torch.Tensor, ...]], inputs: Sequence[torch.Tensor]
    ) -> _Graph:
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
            self._stream = torch.cuda.Stream()
        static = tuple(x.clone() for x in inputs)
        side = self._stream
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: library handles, workspaces, compilation
            fn(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (another model, an LM) may use the GPU meanwhile
        with torch.cuda.graph(
            graph, pool=self._pool, stream=side, capture_error_mode="thread_local"
        ):
            outputs = fn(*static)
        self.captures += 1
        return _Graph(graph, static, tuple(outputs))


class FlowSolver:
    """The flow's Euler loop over padded batches; graphs on CUDA, eager elsewhere."""

    def __init__(self, flow: MaskedDiffWithXvec, options: AccelOptions) -> None:
        self.flow = flow
        self.options = options
        self.graphs = GraphCache(options.max_graphs)
        self._solve: Callable[..., torch.Tensor] = flow.decoder.solve
        if options.compile_estimator:
            compile_estimator_blocks(flow.decoder.estimator)

    @property
    def use_graphs(self) -> bool:
        device = self.flow.encoder_proj.weight.device
        return self.options.cuda_graphs and device.type == "cuda"

    def padded_frames(self, frames: int) -> int:
        """The frame count a call with `frames` valid frames (its longest item) will run at."""
        if frames > self.options.max_graph_frames:
            return frames
        return self.options.frames_for(frames)

    def warm_up(
        self,
        frame_counts: Sequence[int],
        n_timesteps: int,
        cfg_rate: float,
        batch_sizes: Sequence[int] | None = None,
    ) -> int:
        """Capture the graphs for these frame counts × batch buckets now (not mid-stream);
        returns how many shapes were new. Inputs are random (never zeros)."""
        flow = self.flow
        device, dtype = flow.encoder_proj.weight.device, flow.dtype
        n_mels = flow.config.output_size
        generator = torch.Generator().manual_seed(0)
        before = self.graphs.captures
        for frames in sorted({self.padded_frames(f) for f in frame_counts}):
            for batch in batch_sizes or self.options.batch_buckets:

                def rand(*shape: int) -> torch.Tensor:
                    return torch.randn(*shape, generator=generator).to(device, dtype)

                noise, mu, cond = (rand(batch, n_mels, frames) for _ in range(3))
                lengths = [frames] * batch
                self.solve(noise, mu, rand(batch, n_mels), cond, lengths, n_timesteps, cfg_rate)
        return self.graphs.captures - before

    def solve(
        self,
        noise: torch.Tensor,
        mu: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        lengths: Sequence[int],
        n_timesteps: int,
        cfg_rate: float,
    ) -> torch.Tensor:
        """noise/mu/cond (B, 80, T) right-padded, spks (B, 80), lengths = valid frames per item
        → x (B, 80, T) in the flow dtype (padded frames hold garbage)."""
        batch, _, frames = mu.shape
        if len(lengths) != batch or max(lengths) > frames:
            raise ValueError("lengths must give one valid frame count ≤ T per item")
        out = []
        for first in range(0, batch, self.options.max_batch):
            rows = slice(first, first + self.options.max_batch)
            out.append(
                self._solve_bucket(
                    noise[rows],
                    mu[rows],
                    spks[rows],
                    cond[rows],
                    lengths[rows],
                    n_timesteps,
                    cfg_rate,
                )
            )
        return torch.cat(out) if len(out) > 1 else out[0]

    def _solve_bucket(
        self,
        noise: torch.Tensor,
        mu: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        lengths: Sequence[int],
        n_timesteps: int,
        cfg_rate: float,
    ) -> torch.Tensor:
        batch, _, frames = mu.shape
        padded_t = self.padded_frames(max(frames, max(lengths)))
        key = ("flow", self.options.batch_for(batch), padded_t, n_timesteps, float(cfg_rate))
        graphed = self.use_graphs and padded_t <= self.options.max_graph_frames
        if graphed and key not in self.graphs and self.graphs.full():
            graphed = False
        padded_b = key[1] if graphed else batch
        lengths = list(lengths) + [1] * (padded_b - batch)  # padding rows: one valid frame
        args = [
            _pad(noise, padded_b, padded_t),
            _pad(mu, padded_b, padded_t),
            _pad(spks, padded_b, None),
            _pad(cond, padded_b, padded_t),
            frame_mask(lengths, padded_t, mu.device, mu.dtype),
        ]

        def run(
            noise_: torch.Tensor,
            mu_: torch.Tensor,
            spks_: torch.Tensor,
            cond_: torch.Tensor,
            mask_: torch.Tensor,
        ) -> tuple[torch.Tensor]:
            return (self._solve(noise_, mu_, spks_, cond_, mask_, n_timesteps, cfg_rate),)

        if graphed:
            (x,) = self.graphs.run(key, run, args)
        else:
            (x,) = run(*args)
        return x[:batch, :, :frames]


class HiftGraphs:
    """Streaming HiFT windows (F0 → source → decode) as CUDA graphs.

    A window shape (batch bucket, window frames, left context, new frames) is captured the
    `hift_capture_after`-th time it is seen, or up front by `warm_up` — the stream schedule
    makes first, second and steady chunks repeat a few shapes (`hift_window_shapes`), while odd
    final chunks stay eager unless seen often enough. Batch padding rows are zeros (HiFT
    rows are independent). The graphed decode uses `istft_overlap_add` (torch.istft syncs).
    """

    def __init__(self, hift: HiFTGenerator, options: AccelOptions) -> None:
        self.hift = hift
        self.options = options
        self.graphs = GraphCache(options.max_hift_graphs)
        self._seen: Counter[Hashable] = Counter()
        self.disabled = False

    def run(
        self,
        window: torch.Tensor,
        source_tail: torch.Tensor,
        phases: torch.Tensor,
        noise: torch.Tensor,
        carry: torch.Tensor | None,
        left: int,
        middle: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(wav (B, W · spf), new source (B, 1, middle), last phase (B, H)), or None when this
        shape runs eagerly. `left`/`middle` are in samples."""
        return self._run(window, source_tail, phases, noise, carry, left, middle, False)

    def warm_up(
        self,
        shapes: Iterable[tuple[int, int, int]],
        batch_sizes: Sequence[int] | None = None,
    ) -> int:
        """Capture the graphs of these (left, new, right) window shapes in mel frames × batch
        buckets now, so a live stream never waits for a capture (the first pass of each H200
        run lost 2× to mid-run captures, docs/gpu-results.md). Inputs are random. Returns how
        many graphs were captured; none on the CPU."""
        device = self.hift.stft_window.device
        if self.disabled or device.type != "cuda":
            return 0
        spf, n_mels = self.hift.samples_per_frame, self.hift.config.in_channels
        harmonics = self.hift.config.nb_harmonics + 1
        generator = torch.Generator().manual_seed(0)
        before = self.graphs.captures
        for left, new, right in sorted(set(shapes)):
            for batch in batch_sizes or self.options.batch_buckets:

                def rand(*shape: int) -> torch.Tensor:
                    return torch.randn(*shape, generator=generator).to(device)

                fresh = (new + right) * spf
                self._run(
                    rand(batch, n_mels, left + new + right) - 5,
                    0.1 * rand(batch, 1, left * spf),
                    rand(batch, harmonics),
                    rand(batch, harmonics, fresh),
                    rand(batch, harmonics).abs() if left else None,
                    left * spf,
                    new * spf,
                    True,
                )
        return self.graphs.captures - before

    def _run(
        self,
        window: torch.Tensor,
        source_tail: torch.Tensor,
        phases: torch.Tensor,
        noise: torch.Tensor,
        carry: torch.Tensor | None,
        left: int,
        middle: int,
        warming: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        batch = window.shape[0]
        if self.disabled or window.device.type != "cuda" or middle == 0:
            return None
        if batch > self.options.max_batch:
            return None
        padded = self.options.batch_for(batch)
        key = ("hift", padded, window.shape[2], left, middle)
        if key not in self.graphs:
            self._seen[key] += 1
            early = self._seen[key] < self.options.hift_capture_after and not warming
            if early or self.graphs.full():
                return None
        if carry is None:
            carry = phases.new_zeros(phases.shape)  # adding 0 cycles changes nothing
        args = [_pad_rows(x, padded) for x in (window, source_tail, phases, noise, carry)]
        hift = self.hift

        def fn(
            window_: torch.Tensor,
            source_tail_: torch.Tensor,
            phases_: torch.Tensor,
            noise_: torch.Tensor,
            carry_: torch.Tensor,
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            f0 = hift.f0_per_sample(window_)[:, left:]
            fresh, cycles = hift.source(f0, SourceRandomness(phases_, noise_, carry_))
            wav = hift.decode(window_, torch.cat([source_tail_, fresh], dim=2), True)
            return wav, fresh[:, :, :middle].contiguous(), cycles[:, :, middle - 1].contiguous()

        try:
            wav, fresh, last = self.graphs.run(key, fn, args)
        except RuntimeError as exc:  # a capture failure must not stop audio: stay eager
            log.warning("HiFT graph capture failed, HiFT stays eager: %s", exc)
            self.disabled = True
            return None
        return wav[:batch], fresh[:batch], last[:batch]


def _pad_rows(x: torch.Tensor, batch: int) -> torch.Tensor:
    if x.shape[0] == batch:
        return x
    return torch.cat([x, x.new_zeros(batch - x.shape[0], *x.shape[1:])])


def frame_mask(
    lengths: Sequence[int], frames: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """(B, 1, frames) with 1 on each item's first `lengths[i]` frames."""
    valid = torch.tensor(list(lengths), dtype=torch.long)[:, None] > torch.arange(frames)[None]
    return to_device(valid[:, None], device, dtype)


def _pad(x: torch.Tensor, batch: int, frames: int | None) -> torch.Tensor:
    """Zero-pad rows up to `batch` and the last axis up to `frames` (None: keep)."""
    pad_rows = batch - x.shape[0]
    pad_frames = 0 if frames is None else frames - x.shape[-1]
    if pad_rows == 0 and pad_frames == 0:
        return x
    shape = (batch, *x.shape[1:-1], x.shape[-1] + pad_frames)
    out = x.new_zeros(shape)
    out[: x.shape[0], ..., : x.shape[-1]] = x
    return out


def compile_estimator_blocks(estimator: torch.nn.Module) -> int:
    """torch.compile (dynamic shapes) every transformer and ResNet block in place; the state
    dict is unchanged. Returns how many modules were wrapped."""
    count = 0
    for module in estimator.modules():
        if isinstance(module, (BasicTransformerBlock, ResnetBlock1D)):
            module.compile(dynamic=True)
            count += 1
    return count


def freeze_hift(hift: HiFTGenerator) -> None:
    """Compute every weight-normed conv's weight once (bit-identical to computing it per call)."""
    for module in hift.modules():
        if isinstance(module, WeightNormConv):
            module.freeze()
