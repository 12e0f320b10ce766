"""Served TTS capacity: N concurrent gRPC streams through the TTS service's batched vocoder.

    python -m loadtests.bench_served_vocoder                      # in-process, tiny pack, CPU
    python -m loadtests.bench_served_vocoder --streams 1,8,32 --method vocode --ids-per-s 250
    python -m loadtests.bench_served_vocoder --target HOST:PORT   # a running TTS service (GPU)

``synthesize`` sends N ``Synthesize`` calls (TTS LM + vocoder); ``vocode`` sends N ``Vocode``
calls streaming random audio ids (the vocoder alone) in 5-id groups at ``--ids-per-s`` (an LM
emitting that fast; 41.67 is real time; 0 = all at once). At exactly real-time pace the streaming
scheme itself underruns (a chunk's audio is shorter than the wait for the next chunk's ids,
docs/token2wav.md), so capacity is read at an LM pace above real time. In-process, the service
runs with ``ignore_eos`` and ``max_audio_tokens = --ids`` so every call has the same length; against
``--target`` start the service with ``TTS_IGNORE_EOS=true TTS_MAX_AUDIO_TOKENS=<ids>`` (and
``TTS_VOCODER__MAX_STREAMS`` ≥ the largest N).

Per N it reports audio seconds produced per wall second, first-audio latency p50/p95 (call
start → first PCM), underruns (a stream whose next chunk arrives after the audio it already
has would have finished playing, counted from its first chunk), errors by gRPC code, and — in
process — the vocoder's streams per batched step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from stepaudio.serving.v1 import audio_pb2, tts_pb2, tts_pb2_grpc

from services.common.grpc_client import GrpcClientSettings, create_channel
from services.common.grpc_server import serve
from services.models.audio_tokens import AUDIO_ID_OFFSET, GROUP_SIZE
from services.tts.config import TtsSettings
from services.tts.server import TtsService

F32 = audio_pb2.AUDIO_ENCODING_PCM_F32LE  # 4 bytes per sample


@dataclass
class CallResult:
    first_audio_s: float | None = None
    audio_s: float = 0.0
    underruns: int = 0
    error: str | None = None
    arrivals: list[tuple[float, float]] = field(default_factory=list)  # (time, audio s)


def _underruns(arrivals: Sequence[tuple[float, float]]) -> int:
    """Chunks arriving after the audio received before them has finished playing."""
    if not arrivals:
        return 0
    start, buffered, count = arrivals[0][0], arrivals[0][1], 0
    for when, seconds in arrivals[1:]:
        if when - start > buffered + 1e-3:
            count += 1
            start, buffered = when, 0.0  # playback resumes at this chunk
        buffered += seconds
    return count


async def _read(call: Any, started: float) -> CallResult:
    result = CallResult()
    try:
        async for reply in call:
            seconds = len(reply.audio.data) / 4 / max(reply.audio.format.sample_rate_hz, 1)
            if seconds and result.first_audio_s is None:
                result.first_audio_s = time.perf_counter() - started
            if seconds:
                result.arrivals.append((time.perf_counter(), seconds))
            result.audio_s += seconds
    except grpc.aio.AioRpcError as error:
        result.error = error.code().name
    result.underruns = _underruns(result.arrivals)
    return result


async def _synthesize(stub: tts_pb2_grpc.TtsServiceStub, index: int) -> CallResult:
    request = tts_pb2.SynthesizeRequest(
        text="你好，欢迎使用语音服务。", options=tts_pb2.SynthesisOptions(seed=index, encoding=F32)
    )
    return await _read(stub.Synthesize(request, timeout=600), time.perf_counter())


async def _vocode(
    stub: tts_pb2_grpc.TtsServiceStub, index: int, n_ids: int, ids_per_s: float
) -> CallResult:
    ids = (AUDIO_ID_OFFSET + np.random.default_rng(index).integers(0, 5120, n_ids)).tolist()
    options = tts_pb2.SynthesisOptions(seed=index, encoding=F32)
    config = tts_pb2.VocodeRequest(config=tts_pb2.VocodeRequest.VocodeConfig(options=options))

    async def requests() -> AsyncIterator[tts_pb2.VocodeRequest]:
        yield config
        step = GROUP_SIZE if ids_per_s > 0 else n_ids
        began = time.perf_counter()
        for start in range(0, n_ids, step):
            tokens = tts_pb2.VocodeRequest.AudioTokens(token_ids=ids[start : start + step])
            yield tts_pb2.VocodeRequest(tokens=tokens)
            if ids_per_s > 0:  # paced from the start, so slow writes do not add up
                due = began + (start + step) / ids_per_s
                await asyncio.sleep(max(0.0, due - time.perf_counter()))

    return await _read(stub.Vocode(requests(), timeout=600), time.perf_counter())


async def run_level(
    channel: grpc.aio.Channel, streams: int, method: str, n_ids: int, ids_per_s: float
) -> dict[str, Any]:
    """N concurrent calls; throughput, latency, underruns and errors of that level."""
    stub = tts_pb2_grpc.TtsServiceStub(channel)
    started = time.perf_counter()
    if method == "synthesize":
        calls = [_synthesize(stub, i) for i in range(streams)]
    else:
        calls = [_vocode(stub, i, n_ids, ids_per_s) for i in range(streams)]
    results = await asyncio.gather(*calls)
    wall = time.perf_counter() - started
    ok = [r for r in results if r.error is None]
    firsts = sorted(r.first_audio_s for r in ok if r.first_audio_s is not None)
    return {
        "streams": streams,
        "wall_s": round(wall, 3),
        "audio_s": round(sum(r.audio_s for r in ok), 3),
        "audio_s_per_wall_s": round(sum(r.audio_s for r in ok) / wall, 3),
        "first_audio_p50_ms": _ms(_quantile(firsts, 0.5)),
        "first_audio_p95_ms": _ms(_quantile(firsts, 0.95)),
        "streams_with_underruns": sum(1 for r in ok if r.underruns),
        "errors": dict(Counter(r.error for r in results if r.error)),
    }


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 1)


@asynccontextmanager
async def local_service(
    model_dir: Path | None, n_ids: int, max_streams: int
) -> AsyncIterator[tuple[grpc.aio.Channel, TtsService]]:
    """The TTS service in this process (tiny pack written to a temp dir when no model dir)."""
    with tempfile.TemporaryDirectory() as tmp:
        if model_dir is None:
            from services.models.tiny import write_tiny_pack

            model_dir = write_tiny_pack(Path(tmp) / "tiny")
        settings = TtsSettings(
            model_dir=model_dir,
            voices_dir=Path(tmp) / "voices",
            host="127.0.0.1",
            port=0,
            metrics_port=0,
            ignore_eos=True,
            max_audio_tokens=n_ids,
            max_streams=max_streams,
            vocoder={"max_streams": max_streams},
            grpc_max_concurrent_rpcs=max_streams + 16,
            engine_queue_size=max(256, max_streams),
            max_running=max_streams,
        )
        service = TtsService(settings)
        async with serve(service, settings) as handle:
            channel = create_channel(GrpcClientSettings(target=handle.address))
            try:
                yield channel, service
            finally:
                await channel.close()


async def run(
    levels: Sequence[int],
    *,
    method: str = "synthesize",
    n_ids: int = 300,
    ids_per_s: float = 0.0,
    model_dir: Path | None = None,
    target: str | None = None,
) -> dict[str, Any]:
    """One result per level of concurrency; in process unless ``target`` is given."""
    results = []
    if target is not None:
        channel = create_channel(GrpcClientSettings(target=target))
        try:
            for n in levels:
                results.append(await run_level(channel, n, method, n_ids, ids_per_s))
        finally:
            await channel.close()
    else:
        async with local_service(model_dir, n_ids, max(levels)) as (channel, service):
            for n in levels:
                before = _batch_totals(service)
                level = await run_level(channel, n, method, n_ids, ids_per_s)
                after = _batch_totals(service)
                steps = after[0] - before[0]
                level["vocoder_streams_per_step"] = (
                    round((after[1] - before[1]) / steps, 2) if steps else None
                )
                results.append(level)
    return {"method": method, "ids_per_call": n_ids, "ids_per_s": ids_per_s, "levels": results}


def _batch_totals(service: TtsService) -> tuple[float, float]:
    values = {s.name: s.value for m in service.vocoder_batch.collect() for s in m.samples}
    return (
        values.get("stepaudio_tts_vocoder_batch_streams_count", 0.0),
        values.get("stepaudio_tts_vocoder_batch_streams_sum", 0.0),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="1,4,8", help="concurrency levels, e.g. 1,8,32")
    parser.add_argument("--method", choices=["synthesize", "vocode"], default="synthesize")
    parser.add_argument("--ids", type=int, default=300, help="audio ids per call (41.67 / s)")
    parser.add_argument(
        "--ids-per-s", type=float, default=0.0, help="vocode: ids sent per second (0 = at once)"
    )
    parser.add_argument("--model-dir", type=Path, default=None, help="model root (in process)")
    parser.add_argument("--target", default=None, help="HOST:PORT of a running TTS service")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    levels = [int(n) for n in args.streams.split(",")]
    result = asyncio.run(
        run(
            levels,
            method=args.method,
            n_ids=args.ids,
            ids_per_s=args.ids_per_s,
            model_dir=args.model_dir,
            target=args.target,
        )
    )
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)  # noqa: T201
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
