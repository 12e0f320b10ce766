"""CPU real-time factor of the audio tokenizer, offline and streaming (20 ms feeds).

    python -m loadtests.bench_tokenizer --model-dir DIR   # model root or Step-Audio-Tokenizer/
    python -m loadtests.bench_tokenizer                   # writes and uses the tiny tokenizer

RTF = processing seconds / audio seconds (lower is faster; < 1 keeps up with real time).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from services.common.audio import decode_audio_file
from services.models import layout
from services.models.audio_tokenizer import AudioTokenizer, resolve_tokenizer_dir

DEMO_CLIP = Path(__file__).resolve().parents[1] / "services/models/tiny/assets/demo_question.wav"
FEED_MS = 20


def run(
    model_root: Path, *, audio_seconds: float = 10.0, repeats: int = 3, num_threads: int = 1
) -> dict[str, float]:
    """Median timings over ``repeats`` runs on the demo clip looped to ``audio_seconds``.

    ``num_threads`` is used for ONNX Runtime and, for the duration of the run, torch.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        return _measure(model_root, audio_seconds, repeats, num_threads)
    finally:
        torch.set_num_threads(previous_threads)


def _measure(
    model_root: Path, audio_seconds: float, repeats: int, num_threads: int
) -> dict[str, float]:
    tokenizer = AudioTokenizer.from_pretrained(
        resolve_tokenizer_dir(model_root), num_threads=num_threads
    )
    samples, rate = _bench_audio(audio_seconds)
    duration = len(samples) / rate
    tokenizer.tokenize(samples[: rate // 2], rate)  # warm-up: lazy initialisation, allocations
    offline = [_time_offline(tokenizer, samples, rate) for _ in range(repeats)]
    streaming = [_time_stream(tokenizer, samples, rate) for _ in range(repeats)]
    return {
        "audio_seconds": duration,
        "offline_seconds": statistics.median(offline),
        "offline_rtf": statistics.median(offline) / duration,
        "stream_seconds": statistics.median(s for s, _ in streaming),
        "stream_rtf": statistics.median(s for s, _ in streaming) / duration,
        "stream_finish_ms": 1000 * statistics.median(f for _, f in streaming),
        "tokens": float(len(tokenizer.tokenize(samples, rate))),
        "threads": float(num_threads),
    }


def _bench_audio(seconds: float) -> tuple[np.ndarray, int]:
    clip, rate = decode_audio_file(DEMO_CLIP)
    repeats = int(np.ceil(seconds * rate / len(clip)))
    return np.tile(clip, repeats)[: int(seconds * rate)], rate


def _time_offline(tokenizer: AudioTokenizer, samples: np.ndarray, rate: int) -> float:
    started = time.perf_counter()
    tokenizer.tokenize(samples, rate)
    return time.perf_counter() - started


def _time_stream(tokenizer: AudioTokenizer, samples: np.ndarray, rate: int) -> tuple[float, float]:
    """(total processing seconds, seconds spent in finish()) for 20 ms feeds."""
    stream = tokenizer.stream(rate)
    step = rate * FEED_MS // 1000
    started = time.perf_counter()
    for start in range(0, len(samples), step):
        stream.feed(samples[start : start + step])
    finish_started = time.perf_counter()
    stream.finish()
    finished = time.perf_counter()
    return finished - started, finished - finish_started


def _print_table(results: dict[str, float], model_dir: str) -> None:
    print(f"audio tokenizer CPU benchmark ({model_dir}, {results['threads']:.0f} thread(s))")
    print(f"  audio            {results['audio_seconds']:.1f} s, {results['tokens']:.0f} ids")
    print("  mode         seconds      RTF")
    print(f"  offline     {results['offline_seconds']:8.3f} {results['offline_rtf']:8.4f}")
    print(f"  streaming   {results['stream_seconds']:8.3f} {results['stream_rtf']:8.4f}")
    print(f"  finish() latency at end of speech: {results['stream_finish_ms']:.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="model root or tokenizer folder")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length to tokenise")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model_dir
        if model_dir is None:
            from services.models.tiny.audio_tokenizer import write_tiny_audio_tokenizer

            model_dir = Path(scratch)
            write_tiny_audio_tokenizer(model_dir / layout.TOKENIZER_DIR)
        results = run(
            model_dir, audio_seconds=args.seconds, repeats=args.repeats, num_threads=args.threads
        )
        _print_table(results, "tiny pack" if args.model_dir is None else str(args.model_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
