"""Clause splitting and the response sink (holding, pacing, what counts as sent)."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from services.controller.turn import ClauseSplitter, ResponseProgress, ResponseSink


def test_clauses_are_cut_as_soon_as_complete() -> None:
    splitter = ClauseSplitter()
    assert splitter.push("Hello") == []
    assert splitter.push(" there, how") == ["Hello there,"]
    assert splitter.push(" are you? Fine.") == ["how are you?"]
    assert splitter.push("") == []
    assert splitter.flush() == ["Fine."]
    cjk = ClauseSplitter()
    assert cjk.push("你好。今天天气") == ["你好。"]
    assert cjk.flush() == ["今天天气"]


def test_decimal_points_do_not_cut_and_long_text_is_cut() -> None:
    splitter = ClauseSplitter()
    assert splitter.push("It costs 3.5 dollars") == []
    words = "word " * 40
    clauses = splitter.push(words)
    assert clauses and all(len(c) <= 120 for c in clauses)


async def test_held_sink_sends_nothing_until_released() -> None:
    sent: list[tuple[object, str | None]] = []

    async def send(event: object, response_id: str | None) -> None:
        sent.append((event, response_id))

    progress = ResponseProgress()
    sink = ResponseSink(
        send, "r1", output_rate_hz=16000, binary_audio=True, lead_s=10.0, held=True,
        progress=progress,
    )  # fmt: skip
    await sink.text_delta("hi")
    await sink.audio(np.zeros(1600, dtype=np.float32), "Hello.")
    assert sent == [] and not sink.released.is_set()
    assert progress.spoken_clauses == ["Hello."]
    await sink.release()
    assert len(sent) == 2 and isinstance(sent[1][0], bytes) and sink.released.is_set()
    assert progress.audio_seconds_sent == 0.1


async def test_live_audio_is_paced_to_real_time_plus_lead() -> None:
    async def send(event: object, response_id: str | None) -> None:
        return None

    sink = ResponseSink(
        send, "r2", output_rate_hz=16000, binary_audio=False, lead_s=0.1, held=False,
        progress=ResponseProgress(),
    )  # fmt: skip
    started = time.monotonic()
    for _ in range(4):  # 4 × 100 ms of audio with a 100 ms lead: ≈ 200 ms of waiting
        await sink.audio(np.zeros(1600, dtype=np.float32), None)
    elapsed = time.monotonic() - started
    assert 0.15 <= elapsed < 1.0
    await asyncio.sleep(0)
