"""REST: POST /v1/audio/speech (OpenAI-compatible) and /v1/voices."""

from __future__ import annotations

import io
import struct
from collections.abc import AsyncIterator

import grpc
import lameenc
import numpy as np
import soundfile as sf
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from stepaudio.serving.v1 import audio_pb2, tts_pb2

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
from services.controller.protocol import SpeechRequest
from services.controller.state import ControllerState
from services.controller.turn import pcm_from_chunk

router = APIRouter(prefix="/v1")
NATIVE_RATE_HZ = 22_050
MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac", "mp3": "audio/mpeg"}


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
    call = state.clients.tts.Synthesize(
        tts_pb2.SynthesizeRequest(
            text=text, voice=body.voice or state.settings.turn.voice, options=options
        ),
        timeout=state.settings.rpc_timeout_s,
    )
    try:  # the first reply decides the status code (unknown voice, overload...)
        first = await call.read()
    except grpc.aio.AioRpcError as exc:
        return rpc_error_response(exc, "tts")
    chunks = _pcm_chunks(call, first)
    media = MEDIA_TYPES[body.response_format]
    if body.response_format == "flac":
        try:
            pcm = np.concatenate([c async for c in chunks] or [np.zeros(0, np.float32)])
        except grpc.aio.AioRpcError as exc:
            return rpc_error_response(exc, "tts")
        buffer = io.BytesIO()
        sf.write(buffer, pcm, rate, format="FLAC", subtype="PCM_16")
        return Response(buffer.getvalue(), media_type=media)
    encode = {"wav": _wav_stream, "pcm": _pcm_stream, "mp3": _mp3_stream}[body.response_format]
    return StreamingResponse(encode(chunks, rate), media_type=media)


async def _pcm_chunks(
    call: grpc.aio.UnaryStreamCall, first: tts_pb2.SynthesizeResponse | object
) -> AsyncIterator[np.ndarray]:
    reply = first
    while reply is not grpc.aio.EOF:
        assert isinstance(reply, tts_pb2.SynthesizeResponse)
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
    async for pcm in chunks:
        yield bytes(encoder.encode(float_to_pcm16(pcm)))
    yield bytes(encoder.flush())


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
