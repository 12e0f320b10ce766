"""The load generator's parts: seeded plans, saved clips, percentiles, accounting, checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from loadtests import load_client as wire
from loadtests.load_report import (
    SessionResult,
    TurnRecord,
    checks,
    largest_within_target,
    stats,
    summarize_point,
)
from loadtests.realtime_load import (
    CLIPS,
    Clip,
    LoadOptions,
    TurnProgress,
    plan_session,
    render_all,
    speak,
)


def test_the_plan_is_seeded_and_follows_the_rates() -> None:
    options = LoadOptions(turns=2000, pause_rate=0.3, barge_in_rate=0.2, ramp_s=2.0)
    plan = plan_session(0, 8, options)
    assert plan == plan_session(0, 8, options)
    assert plan != plan_session(1, 8, options) and plan != plan_session(0, 16, options)
    assert 0 <= plan.start_s <= 2.0
    turns = plan.turns
    assert 0.26 < np.mean([t.clip.paused for t in turns]) < 0.34
    assert 0.17 < np.mean([t.barge_in for t in turns]) < 0.23
    assert all(0.3 <= t.think_s <= 1.0 and 0.2 <= t.barge_in_after_s <= 0.8 for t in turns)
    assert {t.clip.parts for t in turns} == set(CLIPS)


def test_stats_are_numpy_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    result = stats(values)
    assert result["n"] == 100 and result["max"] == 100.0
    for q in (50, 95, 99):
        assert result[f"p{q}"] == round(float(np.percentile(values, q)), 1)
    assert stats([]) == {"n": 0, "p50": None, "p95": None, "p99": None, "mean": None, "max": None}


def turn(status: str, errors: list[str], first_audio_ms: float | None) -> TurnRecord:
    record = TurnRecord(0, 0, "clip", False, False, status=status, errors=errors)
    record.client_first_audio_ms = record.speech_end_to_audio_ms = first_audio_ms
    record.timings_ms = {"first_audio": first_audio_ms} if first_audio_ms is not None else {}
    return record


def test_a_point_accounts_for_every_session_and_turn() -> None:
    admitted = SessionResult(0, turns=[turn("completed", [], 300.0), turn("", ["timeout"], None)])
    failed = SessionResult(1, turns=[turn("failed", ["llm_unavailable"], None)])
    refused = SessionResult(2, refused="http_403")
    point = summarize_point(3, [admitted, failed, refused], 10.0)
    assert (point["admitted"], point["refused"], point["refusals"]) == (2, 1, {"http_403": 1})
    assert point["turns"]["run"] == 3
    assert (point["turns"]["answered"], point["turns"]["failed"]) == (1, 2)
    assert point["errors"] == {"llm_unavailable": 1, "timeout": 1}
    assert point["latency_ms"]["client_first_audio"]["n"] == 1
    assert point["stages_ms"]["first_audio"]["p50"] == 300.0
    assert all(checks([point]).values())


def test_the_checks_catch_an_inconsistent_report() -> None:
    point = summarize_point(1, [SessionResult(0, turns=[turn("", [], None)])], 1.0)
    assert checks([point])["failed_turns_have_errors"] is False
    point["latency_ms"]["client_first_audio"] = {"n": 3, "p50": 5.0, "p95": 4.0, "p99": 6.0}
    assert checks([point])["percentiles_ordered"] is False
    point["admitted"] = 0
    assert checks([point])["sessions_accounted"] is False


def test_server_events_map_to_protocol_neutral_kinds() -> None:
    done = {"id": "r", "status": "completed", "timings_ms": {"first_audio": 10}}
    events = {
        "input_audio_buffer.speech_stopped": ({}, wire.SPEECH_STOPPED),
        "response.audio.delta": ({"delta": "AAAA", "response_id": "r"}, wire.AUDIO),
        "response.done": ({"response": done}, wire.DONE),
        "error": ({"error": {"code": "overloaded"}}, wire.ERROR),
        "conversation.item.created": ({"item": {}}, wire.OTHER),
    }
    for kind, (fields, expected) in events.items():
        assert wire.classify({"type": kind, **fields})[0] == expected, kind
    assert wire.classify({"type": "response.done", "response": done})[1] == done


def test_clips_are_saved_to_a_folder_and_read_from_it(tmp_path: Path) -> None:
    clip = Clip(CLIPS[0], True, 0.35)
    made = speak(clip, tmp_path)  # espeak-ng, then saved as a WAV
    (saved,) = tmp_path.glob("*.wav")
    pcm, rate = sf.read(saved, dtype="int16")
    assert rate == 16_000 and pcm.tobytes() == made
    other = (np.arange(1600) % 200 - 100).astype(np.int16)  # not speech: proves the file is read
    sf.write(saved, other, 16_000, subtype="PCM_16")
    speak.cache_clear()
    assert speak(clip, tmp_path) == other.tobytes()
    assert render_all(tmp_path, 0.35) == 2 * len(CLIPS)
    assert len(list(tmp_path.glob("*.wav"))) == 2 * len(CLIPS)


def test_a_turn_takes_the_first_reply_created_after_its_speech_ended() -> None:
    record, progress = turn("", [], None), TurnProgress(speech_end=10.0)
    # the server ended a turn inside the utterance; the rest of it barged into that reply
    before = [
        wire.Received(9.2, wire.SPEECH_STOPPED),
        wire.Received(9.5, wire.REPLY_STARTED, {"id": "early"}),
        wire.Received(9.6, wire.AUDIO, {"bytes": 960}),
        wire.Received(9.7, wire.DONE, {"id": "early", "status": "cancelled"}),
    ]
    assert not any(progress.observe(record, item) for item in before)
    assert record.replies_inside_speech == ["cancelled"]
    assert progress.observe(record, wire.Received(10.7, wire.SPEECH_STOPPED)) is False
    assert progress.observe(record, wire.Received(10.8, wire.REPLY_STARTED, {"id": "r"})) is False
    assert progress.observe(record, wire.Received(11.0, wire.AUDIO, {"bytes": 960})) is True
    assert progress.observe(record, wire.Received(11.1, wire.AUDIO, {"bytes": 960})) is False
    assert record.client_first_audio_ms == 300.0 and record.speech_end_to_audio_ms == 1000.0
    assert progress.is_mine({"id": "r"}) and not progress.is_mine({"id": "early"})


def test_the_capacity_figure_is_the_largest_clean_point_within_the_target() -> None:
    def point(sessions: int, first_audio_ms: list[float], errors: list[str]) -> dict:
        turns = [
            turn("completed", errors if i == 0 else [], ms) for i, ms in enumerate(first_audio_ms)
        ]
        return summarize_point(sessions, [SessionResult(0, turns=turns)], 1.0)

    fast, slow = [200.0, 250.0, 300.0], [200.0, 300.0, 900.0]
    points = [point(1, fast, []), point(8, fast, []), point(32, slow, []), point(64, fast, ["x"])]
    assert largest_within_target(points) == 8
    assert largest_within_target(points[2:]) is None
