"""The whole stack on one GPU host and its capacity curve (issue 18, item 5).

    python -m loadtests.gpu.capacity [--sessions 1,8,32,64,128,192,256] [--budget-s 540]
        [--work /tmp/gpustack] [--out $OUT] [--chat-layers 4] [--cpu]

On the device machine run it through ``loadtests/gpu/capacity.sh`` (installs the carried
wheels, redis-server and clips first; docs/gpu-results.md has the call sequence). Each call:

1. writes the model pack once (``stepaudio models dummy``: the released sizes, a Chat stand-in
   at Chat width with ``--chat-layers`` layers; ``--cpu``: the tiny pack);
2. starts the stack once, in its own process session so that it outlives the call:
   ``python -m services.cli serve --profile gpu`` (``cpu`` with ``--cpu``), and waits for
   ``/readyz``;
3. runs the sweep points not yet measured (``loadtests.realtime_load``'s scenario, one point at
   a time against the running stack) while the next point still fits in ``--budget-s``;
4. after every point writes ``capacity.json`` (the realtime-load report plus setup, GPU use per
   point, points not yet run), ``capacity.png``, ``capacity.md`` (table rows) and
   ``logs.tar.gz`` (every service's log) to ``--out``.

The same command again continues where the last one stopped (the work folder keeps the pack,
the stack's address and the points measured). Exit code: 0 all points measured and the
report's checks hold, 3 points remain (call again), 1 a check failed, 2 the stack did not start.
``--cpu`` is the dry run on a CPU host (tiny pack, torch engines, same profile limits).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from loadtests.gpu.proc_profile import ProcessProfile
from loadtests.load_report import TABLE_HEADER, table_row
from loadtests.load_report import checks as checks_of
from loadtests.realtime_load import LoadOptions, build_report, sweep, write_report
from services.cli.stack import free_port

DEFAULT_POINTS = "1,8,32,64,128,192,256"
REPORT = "capacity.json"
PLOT = "capacity.png"
TABLE = "capacity.md"
LOGS = "logs.tar.gz"
STATE = "stack.json"  # the running stack: serve's pid (its process group) and the URL
READY_MARGIN_S = 5.0  # leave this much of the budget for writing the outputs
POINT_SLACK_S = 10.0  # settle + summaries beyond the scenario's own worst case
EXIT_MORE = 3
LOG_TAIL_BYTES = 8 * 2**20  # per log in logs.tar.gz (text compresses ~10x)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--sessions", default=DEFAULT_POINTS, help="sweep points, comma-separated")
    add("--budget-s", type=float, default=550.0, help="this call's time, from $GPUSTACK_CALL_START "
        "if set: no point starts that could end after it (the device tool allows 600 s a "
        "command)")  # fmt: skip
    add("--work", type=Path, default=Path("/tmp/gpustack"), help="pack, stack, partial report")
    add("--out", type=Path, help="outputs (default: $OUT, else WORK/out)")
    add("--cpu", action="store_true", help="dry run: tiny pack, torch engines on the CPU")
    add("--chat-layers", type=int, default=4, help="layers of the Chat stand-in (Chat width)")
    add("--model-dir", type=Path, help="a pack already written (default: WORK/pack)")
    add("--turns", type=int, default=3, help="turns per session")
    add("--duration-s", type=float, default=18.0, help="per point: no new turn after this")
    add("--turn-timeout-s", type=float, default=20.0, help="end of speech → response.done")
    add("--listen-s", type=float, default=4.0, help="reply audio listened to before cancelling")
    add("--reply-tokens", type=int, default=48, help="max_response_output_tokens per reply")
    add("--workers", type=int, default=4, help="load-generator processes")
    add("--warmup-sessions", type=int, default=4,
        help="one unreported point of this many sessions before the first (0: none)")  # fmt: skip
    add("--points-per-call", type=int, default=0, help="at most this many points (0: any)")
    add("--clips-dir", type=Path, help="rendered clips (a host without espeak-ng)")
    add("--seed", type=int, default=7)
    add("--prepare-only", action="store_true", help="write the pack and exit (a call of its own)")
    add("--stop", action="store_true", help="stop the running stack and exit")
    add("--keep-running", action="store_true", help="leave the stack up when every point is done")
    return parser.parse_args(argv)


# -- the pack -----------------------------------------------------------------------------------


def ensure_pack(args: argparse.Namespace, setup: dict[str, Any]) -> Path:
    if args.model_dir is not None:
        return args.model_dir
    pack = args.work / ("tiny-pack" if args.cpu else f"pack-chat{args.chat_layers}")
    done = pack / ".written"
    if done.is_file():
        return pack
    if pack.exists():
        shutil.rmtree(pack)  # a write cut off by a previous call's end
    command = [sys.executable, "-m", "services.cli", "models"]
    command += ["tiny", "--out", str(pack)] if args.cpu else [
        "dummy", "--out", str(pack), "--chat-layers", str(args.chat_layers)]  # fmt: skip
    started = time.monotonic()
    print(f"writing the model pack: {' '.join(command[2:])}", flush=True)
    subprocess.run(command, check=True)
    setup["pack_write_s"] = round(time.monotonic() - started, 1)
    done.write_text("ok\n")
    return pack


# -- the stack ----------------------------------------------------------------------------------


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # an exited process not yet reaped (our child, or one whose reaper is slow) is not alive
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def read_state(work: Path) -> dict[str, Any] | None:
    path = work / STATE
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    return state if alive(int(state["pid"])) else None


def start_stack(args: argparse.Namespace, pack: Path, max_sessions: int) -> dict[str, Any]:
    """``serve --profile`` in a new process session: it outlives this call (the device tool
    ends a command's processes except those that started their own session)."""
    port = free_port()
    stack_dir = args.work / "stack"
    command = [
        sys.executable, "-m", "services.cli", "serve",
        "--profile", "cpu" if args.cpu else "gpu", "--max-sessions", str(max_sessions),
        "--model-dir", str(pack), "--port", str(port), "--workdir", str(stack_dir),
    ]  # fmt: skip
    env = os.environ | {"CONTROLLER_TURN__SEED": str(args.seed), "PYTHONUNBUFFERED": "1"}
    log = (args.work / "serve.log").open("ab")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    state = {"pid": process.pid, "url": f"http://127.0.0.1:{port}", "started": time.time()}
    (args.work / STATE).write_text(json.dumps(state) + "\n")
    print(
        f"starting the stack: {' '.join(command[2:])} (log {args.work / 'serve.log'})", flush=True
    )
    return state


def wait_ready(state: dict[str, Any], deadline: float, work: Path) -> bool:
    """True once /readyz answers; False when this call's budget ran out first (the stack goes
    on starting); raises when serve exited."""
    shown = ""
    while time.monotonic() < deadline:
        if ready(state["url"]):
            return True
        if not alive(int(state["pid"])):
            raise RuntimeError(f"the stack exited while starting:\n{log_tails(work)}")
        progress = ", ".join(start_times(work))
        if progress != shown:  # one line per service that came up, for the call's output
            print(f"starting: {progress or 'redis, vad ...'}", flush=True)
            shown = progress
        time.sleep(1.0)
    return False


def start_times(work: Path) -> list[str]:
    """'vad 4.1 s', ... for each service serve reported SERVING (sequential start)."""
    log = work / "serve.log"
    text = log.read_text(errors="replace") if log.is_file() else ""
    return [f"{m[0]} {m[1]} s" for m in re.findall(r"^(\w+) SERVING after ([\d.]+) s$", text, re.M)]


def stop_stack(work: Path, timeout_s: float = 30.0) -> None:
    state = read_state(work)
    if state is None:
        return
    pid = int(state["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)  # serve stops its services; the group catches strays
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    (work / STATE).unlink(missing_ok=True)


def log_tails(work: Path, lines: int = 15) -> str:
    parts = []
    for log in [work / "serve.log", *sorted((work / "stack").glob("*.log"))]:
        if log.is_file():
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(tail))
    return "\n".join(parts)


# -- GPU use per point --------------------------------------------------------------------------


class GpuSampler:
    """nvidia-smi every 500 ms during a point: utilization and memory (None without a GPU)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            query = "--query-gpu=utilization.gpu,memory.used"
            self.process = subprocess.Popen(
                ["nvidia-smi", query, "--format=csv,noheader,nounits", "-lms", "500"],
                stdout=self.path.open("wb"),
                stderr=subprocess.DEVNULL,
            )
        return self

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait()

    def summary(self) -> dict[str, float] | None:
        if self.process is None or not self.path.is_file():
            return None
        rows = []
        for line in self.path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                util, memory = (float(x) for x in line.split(","))
                rows.append((util, memory))
        if not rows:
            return None
        utils = [u for u, _ in rows]
        return {
            "samples": len(rows),
            "util_mean_pct": round(sum(utils) / len(utils), 1),
            "util_max_pct": max(utils),
            "memory_max_mib": max(m for _, m in rows),
        }


def gpu_memory_by_process() -> list[dict[str, Any]] | None:
    if not shutil.which("nvidia-smi"):
        return None
    query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        out = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True).stdout
        rows = [line.split(",") for line in out.splitlines() if line.strip()]
        return [{"pid": int(p), "memory_mib": float(m), "command": command_of(int(p))}
                for p, m in rows]  # fmt: skip
    return None


def command_of(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
    return ""


# -- the sweep ----------------------------------------------------------------------------------


def options_from(args: argparse.Namespace) -> LoadOptions:
    return LoadOptions(
        turns=args.turns,
        listen_s=args.listen_s,
        turn_timeout_s=args.turn_timeout_s,
        duration_s=args.duration_s,
        reply_tokens=args.reply_tokens,
        seed=args.seed,
        clips_dir=str(args.clips_dir) if args.clips_dir else None,
    )


def point_worst_s(options: LoadOptions) -> float:
    """The longest a point can take: its ramp, the last turn starting at duration_s and
    running into its timeout (speech and silence included), the settle and summaries."""
    return options.ramp_s + (options.duration_s or 0) + options.turn_timeout_s + POINT_SLACK_S


def run_point(
    url: str, sessions: int, options: LoadOptions, workers: int, work: Path,
    stack_pid: int | None = None,
) -> tuple:  # fmt: skip
    sampler = GpuSampler(work / f"gpu-{sessions}.csv")
    # the stacks are dumped once the ramp is over and turns are in flight
    profile = ProcessProfile(stack_pid, work, str(sessions), options.ramp_s + 8.0)
    with sampler, profile:
        summaries, turns = asyncio.run(sweep(url, [sessions], options, workers))
    summaries[0]["gpu"] = sampler.summary()
    summaries[0]["cpu_cores"] = profile.cores
    return summaries[0], turns


def commit_of(repo: Path, work: Path) -> str:
    """The code's commit: git where the checkout has .git, else the COMMIT file that
    prepare_stack.py wrote beside the carried files (capacity.sh copies it to the work folder)."""
    from loadtests.load_report import git_commit

    for carried in (work / "COMMIT", repo / ".gpustack" / "COMMIT"):
        if carried.is_file():
            return git_commit() or carried.read_text().strip()
    return git_commit()


def write_outputs(out: Path, work: Path, report: dict[str, Any]) -> None:
    write_report(report, out, REPORT, PLOT)
    (work / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    rows = [TABLE_HEADER, *(table_row(p) for p in report["points"])]
    gpu = [
        f"| {p['sessions']} | {p['gpu']['util_mean_pct']} | {p['gpu']['util_max_pct']} | "
        f"{p['gpu']['memory_max_mib']:.0f} |"
        for p in report["points"]
        if p.get("gpu")
    ]
    if gpu:
        rows += ["", "| sessions | GPU util mean % | max % | memory max MiB |", "|---|---|---|---|"]
        rows += gpu
    rows += cpu_rows(report["points"])
    rows += ["", f"largest sessions within target: {report['largest_sessions_within_target']}"]
    rows += [f"not run: {report['not_run']}", f"commit: {report['commit']}"]
    (out / TABLE).write_text("\n".join(rows) + "\n")
    with tarfile.open(out / LOGS, "w:gz") as tar:
        logs = [work / "serve.log", *sorted((work / "stack").glob("*.log"))]
        for path in [*logs, *sorted(work.glob("gpu-*.csv")), *sorted(work.glob("pyspy-*.txt"))]:
            if path.is_file():
                add_tail(tar, path, LOG_TAIL_BYTES)


def cpu_rows(points: list[dict[str, Any]]) -> list[str]:
    """Cores used per service and point (ProcessProfile), a table for capacity.md."""
    measured = [p for p in points if p.get("cpu_cores")]
    if not measured:
        return []
    names = sorted({name for p in measured for name in p["cpu_cores"]} - {"host_cpus"})
    rows = ["", "| sessions | " + " | ".join(f"{n} cores" for n in names) + " |"]
    rows.append("|---" * (len(names) + 1) + "|")
    for p in measured:
        cells = [str(p["cpu_cores"].get(n, "–")) for n in names]
        rows.append(f"| {p['sessions']} | " + " | ".join(cells) + " |")
    return rows


def add_tail(tar: tarfile.TarFile, path: Path, limit: int) -> None:
    """The file's last ``limit`` bytes (a file back from the device is at most 16 MiB)."""
    with path.open("rb") as source:
        size = source.seek(0, os.SEEK_END)
        source.seek(max(0, size - limit))
        data = source.read()
    info = tarfile.TarInfo(path.name)
    info.size, info.mtime = len(data), int(path.stat().st_mtime)
    tar.addfile(info, io.BytesIO(data))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # the budget counts from the start of the device call (capacity.sh's steps before this)
    call_started = float(os.environ.get("GPUSTACK_CALL_START", time.time()))
    deadline = time.monotonic() + args.budget_s - max(0.0, time.time() - call_started)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stop:
        stop_stack(args.work)
        return 0
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else args.work / "out")
    points = [int(n) for n in args.sessions.split(",") if n.strip()]
    repo = Path(__file__).resolve().parents[2]
    saved = args.work / REPORT
    previous = json.loads(saved.read_text()) if saved.is_file() else None
    setup: dict[str, Any] = (previous or {}).get("setup", {})
    setup.setdefault("profile", "cpu" if args.cpu else "gpu")
    setup.setdefault("chat_layers", None if args.cpu else args.chat_layers)
    summaries: list[dict[str, Any]] = (previous or {}).get("points", [])
    turns: list[dict[str, Any]] = (previous or {}).get("turns", [])
    options = options_from(args)

    def report(not_run: list[int], status: str) -> dict[str, Any]:
        command = " ".join(["python -m loadtests.gpu.capacity", *(argv or sys.argv[1:])])
        target = f"one-host stack, profile {setup['profile']}"
        result = build_report(command, target, options, args.workers, summaries, turns,
                              commit_of(repo, args.work))  # fmt: skip
        result["plot"] = PLOT
        return result | {"setup": setup, "not_run": not_run, "status": status}

    pending = [n for n in points if n not in {p["sessions"] for p in summaries}]
    if not pending and not args.prepare_only:
        write_outputs(out, args.work, report([], "done"))
        print(f"every point is measured already ({saved})", flush=True)
        return 0 if all(checks_of(summaries).values()) else 1
    try:
        pack = ensure_pack(args, setup)
        if args.prepare_only:
            write_outputs(out, args.work, report(points, "prepared"))
            print(f"pack ready at {pack}", flush=True)
            return 0
        state = read_state(args.work)
        if state is None:
            state = start_stack(args, pack, max(points))
        is_ready = wait_ready(state, deadline - READY_MARGIN_S, args.work)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"capacity: error: {exc}", file=sys.stderr, flush=True)
        write_outputs(out, args.work, report(points, f"failed: {exc}"))
        return 2
    if not is_ready:
        print(f"the stack is still starting after {args.budget_s:.0f} s: call again", flush=True)
        write_outputs(out, args.work, report(points, "starting"))
        return EXIT_MORE
    if "ready_after_s" not in setup:
        setup["ready_after_s"] = round(time.time() - state["started"], 1)
        setup["service_start"] = start_times(args.work)
        setup["gpu_memory_at_ready"] = gpu_memory_by_process()
        print(f"stack ready at {state['url']} after {setup['ready_after_s']} s", flush=True)
    print(TABLE_HEADER, flush=True)
    if args.warmup_sessions and "warmup" not in setup:
        warmup = dataclasses.replace(options, turns=1, duration_s=None)
        if time.monotonic() + point_worst_s(warmup) > deadline:
            write_outputs(out, args.work, report(pending, "ready, no time left for the warm-up"))
            print("no time left in this call for the warm-up point: call again", flush=True)
            return EXIT_MORE
        print(f"warm-up point, {args.warmup_sessions} sessions (not in the curve):", flush=True)
        summary, _ = run_point(state["url"], args.warmup_sessions, warmup, 1, args.work)
        setup["warmup"] = {k: summary[k] for k in ("sessions", "turns", "errors", "latency_ms")}
        write_outputs(out, args.work, report(pending, "warmed up"))

    ran = 0
    while pending:
        if args.points_per_call and ran >= args.points_per_call:
            break
        if time.monotonic() + point_worst_s(options) > deadline:
            print(f"no time left in this call for {pending[0]} sessions", flush=True)
            break
        sessions = pending.pop(0)
        summary, records = run_point(
            state["url"], sessions, options, args.workers, args.work, int(state["pid"])
        )
        summaries.append(summary)
        turns.extend(records)
        ran += 1  # sweep() printed its table row
        write_outputs(out, args.work, report(pending, "running"))
    final = report(pending, "more points to run" if pending else "done")
    write_outputs(out, args.work, final)
    print(f"largest sessions within target: {final['largest_sessions_within_target']}; "
          f"not run: {pending or 'none'}; outputs in {out}")  # fmt: skip
    if pending:
        return EXIT_MORE
    if not args.keep_running:
        stop_stack(args.work)
    return 0 if all(final["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
