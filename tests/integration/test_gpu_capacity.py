"""The one-GPU capacity run's CPU dry run: the same command, the tiny pack and torch engines.

What the device calls rely on: the stack starts in its own process session through
``serve --profile`` (services one after another), outlives the call that started it, a second
call continues the sweep on that same stack, the report and its files are written after every
point, and the stack is stopped once every point is measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from loadtests.gpu.capacity import EXIT_MORE, alive
from tests.helpers.waits import eventually

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CALL_TIMEOUT_S = 280


def capacity_call(work: Path, pack: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["--cpu", "--work", str(work), "--model-dir", str(pack), "--out", str(out),
            "--sessions", "1,2", "--turns", "1", "--duration-s", "5", "--turn-timeout-s", "60",
            "--workers", "1", "--warmup-sessions", "0", "--reply-tokens", "16", *extra]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "loadtests.gpu.capacity", *args],
        cwd=REPO, capture_output=True, text=True, timeout=CALL_TIMEOUT_S,
    )  # fmt: skip


def readyz(url: str) -> int:
    with urllib.request.urlopen(f"{url}/readyz", timeout=5) as reply:
        return int(reply.status)


def test_dry_run_starts_once_resumes_and_stops(tiny_pack: Path, tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    first = capacity_call(work, tiny_pack, out, "--points-per-call", "1")
    state = json.loads((work / "stack.json").read_text())
    try:
        assert first.returncode == EXIT_MORE, first.stdout + first.stderr
        # the caller is gone; the stack it started is not (its own process session)
        assert alive(state["pid"]) and os.getsid(state["pid"]) == state["pid"]
        assert readyz(state["url"]) == 200
        report = json.loads((out / "capacity.json").read_text())
        assert [p["sessions"] for p in report["points"]] == [1]
        assert report["not_run"] == [2] and report["status"] == "more points to run"
        assert report["setup"]["profile"] == "cpu" and report["setup"]["ready_after_s"] > 0
        # one service after another, each SERVING before the next started
        started = [entry.split()[0] for entry in report["setup"]["service_start"]]
        assert started == ["vad", "tokenizer", "llm", "tts"]
        assert {"capacity.png", "capacity.md", "logs.tar.gz"} <= {p.name for p in out.iterdir()}

        second = capacity_call(work, tiny_pack, out)
        assert second.returncode == 0, second.stdout + second.stderr
    finally:
        subprocess.run([sys.executable, "-m", "loadtests.gpu.capacity", "--work", str(work),
                        "--stop"], cwd=REPO, timeout=120, check=False)  # fmt: skip
    report = json.loads((out / "capacity.json").read_text())
    assert [p["sessions"] for p in report["points"]] == [1, 2]
    assert report["not_run"] == [] and report["status"] == "done"
    assert all(report["checks"].values())
    for point in report["points"]:
        assert point["admitted"] == point["sessions"] and point["refused"] == 0
        assert point["turns"]["failed"] == 0 and not point["errors"]
        # the host's CPU per service over the point: every service's process tree was found
        cores = point["cpu_cores"]
        assert {"controller", "vad", "tokenizer", "llm", "tts", "loadgen"} <= set(cores)
        assert cores["controller"] > 0 and cores["loadgen"] > 0 and cores["host"] > 0
    assert len(report["turns"]) == 3  # one per session and point
    # one stack for both calls: started once, with every service started in turn
    serve_log = (work / "serve.log").read_text()
    assert serve_log.count("starting the stack") == 1
    assert "profile cpu: CONTROLLER_LIMITS__MAX_SESSIONS=2" in serve_log
    asyncio.run(eventually(lambda: not alive(state["pid"]), 30, "the stack stopped at the end"))
    # a call after the last point starts nothing and leaves the report as it was
    third = capacity_call(work, tiny_pack, out)
    assert third.returncode == 0 and "measured already" in third.stdout, third.stdout
    assert not (work / "stack.json").exists()
    assert json.loads((out / "capacity.json").read_text())["points"] == report["points"]
