"""CPU benchmark of token2wav: offline and streaming real-time factor, first-chunk latency.

    python -m loadtests.bench_token2wav [--model-dir DIR] [--seconds 10] [--repeats 3]

DIR is a vocoder folder (`.../CosyVoice-300M-25Hz`), a `Step-Audio-TTS-3B` folder or a model
root holding one; without it the tiny pack is written to a temporary folder. RTF is compute
time / audio duration (below 1 is faster than real time). First-chunk latency is the compute
time of the `feed()` call that returns the first audio, with codes arriving instantly; the
wait for the first chunk's codes at real-time LLM speed is reported next to it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from services.models.audio_tokens import AUDIO_ID_OFFSET, GROUP_SIZE, TOKENS_PER_SECOND
from services.models.layout import TTS_DIR, VOCODER_DIR
from services.models.tiny.token2wav import write_tiny_token2wav
from services.models.token2wav import SpeakerPrompt, Token2Wav

PROMPT_SECONDS = 3.0


def resolve_vocoder_dir(model_dir: Path) -> Path:
    for candidate in (model_dir, model_dir / VOCODER_DIR, model_dir / TTS_DIR / VOCODER_DIR):
        if (candidate / "cosyvoice.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no cosyvoice.yaml under {model_dir} (tried the vocoder layouts)")


def _speaker(model: Token2Wav, rng: np.random.Generator) -> SpeakerPrompt:
    rate = model.sample_rate_hz
    t = np.arange(int(PROMPT_SECONDS * rate)) / rate
    phase = 2 * np.pi * np.cumsum(150 + 25 * np.sin(2 * np.pi * t)) / rate
    wav = (0.3 * np.sin(phase) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    n_ids = int(PROMPT_SECONDS * TOKENS_PER_SECOND) // GROUP_SIZE * GROUP_SIZE
    ids = [AUDIO_ID_OFFSET + int(c) for c in rng.integers(0, 5120, n_ids)]
    return model.prepare_speaker(wav, rate, ids)


def _offline(model: Token2Wav, speaker: SpeakerPrompt, codes: list[int]) -> tuple[float, int]:
    start = time.perf_counter()
    wav = model.synthesize(codes, speaker, generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - start, wav.size


def _streaming(
    model: Token2Wav, speaker: SpeakerPrompt, codes: list[int]
) -> tuple[float, float, int, int]:
    """(total compute s, first-chunk compute s, samples, codes needed for the first chunk)."""
    stream = model.stream(speaker, generator=torch.Generator().manual_seed(0))
    total, first, samples = 0.0, float("nan"), 0
    for i in range(0, len(codes), GROUP_SIZE):  # the LLM emits 5-code groups
        start = time.perf_counter()
        out = stream.feed(codes[i : i + GROUP_SIZE])
        elapsed = time.perf_counter() - start
        total += elapsed
        if out.size and samples == 0:
            first = elapsed
        samples += out.size
    start = time.perf_counter()
    samples += stream.finish().size
    total += time.perf_counter() - start
    return total, first, samples, stream.first_chunk_tokens


def run(model_root: Path | None = None, *, seconds: float = 10.0, repeats: int = 3) -> dict:
    """Measure on `model_root` (see module docstring); the tiny pack when None."""
    with tempfile.TemporaryDirectory() as scratch:
        if model_root is None:
            model_root = Path(scratch) / TTS_DIR
            write_tiny_token2wav(model_root)
        folder = resolve_vocoder_dir(Path(model_root))
        model = Token2Wav.from_pretrained(folder)
        rng = np.random.default_rng(0)
        speaker = _speaker(model, rng)
        codes = rng.integers(0, 5120, int(seconds * TOKENS_PER_SECOND)).tolist()
        _offline(model, speaker, codes[:50])  # warm-up
        offline = [_offline(model, speaker, codes) for _ in range(repeats)]
        streams = [_streaming(model, speaker, codes) for _ in range(repeats)]
    rate = model.sample_rate_hz
    audio_s = offline[0][1] / rate
    first_tokens = streams[0][3]
    return {
        "vocoder_dir": str(folder),
        "torch_threads": torch.get_num_threads(),
        "audio_seconds": round(audio_s, 3),
        "prompt_seconds": PROMPT_SECONDS,
        "offline_rtf": round(statistics.median(t for t, _ in offline) / audio_s, 4),
        "streaming_rtf": round(statistics.median(s[0] for s in streams) / audio_s, 4),
        "first_chunk_compute_ms": round(statistics.median(s[1] for s in streams) * 1000, 1),
        "first_chunk_codes": first_tokens,
        "first_chunk_code_wait_ms_at_real_time": round(first_tokens / TOKENS_PER_SECOND * 1000),
        "stream_samples_equal_offline": all(s[2] == offline[0][1] for s in streams),
    }


def _print_table(results: dict) -> None:
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="vocoder / TTS / root dir")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length to decode")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    _print_table(run(args.model_dir, seconds=args.seconds, repeats=args.repeats))


if __name__ == "__main__":
    main()
