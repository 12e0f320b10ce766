"""The realtime load generator's records and report: per-turn records, per-point summaries
(p50/p95/p99, errors, admissions), the report's own consistency checks, the table and the plot.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

STAGES = (
    "speculation_started",
    "llm_first_token",
    "first_clause",
    "tts_first_chunk",
    "first_audio",
)
PERCENTILES = (50, 95, 99)
TARGET_MS = 400.0  # the p95 target of issue 18, drawn on the plot


@dataclass
class TurnRecord:
    session: int
    turn: int
    clip: str
    paused: bool
    barge_in_planned: bool
    status: str = ""  # response.done status; "" when no response.done came
    speculative: bool = False
    barged_in: bool = False  # the reply was cancelled by the user speaking over it
    cut: bool = False  # listened to for --listen-s, then response.cancel
    client_first_audio_ms: float | None = None  # speech_stopped received → first audio
    speech_end_to_audio_ms: float | None = None  # last speech frame sent → first audio
    timings_ms: dict[str, float] = field(default_factory=dict)
    audio_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    replies_inside_speech: list[str] = field(default_factory=list)  # their statuses

    @property
    def answered(self) -> bool:
        return self.status in ("completed", "cancelled")


@dataclass
class SessionResult:
    index: int
    refused: str = ""  # why the server did not admit it ("" = admitted)
    errors: list[str] = field(default_factory=list)  # outside any turn
    turns: list[TurnRecord] = field(default_factory=list)
    mic_max_lag_ms: float = 0.0


# -- summaries -------------------------------------------------------------------------------


def stats(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, **{f"p{p}": None for p in PERCENTILES}, "mean": None, "max": None}
    points = np.percentile(np.asarray(values, dtype=np.float64), PERCENTILES)
    return {
        "n": len(values),
        **{f"p{p}": round(float(v), 1) for p, v in zip(PERCENTILES, points, strict=True)},
        "mean": round(float(np.mean(values)), 1),
        "max": round(float(np.max(values)), 1),
    }


def summarize_point(sessions: int, results: list[SessionResult], wall_s: float) -> dict:
    turns = [t for r in results for t in r.turns]
    errors = Counter(e for t in turns for e in t.errors)
    errors.update(e for r in results for e in r.errors)
    refusals = Counter(r.refused for r in results if r.refused)
    latency = {
        "client_first_audio": stats(
            [t.client_first_audio_ms for t in turns if t.client_first_audio_ms is not None]
        ),
        "speech_end_to_audio": stats(
            [t.speech_end_to_audio_ms for t in turns if t.speech_end_to_audio_ms is not None]
        ),
    }
    stages = {
        s: stats([t.timings_ms[s] for t in turns if t.answered and s in t.timings_ms])
        for s in STAGES
    }
    lags = [r.mic_max_lag_ms for r in results if not r.refused]
    return {
        "sessions": sessions,
        "admitted": sum(not r.refused for r in results),
        "refused": sum(bool(r.refused) for r in results),
        "refusals": dict(refusals),
        "turns": {
            "run": len(turns),
            "answered": sum(t.answered for t in turns),
            "failed": sum(not t.answered for t in turns),
            "completed": sum(t.status == "completed" for t in turns),
            "cancelled": sum(t.status == "cancelled" for t in turns),
            "barged_in": sum(t.barged_in for t in turns),
            "cut": sum(t.cut for t in turns),
            "paused": sum(t.paused for t in turns),
            "speculative": sum(t.speculative for t in turns),
            "without_audio": sum(t.answered and t.speech_end_to_audio_ms is None for t in turns),
            "failed_without_error": sum(not t.answered and not t.errors for t in turns),
            "replies_inside_speech": sum(len(t.replies_inside_speech) for t in turns),
        },
        "errors": dict(sorted(errors.items())),
        "latency_ms": latency,
        "stages_ms": stages,
        "client_max_lag_ms": max(lags) if lags else 0.0,
        "wall_s": round(wall_s, 1),
    }


def checks(points: list[dict[str, Any]]) -> dict[str, bool]:
    """The report's own consistency: what the smoke test asserts, recorded with the numbers."""

    def ordered(s: dict[str, Any]) -> bool:
        values = [s[f"p{p}"] for p in PERCENTILES]
        return s["n"] == 0 or all(a <= b for a, b in zip(values, values[1:], strict=False))

    return {
        "sessions_accounted": all(p["admitted"] + p["refused"] == p["sessions"] for p in points),
        "turns_accounted": all(
            p["turns"]["answered"] + p["turns"]["failed"] == p["turns"]["run"] for p in points
        ),
        "failed_turns_have_errors": all(p["turns"]["failed_without_error"] == 0 for p in points),
        "percentiles_ordered": all(
            ordered(s)
            for p in points
            for s in (*p["latency_ms"].values(), *p["stages_ms"].values())
        ),
    }


def largest_within_target(points: list[dict[str, Any]], target_ms: float = TARGET_MS) -> int | None:
    """The most sessions whose end of turn → first audio p95 is within the target with no
    errors and no refusals (issue 18's capacity figure); None when no point qualifies."""
    good = [
        p["sessions"]
        for p in points
        if p["latency_ms"]["client_first_audio"]["p95"] is not None
        and p["latency_ms"]["client_first_audio"]["p95"] <= target_ms
        and not p["errors"]
        and not p["refused"]
        and not p["turns"]["failed"]
    ]
    return max(good) if good else None


def git_commit() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip()
    return ""


def plot(points: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    x = [p["sessions"] for p in points]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 8), sharex=True)
    for q, style in zip(PERCENTILES, ("o-", "s-", "^-"), strict=True):
        y = [p["latency_ms"]["client_first_audio"][f"p{q}"] for p in points]
        top.plot(x, [np.nan if v is None else v for v in y], style, label=f"p{q}")
    top.axhline(TARGET_MS, color="grey", linestyle="--", label=f"{TARGET_MS:.0f} ms target")
    for p in points:
        errors = sum(p["errors"].values())
        if p["refused"] or errors:
            label = f"{p['refused']} refused, {errors} errors"
            top.annotate(label, (p["sessions"], TARGET_MS), fontsize=8, rotation=90, va="bottom")
    top.set_ylabel("speech_stopped → first audio (ms, client)")
    top.set_title(title)
    top.legend()
    for stage in ("llm_first_token", "first_clause", "tts_first_chunk", "first_audio"):
        y = [p["stages_ms"][stage]["p50"] for p in points]
        bottom.plot(x, [np.nan if v is None else v for v in y], "o-", label=stage)
    bottom.set_ylabel("response.done stage, p50 (ms from end of turn)")
    bottom.set_xlabel("concurrent sessions")
    bottom.legend()
    if len(x) > 1 and max(x) / max(1, min(x)) >= 8:
        bottom.set_xscale("log", base=2)
    bottom.set_xticks(x, [str(n) for n in x])
    bottom.minorticks_off()
    for axis in (top, bottom):
        axis.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table_row(p: dict[str, Any]) -> str:
    lat = p["latency_ms"]["client_first_audio"]
    cells = [f"{lat[f'p{q}']:.0f}" if lat[f"p{q}"] is not None else "–" for q in PERCENTILES]
    stages = [p["stages_ms"][s]["p50"] for s in ("llm_first_token", "tts_first_chunk")]
    errors = ", ".join(f"{k} {v}" for k, v in p["errors"].items()) or "none"
    return (
        f"| {p['sessions']} | {p['admitted']} / {p['refused']} | "
        f"{p['turns']['answered']} / {p['turns']['failed']} | "
        + " | ".join(cells)
        + " | "
        + " | ".join("–" if s is None else f"{s:.0f}" for s in stages)
        + f" | {errors} | {p['client_max_lag_ms']:.0f} |"
    )


TABLE_HEADER = (
    "| sessions | admitted / refused | turns answered / failed | first audio p50 | p95 | p99 "
    "| llm_first_token p50 | tts_first_chunk p50 | errors | client lag max (ms) |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)
