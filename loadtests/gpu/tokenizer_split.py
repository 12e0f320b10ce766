"""Where the audio tokenizer's time goes, as the capacity stack runs it: Paraformer on the
GPU, vq06 in onnxruntime on the CPU (the image has no CUDA provider).

    python -m loadtests.gpu.tokenizer_split --model-dir PACK --threads 1,6

One stream of 20 ms feeds over ``--seconds`` of speech, per vq06 thread count: processing
seconds per second of audio (RTF) in total and in the vq06 calls alone. The service's round
thread serves every session's stream one after another, so 1 / RTF is about how many
real-time sessions it can follow before it falls behind (batching shares the Paraformer
step; vq06 on the CPU costs about the same per stream batched or not).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from loadtests.bench_tokenizer import FEED_MS, _bench_audio
from services.models.audio_tokenizer import AudioTokenizer, resolve_tokenizer_dir
from services.models.audio_tokenizer.semantic import SemanticTokenizer


class SemanticTimer:
    """Seconds spent inside vq06 calls (wraps the two entry points the streams use)."""

    def __init__(self, semantic: SemanticTokenizer) -> None:
        self.seconds = 0.0
        self._depth = 0  # codes_for_mels calls codes_for_mel: count the outer call only
        for name in ("codes_for_mel", "codes_for_mels"):
            original = getattr(semantic, name)
            setattr(semantic, name, self._timed(original))

    def _timed(self, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self._depth += 1
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds += time.perf_counter() - started

        return wrapper


def measure(folder: Path, threads: int, device: str, seconds: float) -> dict[str, float]:
    tokenizer = AudioTokenizer.from_pretrained(folder, num_threads=threads, device=device)
    timer = SemanticTimer(tokenizer.semantic)
    samples, rate = _bench_audio(seconds)
    tokenizer.tokenize(samples[: rate // 2], rate)  # warm-up
    timer.seconds = 0.0
    stream = tokenizer.stream(rate)
    step = rate * FEED_MS // 1000
    started = time.perf_counter()
    for start in range(0, len(samples), step):
        stream.feed(samples[start : start + step])
    stream.finish()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    total = time.perf_counter() - started
    audio_s = len(samples) / rate
    return {
        "vq06_threads": threads,
        "device": device,
        "audio_s": audio_s,
        "stream_rtf": round(total / audio_s, 4),
        "vq06_rtf": round(timer.seconds / audio_s, 4),
        "other_rtf": round((total - timer.seconds) / audio_s, 4),
        "sessions_per_round_thread": round(audio_s / total, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="model root")
    parser.add_argument("--threads", default="1,6", help="vq06 intra-op threads to try")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    folder = resolve_tokenizer_dir(args.model_dir)
    for threads in [int(t) for t in args.threads.split(",")]:
        print(json.dumps(measure(folder, threads, args.device, args.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
