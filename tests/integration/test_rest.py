"""REST synthesis and voices on the in-process stack."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from services.common.audio import encode_wav
from services.models.tiny import ASSETS
from tests.helpers.redis import RedisServer
from tests.helpers.stack import running_stack

pytestmark = pytest.mark.integration


@pytest.fixture
async def http(
    tiny_pack: Path, redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        running_stack(tiny_pack, redis_server.url, tmp_path) as stack,
        httpx.AsyncClient(base_url=stack.url, timeout=120) as client,
    ):
        yield client


def speech(text: str, **extra: object) -> dict[str, object]:
    return {"model": "step-audio-tts-3b", "input": text, "seed": 3, **extra}


async def test_speech_returns_a_valid_streamed_wav(http: httpx.AsyncClient) -> None:
    reply = await http.post("/v1/audio/speech", json=speech("Hello there, how are you?"))
    assert reply.status_code == 200 and reply.headers["content-type"] == "audio/wav"
    audio, rate = sf.read(io.BytesIO(reply.content), dtype="float32")
    assert rate == 22_050 and audio.size > 0 and np.isfinite(audio).all()
    again = await http.post("/v1/audio/speech", json=speech("Hello there, how are you?"))
    assert again.content == reply.content  # seeded: the same audio


@pytest.mark.parametrize(("fmt", "media"), [("pcm", "audio/pcm"), ("mp3", "audio/mpeg"),
                                            ("flac", "audio/flac")])  # fmt: skip
async def test_speech_formats(http: httpx.AsyncClient, fmt: str, media: str) -> None:
    reply = await http.post("/v1/audio/speech", json=speech("Hello.", response_format=fmt))
    assert reply.status_code == 200 and reply.headers["content-type"] == media
    assert len(reply.content) > 0
    if fmt == "flac":
        audio, rate = sf.read(io.BytesIO(reply.content))
        assert rate == 22_050 and audio.size > 0


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (speech("  "), 400, "empty_text"),
        (speech("x" * 2001), 413, "text_too_long"),
        (speech("Hello", voice="nobody"), 400, "unknown_voice"),
        (speech("Hello", sample_rate=44_100), 400, "unsupported_sample_rate"),
        ({"input": "Hello", "speed": 9}, 400, "invalid_argument"),
        ({"voice": "Tingting"}, 400, "invalid_argument"),
    ],
)
async def test_bad_speech_requests_get_named_errors(
    http: httpx.AsyncClient, body: dict, status: int, code: str
) -> None:
    reply = await http.post("/v1/audio/speech", json=body)
    assert reply.status_code == status
    assert reply.json()["error"]["code"] == code


async def test_invalid_json_body(http: httpx.AsyncClient) -> None:
    reply = await http.post(
        "/v1/audio/speech", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_json"


async def test_voice_clone_round_trip(http: httpx.AsyncClient) -> None:
    prompt = (ASSETS / "default_voice_prompt.wav").read_bytes()
    files = {"file": ("prompt.wav", prompt, "audio/wav")}
    data = {"name": "Alice", "text": "This is the default voice of the tiny test pack."}
    created = await http.post("/v1/voices", data=data, files=files)
    assert created.status_code == 201 and created.json()["name"] == "Alice"
    names = [v["name"] for v in (await http.get("/v1/voices")).json()["voices"]]
    assert "Alice" in names and "Tingting" in names
    spoken = await http.post("/v1/audio/speech", json=speech("Hi.", voice="Alice"))
    assert spoken.status_code == 200
    assert (await http.delete("/v1/voices/Alice")).status_code == 204
    gone = await http.post("/v1/audio/speech", json=speech("Hi.", voice="Alice"))
    assert gone.json()["error"]["code"] == "unknown_voice"


async def test_bad_voice_uploads(http: httpx.AsyncClient) -> None:
    silent = encode_wav(np.zeros(32_000, dtype=np.float32), 16_000)
    short = encode_wav(np.random.default_rng(0).normal(0, 0.1, 160).astype(np.float32), 16_000)
    cases = [(silent, "invalid_audio"), (short, "invalid_audio"), (b"not audio", "invalid_audio")]
    for content, code in cases:
        files = {"file": ("prompt.wav", content, "audio/wav")}
        reply = await http.post("/v1/voices", data={"name": "Bob", "text": "hi"}, files=files)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["code"] == code
    assert (await http.delete("/v1/voices/Tingting")).status_code == 400  # built-in
