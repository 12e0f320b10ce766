"""Scenario 20: a client that bypasses the controller and calls the gRPC services directly
with invalid fields and boundary values (NaN, infinities, the largest integers a field can
hold, unknown enum values, path-like names). Every call ends with a status of the error table
(docs/services.md): INVALID_ARGUMENT, NOT_FOUND, ... or OK for a value that is extreme but
valid; never UNKNOWN or INTERNAL (an unhandled exception). The services keep serving.

Over the concurrency cap → RESOURCE_EXHAUSTED is tested per service
(tests/integration/test_*_service.py::test_too_many_streams_is_resource_exhausted and
test_llm_service.py::test_overload_is_resource_exhausted)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from stepaudio.serving.v1 import (
    audio_pb2,
    llm_pb2,
    llm_pb2_grpc,
    tokenizer_pb2,
    tokenizer_pb2_grpc,
    tts_pb2,
    tts_pb2_grpc,
    vad_pb2,
    vad_pb2_grpc,
)

from tests.reliability.conftest import Live

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.timeout(240)]

S = grpc.StatusCode
BAD = {S.INVALID_ARGUMENT}
EXTREME = {S.OK, S.INVALID_ARGUMENT}  # valid at the edge, or refused: both are fine
NAN, INF = float("nan"), float("inf")
U32, U64 = 2**32 - 1, 2**64 - 1
CALL_TIMEOUT_S = 60.0
PCM16, F32 = audio_pb2.AUDIO_ENCODING_PCM_S16LE, audio_pb2.AUDIO_ENCODING_PCM_F32LE
F32_NANS = b"\x00\x00\xc0\x7f" * 320


def chunk(rate: int = 16_000, data: bytes = b"\x00\x00" * 320, **fmt: Any) -> audio_pb2.AudioChunk:
    encoding = fmt.pop("encoding", PCM16)
    audio_format = audio_pb2.AudioFormat(sample_rate_hz=rate, encoding=encoding, **fmt)
    return audio_pb2.AudioChunk(format=audio_format, data=data)


def generate(*, tokens: list[int] | None = None, **sampling: Any) -> llm_pb2.GenerateRequest:
    return llm_pb2.GenerateRequest(
        request_id="abuse",
        tokens=llm_pb2.TokenPrompt(token_ids=tokens or [1, 4, 600, 3, 4]),
        sampling=llm_pb2.SamplingParams(max_tokens=sampling.pop("max_tokens", 4), **sampling),
    )


def chat(role: str, part: llm_pb2.ContentPart) -> llm_pb2.GenerateRequest:
    message = llm_pb2.ChatMessage(role=role, content=[part])
    return llm_pb2.GenerateRequest(
        chat=llm_pb2.ChatPrompt(messages=[message]), sampling=llm_pb2.SamplingParams(max_tokens=4)
    )


AUDIO_MAX = llm_pb2.AudioTokens(token_ids=[U32])
TEXT_AS_AUDIO = llm_pb2.AudioTokens(token_ids=[65536 + 3, 12])  # 12: a text id


def synthesize(text: str = "hi", voice: str = "", **options: Any) -> tts_pb2.SynthesizeRequest:
    return tts_pb2.SynthesizeRequest(
        text=text, voice=voice, options=tts_pb2.SynthesisOptions(**options)
    )


LLM_CASES: list[tuple[str, llm_pb2.GenerateRequest, set[grpc.StatusCode]]] = [
    ("temperature NaN", generate(temperature=NAN), BAD),
    ("temperature inf", generate(temperature=INF), BAD),
    ("top_p NaN", generate(top_p=NAN), BAD),
    ("top_p -1", generate(top_p=-1.0), BAD),
    ("top_p 2", generate(top_p=2.0), BAD),
    ("top_k max", generate(top_k=U32), EXTREME),
    ("max_tokens max", generate(max_tokens=U32), EXTREME),
    ("seed max", generate(seed=U64), EXTREME),
    ("stop id max", generate(stop_token_ids=[U32]), EXTREME),
    ("prompt id max", generate(tokens=[U32]), BAD),
    ("role robot", chat("robot", llm_pb2.ContentPart(text="hi")), BAD),
    ("audio id max", chat("user", llm_pb2.ContentPart(audio=AUDIO_MAX)), BAD),
    ("text id as audio", chat("user", llm_pb2.ContentPart(audio=TEXT_AS_AUDIO)), BAD),
    ("empty part", chat("user", llm_pb2.ContentPart()), EXTREME),
]

TTS_CASES: list[tuple[str, tts_pb2.SynthesizeRequest, set[grpc.StatusCode]]] = [
    ("speed NaN", synthesize(speed=NAN), BAD),
    ("speed inf", synthesize(speed=INF), BAD),
    ("speed -1", synthesize(speed=-1.0), BAD),
    ("volume NaN", synthesize(volume=NAN), BAD),
    ("volume inf", synthesize(volume=INF), BAD),
    ("volume -1", synthesize(volume=-1.0), BAD),
    ("rate 1 Hz", synthesize(output_sample_rate_hz=1), BAD),
    ("rate max", synthesize(output_sample_rate_hz=U32), BAD),
    ("seed max", synthesize(seed=U64), EXTREME),
    ("encoding 99", synthesize(encoding=99), BAD),  # type: ignore[arg-type]
    ("NUL in text", synthesize(text="a\x00b"), EXTREME),
    ("voice path", synthesize(voice="../../etc/passwd"), BAD),
]

TOKENIZER_CASES: list[tuple[str, audio_pb2.AudioChunk, set[grpc.StatusCode]]] = [
    ("rate 0", chunk(rate=0), BAD),
    ("rate max", chunk(rate=U32), BAD),
    ("odd bytes", chunk(data=b"\x00" * 641), BAD),
    ("channels max", chunk(channels=U32), BAD),
    ("encoding 99", chunk(encoding=99), BAD),
    ("float NaN", chunk(encoding=F32, data=F32_NANS), BAD),
]

VAD_CASES: list[tuple[str, vad_pb2.VadConfig, set[grpc.StatusCode]]] = [
    ("threshold NaN", vad_pb2.VadConfig(threshold=NAN), BAD),
    ("threshold inf", vad_pb2.VadConfig(threshold=INF), BAD),
    ("threshold -1", vad_pb2.VadConfig(threshold=-1.0), BAD),
    ("min_speech max", vad_pb2.VadConfig(min_speech_ms=U32), EXTREME),
    ("min_silence max", vad_pb2.VadConfig(min_silence_ms=U32), EXTREME),
]


async def status_of(call: Callable[[], Any]) -> grpc.StatusCode:
    """The call's final status: a stream is read to its end (a few replies at most)."""
    try:
        result = call()
        if hasattr(result, "__aiter__"):  # a server stream
            async for _ in result:
                pass
        else:
            await result
    except grpc.aio.AioRpcError as error:
        return error.code()
    return S.OK


async def one_vad_stream(stub: Any, config: vad_pb2.VadConfig) -> AsyncIterator[Any]:
    """The config alone (the service checks it at the first message): a client still writing
    audio when the server refuses can see the HTTP/2 stream reset (INTERNAL) instead of the
    status, a transport race seen under load, not the service's answer."""
    requests = [vad_pb2.DetectSpeechRequest(config=config)]
    async for event in stub.DetectSpeech(iter(requests), timeout=CALL_TIMEOUT_S):
        yield event


async def test_20_direct_grpc_abuse_gets_named_statuses_never_unknown(live: Live) -> None:
    ports = live.stack.ports
    channels = {name: grpc.aio.insecure_channel(f"127.0.0.1:{ports[name]}") for name in ports}
    try:
        llm = llm_pb2_grpc.LlmServiceStub(channels["llm"])
        tts = tts_pb2_grpc.TtsServiceStub(channels["tts"])
        tokenizer = tokenizer_pb2_grpc.TokenizerServiceStub(channels["tokenizer"])
        vad = vad_pb2_grpc.VadServiceStub(channels["vad"])
        outcomes: list[tuple[str, grpc.StatusCode, set[grpc.StatusCode]]] = []
        for name, request, allowed in LLM_CASES:
            code = await status_of(lambda r=request: llm.Generate(r, timeout=CALL_TIMEOUT_S))
            outcomes.append((f"llm {name}", code, allowed))
        for name, request, allowed in TTS_CASES:
            code = await status_of(lambda r=request: tts.Synthesize(r, timeout=CALL_TIMEOUT_S))
            outcomes.append((f"tts {name}", code, allowed))
        for name, audio, allowed in TOKENIZER_CASES:
            request = tokenizer_pb2.TokenizeRequest(audio=audio)
            code = await status_of(lambda r=request: tokenizer.Tokenize(r, timeout=CALL_TIMEOUT_S))
            outcomes.append((f"tokenizer {name}", code, allowed))
        for name, config, allowed in VAD_CASES:
            code = await status_of(lambda c=config: one_vad_stream(vad, c))
            outcomes.append((f"vad {name}", code, allowed))
        voice = tts_pb2.RegisterVoiceRequest(name="../x", prompt_text="hi", prompt_audio=chunk())
        code = await status_of(lambda: tts.RegisterVoice(voice, timeout=CALL_TIMEOUT_S))
        outcomes.append(("tts register ../x", code, BAD))
        gone = tts_pb2.DeleteVoiceRequest(name="nobody")
        code = await status_of(lambda: tts.DeleteVoice(gone, timeout=CALL_TIMEOUT_S))
        outcomes.append(("tts delete nobody", code, {S.NOT_FOUND, S.INVALID_ARGUMENT}))

        unexpected = [(n, c.name) for n, c, allowed in outcomes if c not in allowed]
        assert not unexpected, unexpected
        assert all(c not in (S.UNKNOWN, S.INTERNAL) for _, c, _ in outcomes)
        for name, channel in channels.items():  # nothing broke: every service still serves
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)  # type: ignore[attr-defined]
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    finally:
        await asyncio.gather(*(channel.close() for channel in channels.values()))
