"""Concurrent real-time TTS streams one GPU holds: token2wav fed by a synthetic LM clock.

    python -m loadtests.gpu.bench_streams [--streams 32,64,96,128,192,256] [--seconds 15]
        [--lm ras,none] [--out DIR] [--tiny]

N simulated streams, each receiving 41.67 audio codes per second in 5-code groups (one group
every 120 ms, as the TTS LM produces them in real time), are decoded by the batched streaming
path (`Token2Wav.compile_for_gpu()` + `step_streams`, one loop as a `BatchStepLoop` would run
it) at CosyVoice-300M size (bf16 flow, fp32 HiFT, random weights, 3 s prompt, 10 steps + CFG).
Streams start staggered over one steady hop; the first utterance of each has a random length
(45..420 codes), later ones 420 codes (10 s) with a 0.24 s pause, so first, second and steady
chunks mix as in a service with turnover.

Per chunk: due = arrival of the last code it needs (synthetic clock); latency = its audio
ready on the host − due; deadline = the playback duration of the audio it returns (the chunk
must be decoded before that audio has played, or the decoder falls behind the real-time
producer). A stream count N "holds" when the p95 of latency / deadline is ≤ 1 over the chunks
due after the warm-up. First-chunk latency percentiles are reported separately (≤ 100 ms
target).

The LM shares the GPU (``--lm ras``/``plain``): a thread on its own CUDA stream issues one
"LM step" every 1 / 41.67 s — device-to-device copies sized to the TTS-3B decode step time at
batch N measured in docs/gpu-results.md (compiled + RAS: 3.53 ms at 1 … 9.56 ms at 128,
linear beyond) — so token2wav runs against the LM's memory traffic, as vLLM's in-process worker
would run beside it. ``--lm none`` measures token2wav alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loadtests.gpu.bench_token2wav import (
    N_TIMESTEPS,
    VARIANTS,
    WARM_FRAMES,
    device,
    ensure_folder,
    speaker,
    sync,
)
from loadtests.gpu.common import markdown_table, out_dir
from services.models.audio_tokens import GROUP_SIZE, TOKENS_PER_SECOND
from services.models.token2wav import StreamStep, Token2Wav, step_streams
from services.models.token2wav import streaming as streaming_module
from services.models.token2wav.flow import MaskedDiffWithXvec
from services.models.token2wav.streaming import ChunkJob, Token2WavStream

SEED = 0
GROUP_S = GROUP_SIZE / TOKENS_PER_SECOND  # 0.12 s between 5-code groups
UTTERANCE_CODES = 420
PAUSE_S = 2 * GROUP_S
STAGGER_S = 120 / TOKENS_PER_SECOND  # one steady hop (2.88 s)
# TTS-3B decode step (ms) at batch b, docs/gpu-results.md (H100, compiled class)
LM_STEP_MS = {
    "ras": {1: 3.53, 8: 4.10, 32: 5.68, 64: 6.94, 128: 9.56},
    "plain": {1: 3.46, 8: 3.70, 32: 4.08, 64: 4.15, 128: 4.75},
}


def lm_step_ms(kind: str, batch: int) -> float:
    """Linear interpolation of the measured step times; linear extrapolation past 128."""
    table = sorted(LM_STEP_MS[kind].items())
    for (b0, t0), (b1, t1) in zip(table, table[1:], strict=False):
        if batch <= b1 or b1 == table[-1][0]:
            return t0 + (t1 - t0) * (batch - b0) / (b1 - b0)
    return table[-1][1]


class LmLoad:
    """A stand-in for the LM's GPU time: every 1 / 41.67 s, copies worth `step_ms` of device
    time on a separate CUDA stream (calibrated at start)."""

    def __init__(self, step_ms: float) -> None:
        self.stream = torch.cuda.Stream()
        self.src = torch.randn(64 * 2**20, device="cuda", dtype=torch.bfloat16)  # 128 MiB
        self.dst = torch.empty_like(self.src)
        copies = 20
        sync()
        started = time.perf_counter()
        for _ in range(copies):
            self.dst.copy_(self.src)
        sync()
        self.copy_ms = 1000 * (time.perf_counter() - started) / copies
        self.copies = max(1, round(step_ms / self.copy_ms))
        self.step_ms = step_ms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lm-load", daemon=True)
        self.steps = 0
        self.late_steps = 0

    def __enter__(self) -> LmLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        period = 1 / TOKENS_PER_SECOND
        next_step = time.perf_counter()
        with torch.cuda.stream(self.stream):
            while not self._stop.is_set():
                for _ in range(self.copies):
                    self.dst.copy_(self.src)
                self.stream.synchronize()
                self.steps += 1
                next_step += period
                wait = next_step - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                else:
                    self.late_steps += 1


def stream_sync() -> None:
    """Wait for this thread's stream only (a device sync would also wait for the LM load)."""
    if torch.cuda.is_available():
        torch.cuda.current_stream().synchronize()


class Breakdown:
    """Wall time inside the stages of `decode_chunks` (each wrapped with device syncs)."""

    def __init__(self, model: Token2Wav, stage_times: bool) -> None:
        self.seconds: dict[str, float] = {"encoder": 0.0, "flow": 0.0, "hift": 0.0}
        # calls per shape: flow "B x frames", HiFT "B x window frames" (each _push_group)
        self.calls: dict[str, dict[str, list[float]]] = {"flow": {}, "hift_call": {}}
        solver = model.solver
        assert solver is not None
        self._undo: list[tuple[Any, str, Any]] = []
        if stage_times:  # each stage between stream syncs: adds syncs, so off by default
            self._wrap(MaskedDiffWithXvec, "mu_padded", "encoder")
            self._wrap(streaming_module, "_vocode", "hift")
        self._wrap(solver, "solve", "flow", lambda a: f"{a[0].shape[0]}x{a[1].shape[2]}")
        self._wrap(streaming_module, "_push_group", "hift_call", lambda a: f"{len(a[0])}")

    def _wrap(self, owner: Any, name: str, stage: str, shape: Any = None) -> None:
        original = getattr(owner, name)
        self._undo.append((owner, name, owner.__dict__.get(name)))

        def timed(*args: Any, **kwargs: Any) -> Any:
            if shape is None:
                stream_sync()
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if shape is None:
                    stream_sync()
                    self.seconds[stage] += time.perf_counter() - started
                else:
                    record = self.calls[stage].setdefault(shape(args), [0, 0.0])
                    record[0] += 1
                    record[1] += time.perf_counter() - started

        setattr(owner, name, timed)

    def reset(self) -> None:
        for key in self.seconds:
            self.seconds[key] = 0.0
        self.calls = {"flow": {}, "hift_call": {}}


@dataclass
class SimStream:
    """One simulated TTS session: utterances of codes arriving at 41.67 codes/s."""

    index: int
    prompt_index: int
    t0: float  # synthetic time the current utterance's first group is emitted
    codes: list[int]
    stream: Token2WavStream | None = None
    fed: int = 0
    utterances: int = 0

    def arrived(self, now: float) -> int:
        groups = math.floor((now - self.t0) / GROUP_S + 1e-9)
        return max(0, min(len(self.codes), groups * GROUP_SIZE))

    def due_time(self, stop: int) -> float:
        return self.t0 + math.ceil(stop / GROUP_SIZE) * GROUP_S

    def next_arrival(self) -> float:
        return self.t0 + (self.fed // GROUP_SIZE + 1) * GROUP_S


@dataclass
class ChunkRecord:
    due: float
    ready: float
    seconds: float  # playback duration of the returned audio
    first: bool
    final: bool


@dataclass
class SimResult:
    chunks: list[ChunkRecord] = field(default_factory=list)
    steps: int = 0
    busy_s: float = 0.0
    utterances: int = 0


def simulate(
    model: Token2Wav,
    prompts: list[Any],
    n_streams: int,
    seconds: float,
    rng: np.random.Generator,
) -> SimResult:
    sims = [
        SimStream(
            index=i,
            prompt_index=i % len(prompts),
            t0=float(rng.uniform(0, STAGGER_S)),
            codes=rng.integers(0, 5120, int(rng.integers(9, 85)) * GROUP_SIZE).tolist(),
        )
        for i in range(n_streams)
    ]
    result = SimResult()
    base = time.perf_counter()
    while True:
        now = time.perf_counter() - base
        if now >= seconds:
            break
        steps, owners = [], []
        for sim in sims:
            if sim.stream is None and now >= sim.t0:
                generator = torch.Generator().manual_seed(SEED + 1000 * sim.index + sim.utterances)
                sim.stream = model.stream(prompts[sim.prompt_index], generator=generator)
                sim.fed = 0
            if sim.stream is None:
                continue
            avail = sim.arrived(now)
            finish = avail == len(sim.codes)
            if avail > sim.fed or finish:
                steps.append(StreamStep(sim.stream, sim.codes[sim.fed : avail], finish))
                owners.append(sim)
                sim.fed = avail
        if steps:
            began = time.perf_counter()

            def on_chunk(
                i: int, job: ChunkJob, audio: np.ndarray, owners: list[SimStream] = owners
            ) -> None:
                sim = owners[i]
                result.chunks.append(
                    ChunkRecord(
                        due=sim.due_time(job.stop),
                        ready=time.perf_counter() - base,
                        seconds=audio.size / model.sample_rate_hz,
                        first=job.start == 0,
                        final=job.final,
                    )
                )

            step_streams(model, steps, on_chunk)
            result.busy_s += time.perf_counter() - began
            result.steps += 1
        for sim in owners:  # utterances that just ended: the next one after a pause
            if sim.stream is not None and sim.stream.done:
                sim.t0 = sim.due_time(len(sim.codes)) + PAUSE_S
                sim.codes = rng.integers(0, 5120, UTTERANCE_CODES).tolist()
                sim.stream = None
                sim.utterances += 1
                result.utterances += 1
        now = time.perf_counter() - base
        upcoming = [s.t0 if s.stream is None else s.next_arrival() for s in sims]
        wait = min(upcoming) - now
        if wait > 0:
            time.sleep(min(wait, 0.05))
    return result


def load_model(folder: Path, variant: str, merge_frames: int | None) -> tuple[Token2Wav, dict]:
    """The variant's model with its flow graphs captured; falls back to `graphs` if the
    compiled variant fails to compile or capture."""
    options = VARIANTS[variant]
    assert options is not None, "bench_streams needs an accelerated variant"
    if merge_frames is not None:
        options = type(options)(**{**options.__dict__, "merge_frames": merge_frames})
    model = Token2Wav.from_pretrained(folder, device=device(), dtype=torch.bfloat16)
    model.compile_for_gpu(options)
    started = time.perf_counter()
    try:
        with torch.inference_mode():
            shapes = model.solver.warm_up(  # type: ignore[union-attr]
                WARM_FRAMES, N_TIMESTEPS, model.flow.decoder.inference_cfg_rate
            )
    except Exception as exc:  # noqa: BLE001 - report and fall back, the run must go on
        if variant == "graphs":
            raise
        print(f"{variant} failed ({type(exc).__name__}: {exc}); falling back to graphs")
        return load_model(folder, "graphs", merge_frames)
    sync()
    info = {"variant": variant, "graph_shapes": shapes, "capture_s": time.perf_counter() - started}
    started = time.perf_counter()
    info["hift_graphs_warmed"] = model.warm_up_hift()  # no captures while streams run
    sync()
    info["hift_capture_s"] = time.perf_counter() - started
    return model, info | {"options": {k: str(v) for k, v in options.__dict__.items()}}


def first_chunk_ms(model: Token2Wav, prompt: Any, repeats: int = 5) -> dict[str, float]:
    """An idle GPU, one stream: compute of the `feed` that brings the 45th code (median, min);
    the stream is fed 40 codes first."""
    codes = np.random.default_rng(SEED).integers(0, 5120, 45).tolist()
    times = []
    for i in range(repeats + 2):  # the first two capture/warm the HiFT shapes
        stream = model.stream(prompt, generator=torch.Generator().manual_seed(i))
        stream.feed(codes[:40])
        sync()
        started = time.perf_counter()
        out = stream.feed(codes[40:])
        sync()
        assert out.size
        times.append(1000 * (time.perf_counter() - started))
    return {"median": float(np.median(times[2:])), "min": float(min(times[2:]))}


def summarise(result: SimResult, warmup_s: float, seconds: float) -> dict[str, Any]:
    chunks = [c for c in result.chunks if c.due >= warmup_s]
    if not chunks:
        return {"chunks": 0, "holds": False}
    latency = np.array([c.ready - c.due for c in chunks])
    ratio = np.array([(c.ready - c.due) / max(c.seconds, 1e-3) for c in chunks])
    firsts = np.array([c.ready - c.due for c in chunks if c.first])
    window = seconds - warmup_s
    row: dict[str, Any] = {
        "chunks": len(chunks),
        "first_chunks": int(firsts.size),
        "latency_ms_p50": 1000 * float(np.percentile(latency, 50)),
        "latency_ms_p95": 1000 * float(np.percentile(latency, 95)),
        "latency_ms_max": 1000 * float(latency.max()),
        "deadline_ratio_p95": float(np.percentile(ratio, 95)),
        "misses": int((ratio > 1).sum()),
        "first_ms_p50": 1000 * float(np.percentile(firsts, 50)) if firsts.size else None,
        "first_ms_p95": 1000 * float(np.percentile(firsts, 95)) if firsts.size else None,
        "audio_s_per_s": sum(c.seconds for c in chunks) / window,
        "busy_fraction": result.busy_s / seconds,
        "steps": result.steps,
        "utterances_done": result.utterances,
    }
    row["holds"] = row["deadline_ratio_p95"] <= 1.0
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out")
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--streams", default="32,64,96,128,192,256")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0, help="chunks due before: ignored")
    parser.add_argument("--lm", default="ras,none", help="LM share per pass: ras, plain, none")
    parser.add_argument("--speakers", type=int, default=4, help="distinct 3 s prompts")
    parser.add_argument("--keep-going", action="store_true", help="run N past a failure")
    parser.add_argument("--variant", default="compiled", choices=["graphs", "compiled"])
    parser.add_argument("--merge-frames", type=int, help="AccelOptions.merge_frames override")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CPU smoke run)")
    parser.add_argument(
        "--configs",
        default="",
        help="AccelOptions overrides to sweep in this process, e.g. "
        "'merge_frames=2048;merge_frames=65536,hift_capture_after=1' (empty: as loaded)",
    )
    parser.add_argument(
        "--stage-times",
        action="store_true",
        help="time encoder/HiFT between stream syncs (the extra syncs slow the loop)",
    )
    parser.add_argument(
        "--profile-seconds",
        type=float,
        default=0.0,
        help="after each run, this long again under torch.profiler (tables in profile_streams.txt)",
    )
    args = parser.parse_args(argv)
    out = out_dir(args.out)
    folder, _ = ensure_folder(args.folder, args.tiny)
    model, info = load_model(folder, args.variant, args.merge_frames)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    result: dict[str, Any] = {
        "gpu": gpu,
        **info,
        "args": vars(args) | {"folder": str(folder)},
        "runs": [],
    }
    print(f"warm-up: {json.dumps(info)}", flush=True)
    rng = np.random.default_rng(SEED)
    prompts = [speaker(rng) for _ in range(args.speakers)]
    simulate(model, prompts, 8, 4.0, np.random.default_rng(SEED + 1))  # HiFT/alloc warm-up
    result["first_chunk_b1_ms"] = first_chunk_ms(model, prompts[0])
    print(f"first chunk at batch 1: {result['first_chunk_b1_ms']}", flush=True)
    breakdown = Breakdown(model, args.stage_times)
    for config in args.configs.split(";"):
        overrides = apply_config(model, config)
        run_streams(model, prompts, args, out, result, breakdown, overrides)
    print(report(result), flush=True)
    return 0


def apply_config(model: Token2Wav, config: str) -> dict[str, Any]:
    """Set AccelOptions fields (k=v, comma-separated) on the loaded model's solver and HiFT
    graphs; returns the overrides."""
    assert model.solver is not None
    overrides: dict[str, Any] = {}
    for item in filter(None, config.split(",")):
        key, value = item.split("=")
        current = getattr(model.solver.options, key)
        if isinstance(current, bool):
            overrides[key] = value == "1"
        elif isinstance(current, tuple):
            overrides[key] = tuple(int(v) for v in value.split(":"))
        else:
            overrides[key] = type(current)(value)
    options = dataclasses.replace(model.solver.options, **overrides)
    model.solver.options = options
    model.solver.graphs.max_graphs = options.max_graphs
    if model.hift_graphs is not None:
        model.hift_graphs.options = options
        model.hift_graphs.graphs.max_graphs = options.max_hift_graphs
    if overrides and torch.cuda.is_available():  # capture new flow shapes before measuring
        with torch.inference_mode():
            rate = model.flow.decoder.inference_cfg_rate
            new = model.solver.warm_up(WARM_FRAMES, N_TIMESTEPS, rate)
        print(f"config {overrides}: {new} new flow graphs", flush=True)
    return overrides


def profile_run(
    model: Token2Wav, prompts: list[Any], n: int, seconds: float, out: Path, title: str
) -> None:
    """`seconds` of the same simulation under torch.profiler; appends kernel and CPU tables."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        simulate(model, prompts, n, seconds, np.random.default_rng(SEED + n))
    averages = prof.key_averages()
    text = [
        f"\n===== {title}: {seconds:.0f} s under the profiler =====",
        "-- by device time --",
        averages.table(sort_by="self_cuda_time_total", row_limit=45, max_name_column_width=90),
        "-- by host time --",
        averages.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=90),
    ]
    with (out / "profile_streams.txt").open("a") as file:
        file.write("\n".join(text) + "\n")


def run_streams(
    model: Token2Wav,
    prompts: list[Any],
    args: argparse.Namespace,
    out: Path,
    result: dict[str, Any],
    breakdown: Breakdown,
    overrides: dict[str, Any],
) -> None:
    for lm in args.lm.split(","):
        for n in (int(x) for x in args.streams.split(",")):
            step_ms = 0.0 if lm == "none" else lm_step_ms(lm, n)
            run: dict[str, Any] = {"lm": lm, "streams": n, "lm_step_ms": step_ms}
            run["config"] = overrides
            run["lm_gpu_fraction"] = step_ms / 1000 * TOKENS_PER_SECOND
            sim_rng = np.random.default_rng(SEED + n)
            breakdown.reset()
            if lm == "none" or not torch.cuda.is_available():
                sim = simulate(model, prompts, n, args.seconds, sim_rng)
            else:
                with LmLoad(step_ms) as load:
                    sim = simulate(model, prompts, n, args.seconds, sim_rng)
                run |= {"lm_steps": load.steps, "lm_late_steps": load.late_steps}
            run |= summarise(sim, args.warmup, args.seconds)
            run["stage_s"] = dict(breakdown.seconds) | {"step_total": sim.busy_s}
            run["calls"] = {
                stage: {k: [c, round(t, 4)] for k, (c, t) in sorted(shapes.items())}
                for stage, shapes in breakdown.calls.items()
            }
            if model.hift_graphs is not None:
                run["hift_graphs"] = len(model.hift_graphs.graphs)
                run["hift_graph_replays"] = model.hift_graphs.graphs.replays
                run["hift_graphs_disabled"] = model.hift_graphs.disabled
            result["runs"].append(run)
            (out / "bench_streams.json").write_text(json.dumps(result, indent=2))
            print(json.dumps(run), flush=True)
            if args.profile_seconds > 0 and torch.cuda.is_available() and not overrides:
                title = f"{overrides or 'as loaded'}, LM {lm}, {n} streams"
                if lm == "none":
                    profile_run(model, prompts, n, args.profile_seconds, out, title)
                else:
                    with LmLoad(step_ms):
                        profile_run(model, prompts, n, args.profile_seconds, out, title)
            if not run["holds"] and not args.keep_going:
                break


def report(result: dict[str, Any]) -> str:
    rows = []
    for r in result["runs"]:
        first = (
            f"{r['first_ms_p50']:.0f} / {r['first_ms_p95']:.0f}"
            if r.get("first_ms_p50") is not None
            else "—"
        )
        rows.append(
            [
                json.dumps(r.get("config") or {}),
                r["lm"],
                r["streams"],
                f"{r['lm_gpu_fraction']:.2f}",
                r.get("chunks", 0),
                f"{r.get('latency_ms_p50', 0):.0f} / {r.get('latency_ms_p95', 0):.0f} / "
                f"{r.get('latency_ms_max', 0):.0f}",
                f"{r.get('deadline_ratio_p95', float('nan')):.2f}",
                r.get("misses", 0),
                first,
                f"{r.get('audio_s_per_s', 0):.1f}",
                "yes" if r["holds"] else "no",
            ]
        )
    table = markdown_table(
        [
            "config",
            "LM",
            "streams",
            "LM GPU share",
            "chunks",
            "latency p50 / p95 / max ms",
            "p95 latency/deadline",
            "misses",
            "first chunk p50 / p95 ms",
            "audio s/s",
            "holds",
        ],
        rows,
    )
    best: dict[str, int] = {}
    for r in result["runs"]:
        if r["holds"]:
            best[r["lm"]] = max(best.get(r["lm"], 0), r["streams"])
    return f"{table}\n\nlargest N that holds: {json.dumps(best)}"


if __name__ == "__main__":
    sys.exit(main())
