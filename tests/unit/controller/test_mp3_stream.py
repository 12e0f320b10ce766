"""The REST speech endpoint's MP3 stream: a reply without audio is an empty body, never an
exception mid-response (found by the OpenAPI fuzzer: lameenc cannot flush an encoder that
never encoded)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np

from services.controller.api.rest import _mp3_stream

RATE = 22050


async def chunks_of(*arrays: np.ndarray) -> AsyncIterator[np.ndarray]:
    for array in arrays:
        yield array


async def body(*arrays: np.ndarray) -> bytes:
    return b"".join([piece async for piece in _mp3_stream(chunks_of(*arrays), RATE)])


async def test_no_audio_is_an_empty_body() -> None:
    assert await body() == b""
    assert await body(np.zeros(0, np.float32), np.zeros(0, np.float32)) == b""


async def test_audio_after_an_empty_chunk_is_encoded_and_flushed() -> None:
    tone = np.sin(2 * np.pi * 440 * np.arange(RATE // 2) / RATE).astype(np.float32) * 0.3
    data = await body(np.zeros(0, np.float32), tone)
    # MPEG audio frames start with an 11-bit sync word; half a second at 64 kbit/s ≈ 4 KB
    assert data[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xe3") and len(data) > 2000
