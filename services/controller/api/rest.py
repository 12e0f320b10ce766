"""REST: POST /v1/audio/speech and GET /v1/models (OpenAI-compatible), and /v1/voices."""

from __future__ import annotations

import base64
import io
import json
import struct
from collections.abc import AsyncIterator

import grpc
import lameenc
import numpy as np
import soundfile as sf
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from stepaudio.serving.v1 import audio_pb2, llm_pb2, tts_pb2

from services.common.audio import (
    MAX_SAMPLE_RATE_HZ,
    MIN_SAMPLE_RATE_HZ,
    AudioError,
    decode_audio_file,
    float_to_pcm16,
)
from services.common.audio_proto import PCM_S16LE, encode_chunk
from services.common.errors import ErrorCode, code_from_rpc_error, http_status_for
from services.common.resample import resample_sinc
from services.controller.admission import metered_speech
from services.controller.protocol import SpeechRequest
from services.controller.speech_encoding import CODECS, encode_stream
from services.controller.state import ControllerState
from services.controller.turn import pcm_from_chunk
from services.controller.voices import apply_instructions, resolve_voice

router = APIRouter(prefix="/v1")
NATIVE_RATE_HZ = 22_050
MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac", "mp3": "audio/mpeg"}
MEDIA_TYPES |= {name: codec.media_type for name, codec in CODECS.items()}
TTS_MODEL = "step-audio-tts-3b"


def error_response(code: str, message: str) -> JSONResponse:
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=http_status_for(code))


def rpc_error_response(exc: grpc.aio.AioRpcError, service: str) -> JSONResponse:
    return error_response(code_from_rpc_error(exc, service), exc.details() or exc.code().name)


def streaming_wav_header(rate_hz: int) -> bytes:
    """A PCM16 mono WAV header with 'unknown' sizes (0xFFFFFFFF), for streamed bodies."""
    unknown = 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", 1, 1, rate_hz, rate_hz * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + (b"data" + struct.pack("<I", unknown))
    )


def _state(request: Request) -> ControllerState:
    return request.app.state.controller  # type: ignore[no-any-return]


@router.post("/audio/speech", response_model=None)
async def speech(body: SpeechRequest, request: Request) -> Response:
    state = _state(request)
    text = body.input.strip()
    if not text:
        return error_response(ErrorCode.EMPTY_TEXT, "input is empty")
    if len(text) > state.settings.limits.max_text_chars:
        return error_response(
            ErrorCode.TEXT_TOO_LONG, f"input is over {state.settings.limits.max_text_chars} chars"
        )
    rate = body.sample_rate or (24_000 if body.response_format == "pcm" else NATIVE_RATE_HZ)
    if rate not in (16_000, 22_050, 24_000):
        return error_response(
            ErrorCode.UNSUPPORTED_SAMPLE_RATE, "sample_rate: 16000, 22050 or 24000"
        )
    options = tts_pb2.SynthesisOptions(output_sample_rate_hz=rate, speed=body.speed)
    if body.seed is not None:
        options.seed = body.seed
    voice = resolve_voice(
        body.voice_name or state.settings.turn.voice, state.settings.voice_aliases
    )
    call = state.clients.tts.Synthesize(
        tts_pb2.SynthesizeRequest(
            text=apply_instructions(text, body.instructions), voice=voice, options=options
        ),
        timeout=state.settings.rpc_timeout_s,
    )
    try:  # the first reply decides the status code (unknown voice, overload...)
        first = await call.read()
    except grpc.aio.AioRpcError as exc:
        return rpc_error_response(exc, "tts")
    audio_ids = [0]  # TTS audio ids generated (usage of the SSE stream)
    chunks = metered_speech(
        state, request.scope.get("auth"), _pcm_chunks(call, first, audio_ids), rate
    )
    media = MEDIA_TYPES[body.response_format]
    stream: AsyncIterator[bytes]
    if body.response_format == "flac":
        try:
            pcm = np.concatenate([c async for c in chunks] or [np.zeros(0, np.float32)])
        except grpc.aio.AioRpcError as exc:
            return rpc_error_response(exc, "tts")
        buffer = io.BytesIO()
        sf.write(buffer, pcm, rate, format="FLAC", subtype="PCM_16")
        if body.stream_format == "audio":
            return Response(buffer.getvalue(), media_type=media)
        stream = _once(buffer.getvalue())
    elif body.response_format in CODECS:
        stream = encode_stream(chunks, body.response_format, rate)
    else:
        encode = {"wav": _wav_stream, "pcm": _pcm_stream, "mp3": _mp3_stream}
        stream = encode[body.response_format](chunks, rate)
    if body.stream_format == "sse":
        return StreamingResponse(_sse_events(stream, audio_ids), media_type="text/event-stream")
    return StreamingResponse(stream, media_type=media)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _sse_events(stream: AsyncIterator[bytes], audio_ids: list[int]) -> AsyncIterator[bytes]:
    """OpenAI's speech SSE: speech.audio.delta events (base64 of the encoded audio), then
    speech.audio.done with usage (output tokens: the TTS LM's audio ids; the TTS service does
    not report the text side, so input_tokens is 0)."""
    async for data in stream:
        if data:
            delta = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
            yield f"data: {json.dumps(delta)}\n\n".encode()
    usage = {"input_tokens": 0, "output_tokens": audio_ids[0], "total_tokens": audio_ids[0]}
    done = {"type": "speech.audio.done", "usage": usage}
    yield f"data: {json.dumps(done)}\n\n".encode()


async def _pcm_chunks(
    call: grpc.aio.UnaryStreamCall[tts_pb2.SynthesizeRequest, tts_pb2.SynthesizeResponse],
    first: tts_pb2.SynthesizeResponse | object,
    audio_ids: list[int],
) -> AsyncIterator[np.ndarray]:
    reply = first
    while reply is not grpc.aio.EOF:
        assert isinstance(reply, tts_pb2.SynthesizeResponse)
        audio_ids[0] += len(reply.token_ids)
        if reply.audio.data:
            yield pcm_from_chunk(reply.audio)
        reply = await call.read()


async def _pcm_stream(chunks: AsyncIterator[np.ndarray], _rate: int) -> AsyncIterator[bytes]:
    async for pcm in chunks:
        yield float_to_pcm16(pcm)


async def _wav_stream(chunks: AsyncIterator[np.ndarray], rate: int) -> AsyncIterator[bytes]:
    yield streaming_wav_header(rate)
    async for pcm in chunks:
        yield float_to_pcm16(pcm)


async def _mp3_stream(chunks: AsyncIterator[np.ndarray], rate: int) -> AsyncIterator[bytes]:
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(64)
    encoder.set_in_sample_rate(rate)
    encoder.set_channels(1)
    encoder.set_quality(5)
    encoded = False
    async for pcm in chunks:
        if pcm.size:
            encoded = True
            yield bytes(encoder.encode(float_to_pcm16(pcm)))
    if encoded:  # lameenc refuses to flush an encoder that never encoded ("Not currently
        yield bytes(encoder.flush())  # encoding"): a reply without audio is an empty body


# -- models --------------------------------------------------------------------------------


async def _served_models(state: ControllerState) -> list[str]:
    """The Chat model (and the end-to-end one) as the LLM services name them, and the TTS."""
    names = []
    for client in (state.clients.llm, state.clients.e2e_llm):
        if client is not None:
            info = await client.Info(llm_pb2.InfoRequest(), timeout=10)
            names.append(info.model_name.lower())
    return [*names, TTS_MODEL]


def _model(name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "stepfun"}


@router.get("/models", response_model=None)
async def list_models(request: Request) -> Response:
    try:
        names = await _served_models(_state(request))
    except grpc.aio.AioRpcError as exc:
        return rpc_error_response(exc, "llm")
    return JSONResponse({"object": "list", "data": [_model(name) for name in names]})


@router.get("/models/{name}", response_model=None)
async def get_model(name: str, request: Request) -> Response:
    try:
        names = await _served_models(_state(request))
    except grpc.aio.AioRpcError as exc:
        return rpc_error_response(exc, "llm")
    if name not in names:
        return error_response(ErrorCode.MODEL_NOT_FOUND, f"no model {name!r}")
    return JSONResponse(_model(name))


# -- voices --------------------------------------------------------------------------------


def _voice(voice: tts_pb2.Voice) -> dict[str, object]:
    return {
        "name": voice.name,
        "prompt_text": voice.prompt_text,
        "prompt_seconds": round(voice.prompt_seconds, 3),
        "builtin": voice.builtin,
    }


@router.get("/voices", response_model=None)
async def list_voices(request: Request) -> Response:
    state = _state(request)
    try:
        reply = await state.clients.tts.ListVoices(tts_pb2.ListVoicesRequest(), timeout=10)
    except grpc.aio.AioRpcError as exc:
        return rpc_error_response(exc, "tts")
    return JSONResponse({"voices": [_voice(v) for v in reply.voices]})


@router.post("/voices", response_model=None)
async def register_voice(
    request: Request,
    name: str = Form(..., min_length=1, max_length=64),
    text: str = Form(..., min_length=1, max_length=1000),
    file: UploadFile = File(...),
    overwrite: bool = Form(False),
) -> Response:
    state = _state(request)
    limit = state.settings.limits.max_voice_upload_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        return error_response(ErrorCode.FRAME_TOO_LARGE, f"prompt audio is over {limit} bytes")
    try:
        samples, rate = decode_audio_file(data)
    except AudioError as exc:
        return error_response(exc.code, str(exc))
    register = tts_pb2.RegisterVoiceRequest(
        name=name, prompt_text=text, prompt_audio=_prompt_chunk(samples, rate), overwrite=overwrite
    )
    try:
        voice = await state.clients.tts.RegisterVoice(
            register, timeout=state.settings.rpc_timeout_s
        )
    except grpc.aio.AioRpcError as exc:
        return rpc_error_response(exc, "tts")
    return JSONResponse(_voice(voice), status_code=201)


def _prompt_chunk(samples: np.ndarray, rate: int) -> audio_pb2.AudioChunk:
    """The prompt at its own rate: the TTS derives its 16 kHz and 22.05 kHz features from the
    original, as upstream does. Rates the protocol does not take go to 16 kHz first."""
    if not MIN_SAMPLE_RATE_HZ <= rate <= MAX_SAMPLE_RATE_HZ:
        samples, rate = resample_sinc(samples, rate, 16_000), 16_000
    return encode_chunk(samples, rate, PCM_S16LE)


@router.delete("/voices/{name}", response_model=None)
async def delete_voice(name: str, request: Request) -> Response:
    state = _state(request)
    try:
        await state.clients.tts.DeleteVoice(tts_pb2.DeleteVoiceRequest(name=name), timeout=10)
    except grpc.aio.AioRpcError as exc:
        return rpc_error_response(exc, "tts")
    return Response(status_code=204)
