"""The realtime load generator's CPU smoke run: a few sessions on the tiny pack, bounded time.

The generator runs as its own process (``python -m loadtests.realtime_load --url``), as it
would against a deployed stack, so its timing is not stalled by the server sharing its loop.
The controller admits two sessions, so the three-session point must report one refusal.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.redis import RedisServer
from tests.helpers.stack import running_stack

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TURNS = 2
RUN_TIMEOUT_S = 150
RESPONSES = "stepaudio_controller_responses_total"


async def run_loadgen(url: str, out: Path) -> str:
    args = ["--url", url, "--sessions", "1,3", "--turns", str(TURNS), "--seed", "3",
            "--pause-rate", "0.5", "--barge-in-rate", "0.5", "--listen-s", "0.5",
            "--ramp-s", "0.5", "--duration-s", "30", "--reply-tokens", "64",
            "--out", str(out)]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtests.realtime_load", *args,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, output.decode()
    return output.decode()


def assert_stats(stats: dict[str, Any], values: list[float]) -> None:
    assert stats["n"] == len(values)
    if values:
        assert min(values) <= stats["p50"] <= stats["p95"] <= stats["p99"] <= stats["max"]
        assert stats["max"] == max(values)
    else:
        assert stats["p50"] is None and stats["p99"] is None


async def test_smoke_run_writes_a_complete_consistent_report(
    tiny_pack: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    controller = {"limits": {"max_sessions": 2}, "turn": {"seed": 7}}
    async with running_stack(tiny_pack, redis_server.url, tmp_path, controller=controller) as stack:
        output = await run_loadgen(stack.url, tmp_path / "report")
        responses = {
            status: stack.metric("controller", RESPONSES, status=status)
            for status in ("completed", "cancelled", "failed")
        }
    report = json.loads((tmp_path / "report" / "realtime_load.json").read_text())
    png = (tmp_path / "report" / "realtime_load.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert report["checks"] == dict.fromkeys(report["checks"], True) and report["checks"]
    assert [p["sessions"] for p in report["points"]] == [1, 3]
    one, three = report["points"]
    assert (one["admitted"], one["refused"]) == (1, 0)
    assert (three["admitted"], three["refused"]) == (2, 1)  # max_sessions = 2
    assert three["refusals"] == {"close_1013": 1}  # accepted, then closed: try again later

    turns = report["turns"]
    for point in report["points"]:
        mine = [t for t in turns if t["sessions"] == point["sessions"]]
        assert point["admitted"] <= len(mine) <= point["admitted"] * TURNS
        for turn in mine:  # every turn answered, or its error counted
            assert turn["answered"] == (turn["status"] in ("completed", "cancelled"))
            assert turn["answered"] or turn["errors"], turn
        counts = point["turns"]
        assert counts["run"] == len(mine)
        assert counts["answered"] == sum(t["answered"] for t in mine)
        assert counts["answered"] + counts["failed"] == counts["run"]
        assert counts["barged_in"] == sum(t["barged_in"] for t in mine)
        assert point["errors"] == dict(Counter(e for t in mine for e in t["errors"]))
        statuses = Counter(t["status"] for t in mine if t["status"])
        statuses.update(s for t in mine for s in t["replies_inside_speech"])
        assert point["server"]["responses"] == {k: float(v) for k, v in statuses.items()}
        assert point["replies_not_seen"] == 0
        first_audio = [t["client_first_audio_ms"] for t in mine if t["client_first_audio_ms"]]
        assert_stats(point["latency_ms"]["client_first_audio"], first_audio)
        for stage, stats in point["stages_ms"].items():
            answered = [t["timings_ms"] for t in mine if t["answered"]]
            assert_stats(stats, [timings[stage] for timings in answered if stage in timings])
    # the server sent exactly the replies the client counted
    by_status = Counter(t["status"] for t in turns if t["status"])
    by_status.update(s for t in turns for s in t["replies_inside_speech"])
    assert responses == {s: float(by_status.get(s, 0)) for s in responses}
    assert sum(t["answered"] and t["client_first_audio_ms"] is not None for t in turns) > 0
    assert any(t["paused"] for t in turns)  # seed 3 draws both kinds of turn
    assert report["largest_sessions_within_target"] in (None, 1)  # 3 had a refusal
    assert "| 3 | 2 / 1 |" in output  # the printed table
