"""How many talking callers one tokenizer service follows, by batching loops (round threads).

    python -m loadtests.gpu.tokenizer_capacity --model-dir PACK --workers 1,4,8 \\
        --streams 8,16,32,64 --vq06-threads 1 --seconds 8

The served code path without gRPC: the tokenizer service's ``LoopPool`` (``workers`` RoundLoop
threads over one ``AudioTokenizer``) and one ``AudioTokenizerStream`` per caller, each fed 20 ms
frames at real time from a seeded start offset, each feed awaited before the next (as
``TokenizeStream`` does). Every caller talks the whole time (in a dialogue a caller talks about
a third of it, so a point that keeps up with S talkers serves ≈ 3 S sessions).

Per point: ``lag`` (a feed's completion after its frame was due; a tokenizer that keeps up
stays near one round — one vq06 window at most, every 0.48 s of speech), ``tail`` (end of
speech → the final ids, which the controller's commit waits for), rounds run, and whether it
kept up: lag p95 ≤ ``--max-lag-ms`` and every stream's ids equal those of the same audio
tokenised alone (batching must not change codes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loadtests.bench_tokenizer import FEED_MS, _bench_audio
from services.models.audio_tokenizer import AudioTokenizer, resolve_tokenizer_dir
from services.tokenizer.server import LoopPool

MAX_START_OFFSET_S = 0.5  # callers do not all start on the same frame


@dataclass
class StreamResult:
    ids: list[int]
    lags_s: list[float] = field(default_factory=list)
    tail_s: float = 0.0


@dataclass
class RoundCounter:
    rounds: int = 0
    jobs: int = 0

    def __call__(self, jobs: int, _seconds: float) -> None:
        self.rounds += 1  # RoundLoop threads call this; a lost increment only blurs a count
        self.jobs += jobs


async def talk(
    pool: LoopPool, tokenizer: AudioTokenizer, samples: np.ndarray, rate: int, offset_s: float
) -> StreamResult:
    """One caller: frames due at real time from ``offset_s``, each feed awaited in turn."""
    stream = tokenizer.stream(rate)
    step = rate * FEED_MS // 1000
    loop = asyncio.get_running_loop()
    start = loop.time() + offset_s
    result = StreamResult(ids=[])
    due = start
    for index, first in enumerate(range(0, len(samples), step)):
        due = start + (index + 1) * FEED_MS / 1000  # the frame has been spoken
        await asyncio.sleep(max(0.0, due - loop.time()))
        result.ids += await pool.run(stream.feed_steps(samples[first : first + step]))
        result.lags_s.append(loop.time() - due)
    result.ids += await pool.run(stream.finish_steps())
    result.tail_s = loop.time() - due  # from the end of speech, lag included
    return result


def ids_alone(tokenizer: AudioTokenizer, samples: np.ndarray, rate: int) -> list[int]:
    """The ids of one stream fed the same frames by itself, no loop."""
    stream = tokenizer.stream(rate)
    step = rate * FEED_MS // 1000
    ids = [
        i
        for first in range(0, len(samples), step)
        for i in stream.feed(samples[first : first + step])
    ]
    return ids + stream.finish()


def percentile_ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 1)


async def measure_point(
    tokenizer: AudioTokenizer,
    samples: np.ndarray,
    rate: int,
    *,
    workers: int,
    streams: int,
    seed: int,
    expected_ids: list[int],
    max_lag_ms: float,
) -> dict[str, Any]:
    counter = RoundCounter()
    pool = LoopPool(tokenizer, workers, max_pending=streams, on_round=counter)
    pool.start()
    offsets = [random.Random(seed + i).uniform(0, MAX_START_OFFSET_S) for i in range(streams)]
    started = time.perf_counter()
    try:
        results = await asyncio.gather(
            *(talk(pool, tokenizer, samples, rate, offset) for offset in offsets)
        )
    finally:
        await pool.aclose()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    lags = [lag for r in results for lag in r.lags_s]
    tails = [r.tail_s for r in results]
    codes_equal = all(r.ids == expected_ids for r in results)
    lag_p95 = percentile_ms(lags, 95)
    return {
        "workers": workers,
        "streams": streams,
        "audio_s": round(len(samples) / rate, 2),
        "wall_s": round(time.perf_counter() - started, 2),
        "lag_ms": {"p50": percentile_ms(lags, 50), "p95": lag_p95, "max": percentile_ms(lags, 100)},
        "tail_ms": {"p50": percentile_ms(tails, 50), "p95": percentile_ms(tails, 95)},
        "rounds": counter.rounds,
        "jobs_per_round": round(counter.jobs / max(counter.rounds, 1), 1),
        "codes_equal": codes_equal,
        "kept_up": codes_equal and lag_p95 <= max_lag_ms,
    }


def sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    folder = resolve_tokenizer_dir(args.model_dir)
    tokenizer = AudioTokenizer.from_pretrained(
        folder, num_threads=args.vq06_threads, device=args.device
    )
    samples, rate = _bench_audio(args.seconds)
    expected = ids_alone(tokenizer, samples, rate)  # also the one-off warm-up
    points = []
    for workers in args.workers:
        for streams in args.streams:
            point = asyncio.run(
                measure_point(
                    tokenizer, samples, rate, workers=workers, streams=streams,
                    seed=args.seed, expected_ids=expected, max_lag_ms=args.max_lag_ms,
                )
            )  # fmt: skip
            point.update(device=args.device, vq06_threads=args.vq06_threads)
            print(json.dumps(point), flush=True)
            points.append(point)
            if not point["kept_up"] and not args.keep_going:
                break  # more streams on this many workers only fall further behind
    return points


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="model root")
    parser.add_argument("--workers", type=int_list, default=[1, 2, 4])
    parser.add_argument("--streams", type=int_list, default=[1, 4, 8, 16])
    parser.add_argument("--vq06-threads", type=int, default=1, help="onnxruntime intra-op")
    parser.add_argument("--seconds", type=float, default=8.0, help="speech per caller")
    parser.add_argument("--max-lag-ms", type=float, default=500.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-going", action="store_true", help="past the first miss")
    parser.add_argument("--out", type=Path, help="also write the points here (JSON)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    points = sweep(args)
    if args.out:
        args.out.write_text(json.dumps(points, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
