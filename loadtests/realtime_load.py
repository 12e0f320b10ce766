"""Realtime load: N concurrent voice sessions over /v1/realtime, speaking at real-time pace.

    python -m loadtests.realtime_load [--url URL | --model-dir ROOT] [--sessions 1,8,32]
        [--turns 4] [--pause-rate 0.3] [--barge-in-rate 0.2] [--seed 7] [--out DIR]

Without ``--url`` it starts the local stack (``services.cli.stack.LocalStack``) on ROOT, or on
the tiny pack written to a temporary folder, with the controller's session limit raised to the
largest sweep point and a fixed reply seed.

Each session is a microphone that never stops: 20 ms PCM16 frames at real-time pace, speech
clips (espeak-ng, ``tests/helpers/clips.py``) when the user talks, silence otherwise; the
server's VAD ends every turn. Per turn, drawn from a seeded random generator: the clip, a
350 ms mid-sentence pause (rate ``--pause-rate``), a barge-in (rate ``--barge-in-rate``: the
next clip starts 0.2–0.8 s after the reply's first audio, over the reply), and 0.3–1 s of
silence before a turn that is not a barge-in. A reply is listened to until ``response.done``,
or cut with ``response.cancel`` after ``--listen-s`` of it.

Per turn it records end of speech → first audio as the client sees it, and the stage timings
of ``response.done``; per sweep point it reports p50/p95/p99, errors by code and sessions
admitted/refused. It writes ``realtime_load.json`` and ``realtime_load.png`` (latency vs
sessions) to ``--out``. The protocol itself lives in ``loadtests.load_client``, the records,
summaries and plot in ``loadtests.load_report``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from loadtests import load_client as wire
from loadtests.load_report import (
    TABLE_HEADER,
    TARGET_MS,
    SessionResult,
    TurnRecord,
    checks,
    git_commit,
    largest_within_target,
    plot,
    summarize_point,
    table_row,
)
from services.common.audio import float_to_pcm16
from tests.helpers.clips import RATE_HZ, phrase, with_pauses

# each clip in two parts: said as one phrase, or with a mid-sentence pause between the parts
CLIPS = (
    ("What is the weather like", "in Paris today?"),
    ("Tell me a short story", "about a cat on the moon."),
    ("How far away", "is the moon from here?"),
    ("Can you recommend", "a good book to read?"),
    ("Please remind me", "to call my sister tomorrow."),
    ("What time is it", "in Tokyo right now?"),
)
THINK_S = (0.3, 1.0)  # silence before a new turn (not a barge-in)
BARGE_IN_AFTER_S = (0.2, 0.8)  # from the reply's first audio to the barge-in
LAG_WARNING_MS = 200.0  # a frame this late: the point measured the client, not the server
SETTLE_TIMEOUT_S = 30.0  # between sweep points: the server closes the last point's sessions
REPORT = "realtime_load.json"
PLOT = "realtime_load.png"


@dataclass(frozen=True)
class LoadOptions:
    turns: int = 4
    pause_rate: float = 0.3
    barge_in_rate: float = 0.2
    pause_s: float = 0.35  # longer than speculate_after_ms (250), shorter than the VAD's 600
    listen_s: float = 4.0
    ramp_s: float = 2.0  # sessions start at random times within this window
    turn_timeout_s: float = 60.0  # end of speech → response.done
    duration_s: float | None = None  # per sweep point: no new turn starts after this
    reply_tokens: int | None = None
    speculative: bool | None = None
    transport: str = "binary"
    frame_ms: int = 20
    seed: int = 7
    clips_dir: str | None = None  # rendered clips (for a host without espeak-ng)


@dataclass(frozen=True)
class Clip:
    parts: tuple[str, str]
    paused: bool  # spoken with a pause of pause_s between the parts
    pause_s: float

    @property
    def text(self) -> str:
        return " / ".join(self.parts) if self.paused else " ".join(self.parts)


@dataclass(frozen=True)
class TurnPlan:
    clip: Clip
    barge_in: bool
    think_s: float
    barge_in_after_s: float


@dataclass(frozen=True)
class SessionPlan:
    start_s: float  # after the point starts (the ramp)
    turns: list[TurnPlan]


# -- the clips --------------------------------------------------------------------------------


@functools.cache
def speak(clip: Clip, clips_dir: Path | None = None) -> bytes:
    """The clip as 16 kHz PCM16: from ``clips_dir`` when it is there, else made with espeak-ng
    (and saved there). Blocking: called before the sessions start."""
    key = hashlib.sha1(repr((clip.parts, clip.paused, clip.pause_s)).encode()).hexdigest()[:16]
    saved = clips_dir / f"{key}.wav" if clips_dir is not None else None
    if saved is not None and saved.is_file():
        pcm, rate = sf.read(str(saved), dtype="int16")
        if rate != RATE_HZ or pcm.ndim != 1:
            raise ValueError(f"{saved}: expected mono {RATE_HZ} Hz, got {rate} Hz {pcm.shape}")
        return pcm.tobytes()
    samples = with_pauses(clip.parts, clip.pause_s) if clip.paused else phrase(clip.text)
    pcm16 = float_to_pcm16(samples)
    if saved is not None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(saved), np.frombuffer(pcm16, dtype="<i2"), RATE_HZ, subtype="PCM_16")
    return pcm16


def render_all(clips_dir: Path, pause_s: float) -> int:
    """Every clip, plain and paused, into ``clips_dir`` (to carry to a host without espeak-ng)."""
    clips = [Clip(parts, paused, pause_s) for parts in CLIPS for paused in (False, True)]
    for clip in clips:
        speak(clip, clips_dir)
    return len(clips)


def plan_session(index: int, sessions: int, options: LoadOptions) -> SessionPlan:
    """Seeded by (seed, point, session): the same point plays the same conversations."""
    rng = random.Random(f"{options.seed}:{sessions}:{index}")
    turns = []
    for _ in range(options.turns):
        paused = rng.random() < options.pause_rate
        turns.append(
            TurnPlan(
                clip=Clip(rng.choice(CLIPS), paused, options.pause_s),
                barge_in=rng.random() < options.barge_in_rate,
                think_s=rng.uniform(*THINK_S),
                barge_in_after_s=rng.uniform(*BARGE_IN_AFTER_S),
            )
        )
    return SessionPlan(rng.uniform(0, options.ramp_s), turns)


# -- one session --------------------------------------------------------------------------------


class Microphone:
    """Sends frames at real-time pace until cancelled: queued speech, else silence.

    A frame goes out when it has been "spoken" (frame k at start + (k+1) frames), as from a
    live microphone. ``say`` returns a future set to the monotonic time of the clip's last frame.
    """

    def __init__(self, socket: wire.LoadSocket, frame_ms: int) -> None:
        self.socket = socket
        self.frame_bytes = RATE_HZ * frame_ms // 1000 * 2
        self.frame_s = frame_ms / 1000
        self.pending: deque[tuple[bytes, asyncio.Future[float]]] = deque()
        self.max_lag_s = 0.0  # how far behind real time the sender fell (client overload)
        self.closed: wire.ConnectionClosed | None = None

    def say(self, pcm16: bytes) -> asyncio.Future[float]:
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if self.closed is not None:
            done.set_exception(self.closed)
        else:
            self.pending.append((pcm16, done))
        return done

    async def run(self) -> None:
        silence = bytes(self.frame_bytes)
        speech, offset, done = b"", 0, None
        started, index = time.monotonic(), 0
        try:
            while True:
                index += 1
                delay = started + index * self.frame_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    self.max_lag_s = max(self.max_lag_s, -delay)
                if done is None and self.pending:
                    (speech, done), offset = self.pending.popleft(), 0
                if done is None:
                    await self.socket.send_audio(silence)
                    continue
                await self.socket.send_audio(speech[offset : offset + self.frame_bytes])
                offset += self.frame_bytes
                if offset >= len(speech):
                    done.set_result(time.monotonic())
                    done = None
        except wire.ConnectionClosed as exc:
            self.closed = exc
            for _, waiting in [(speech, done), *self.pending]:
                if waiting is not None and not waiting.done():
                    waiting.set_exception(exc)


@dataclass
class TurnProgress:
    """What a turn has seen of its reply: the reply is the first one created after the turn's
    speech ended (a reply created earlier answered part of the utterance: the server ended a
    turn inside it, and the rest of the utterance barged into that reply)."""

    speech_end: float
    reply_id: str | None = None
    stopped_at: float | None = None
    first_audio_at: float | None = None

    def is_mine(self, done: dict[str, Any]) -> bool:
        return self.reply_id is not None and done.get("id") == self.reply_id

    def observe(self, record: TurnRecord, item: wire.Received) -> bool:
        """Note one event; True for the first audio of the turn's reply."""
        after_speech = item.at >= self.speech_end
        if item.kind == wire.REPLY_STARTED and after_speech and self.reply_id is None:
            self.reply_id = item.data["id"]
        elif item.kind == wire.SPEECH_STOPPED and after_speech and self.stopped_at is None:
            self.stopped_at = item.at
        elif item.kind == wire.AUDIO and self.reply_id is not None and self.first_audio_at is None:
            self.first_audio_at = item.at
            if self.stopped_at is not None:
                record.client_first_audio_ms = round((item.at - self.stopped_at) * 1000, 1)
            record.speech_end_to_audio_ms = round((item.at - self.speech_end) * 1000, 1)
            return True
        elif item.kind == wire.ERROR:
            record.errors.append(str(item.data.get("code")))
        elif item.kind == wire.DONE:  # a reply to part of the utterance
            record.replies_inside_speech.append(str(item.data.get("status")))
        return False


class TurnTimers:
    """The moments a turn acts on its own: the barge-in, cutting the reply, giving up."""

    def __init__(self, speech_end: float, plan: TurnPlan, options: LoadOptions) -> None:
        self.plan, self.options = plan, options
        self.give_up_at = speech_end + options.turn_timeout_s
        self.barge_in_at: float | None = None
        self.cut_at: float | None = None

    def on_first_audio(self, at: float, can_barge_in: bool) -> None:
        if self.plan.barge_in and can_barge_in:
            self.barge_in_at = at + self.plan.barge_in_after_s
        else:
            self.cut_at = at + self.options.listen_s

    def next_due(self) -> tuple[str, float]:
        due = [("give_up", self.give_up_at)]
        due += [("barge_in", self.barge_in_at)] if self.barge_in_at is not None else []
        due += [("cut", self.cut_at)] if self.cut_at is not None else []
        return min(due, key=lambda d: d[1])


async def run_turn(
    socket: wire.LoadSocket,
    mic: Microphone,
    record: TurnRecord,
    plan: TurnPlan,
    speech: asyncio.Future[float],
    next_speech_pcm16: bytes | None,
    options: LoadOptions,
) -> asyncio.Future[float] | None:
    """Read the turn's events until its response.done; returns the next turn's speech if it
    has already started (a barge-in). Leaves ``record.status`` empty when no reply came."""
    try:
        speech_end = await speech
    except wire.ConnectionClosed:
        record.errors.append("closed")
        return None
    timers = TurnTimers(speech_end, plan, options)
    progress = TurnProgress(speech_end)
    next_speech: asyncio.Future[float] | None = None
    while True:
        action, at = timers.next_due()
        try:
            item = await asyncio.wait_for(socket.received.get(), max(0.0, at - time.monotonic()))
        except TimeoutError:
            if action == "give_up":
                record.errors.append("timeout")
                return None
            if action == "barge_in":
                timers.barge_in_at = None
                next_speech = mic.say(next_speech_pcm16)  # type: ignore[arg-type]
            else:
                timers.cut_at = None
                record.cut = True
                with contextlib.suppress(wire.ConnectionClosed):  # then CLOSED comes next
                    await socket.cancel_reply()
            continue
        if item.kind == wire.CLOSED:
            record.errors.append(f"closed_{item.data.get('code')}")
            return None
        if item.kind == wire.DONE and progress.is_mine(item.data):
            finish(record, item.data, barge_in_started=next_speech is not None)
            return next_speech
        if progress.observe(record, item):  # the first audio of the turn's reply
            timers.on_first_audio(item.at, can_barge_in=next_speech_pcm16 is not None)


def finish(record: TurnRecord, done: dict[str, Any], *, barge_in_started: bool) -> None:
    record.status = str(done.get("status"))
    record.speculative = bool(done.get("speculative"))
    record.timings_ms = {k: float(v) for k, v in (done.get("timings_ms") or {}).items()}
    record.audio_seconds = float(done.get("audio_seconds") or 0.0)
    record.barged_in = barge_in_started and record.status == "cancelled"
    record.cut = record.cut and not record.barged_in and record.status == "cancelled"
    if record.status not in ("completed", "cancelled") and not record.errors:
        record.errors.append(f"response_{record.status}")


async def run_session(
    url: str,
    index: int,
    plan: SessionPlan,
    audio: Mapping[Clip, bytes],
    options: LoadOptions,
    deadline: float | None,
) -> SessionResult:
    result = SessionResult(index)
    await asyncio.sleep(plan.start_s)
    try:
        socket = await wire.LoadSocket.connect(url)
    except wire.Refused as exc:
        result.refused = exc.reason
        return result
    mic = Microphone(socket, options.frame_ms)
    sender = asyncio.create_task(mic.run())
    try:
        await socket.configure(
            transport=options.transport,
            input_rate_hz=RATE_HZ,
            speculative=options.speculative,
            reply_tokens=options.reply_tokens,
        )
        await talk(socket, mic, plan.turns, audio, result, options, deadline)
    except (RuntimeError, TimeoutError, wire.ConnectionClosed) as exc:
        result.errors.append(f"session_{type(exc).__name__}")
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        result.mic_max_lag_ms = round(mic.max_lag_s * 1000, 1)
        await socket.close()
    return result


async def talk(
    socket: wire.LoadSocket,
    mic: Microphone,
    plans: list[TurnPlan],
    audio: Mapping[Clip, bytes],
    result: SessionResult,
    options: LoadOptions,
    deadline: float | None,
) -> None:
    speech: asyncio.Future[float] | None = None  # already under way (a barge-in)
    for number, plan in enumerate(plans):
        if speech is None:
            if deadline is not None and time.monotonic() >= deadline:
                return
            await asyncio.sleep(plan.think_s)  # the microphone sends silence meanwhile
            speech = mic.say(audio[plan.clip])
        record = TurnRecord(result.index, number, plan.clip.text, plan.clip.paused, plan.barge_in)
        result.turns.append(record)
        upcoming = audio[plans[number + 1].clip] if number + 1 < len(plans) else None
        if deadline is not None and time.monotonic() >= deadline:
            upcoming = None  # past the deadline: no barge-in starts another turn
        speech = await run_turn(socket, mic, record, plan, speech, upcoming, options)
        if not record.status:
            return  # no reply (timeout, closed socket): the session's state is unknown


# -- one sweep point ----------------------------------------------------------------------------


async def run_sessions(
    url: str, indices: Sequence[int], sessions: int, options: LoadOptions, deadline: float | None
) -> list[SessionResult]:
    plans = {i: plan_session(i, sessions, options) for i in indices}
    clips = {turn.clip for plan in plans.values() for turn in plan.turns}
    clips_dir = Path(options.clips_dir) if options.clips_dir else None
    audio = await asyncio.to_thread(lambda: {clip: speak(clip, clips_dir) for clip in clips})
    runs = (run_session(url, i, plans[i], audio, options, deadline) for i in indices)
    return list(await asyncio.gather(*runs))


def run_sessions_in_worker(
    url: str, indices: list[int], sessions: int, options: LoadOptions, deadline: float | None
) -> list[SessionResult]:
    """A worker process's share of a sweep point, on its own event loop (``--workers``)."""
    return asyncio.run(run_sessions(url, indices, sessions, options, deadline))


async def run_point(
    url: str, sessions: int, options: LoadOptions, pool: ProcessPoolExecutor | None, workers: int
) -> tuple[dict[str, Any], list[TurnRecord]]:
    started = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process on the host
    deadline = started + options.duration_s if options.duration_s else None
    if pool is None:
        results = await run_sessions(url, range(sessions), sessions, options, deadline)
    else:
        loop = asyncio.get_running_loop()
        shares = [list(range(w, sessions, workers)) for w in range(min(workers, sessions))]
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(
                    pool, run_sessions_in_worker, url, share, sessions, options, deadline
                )
                for share in shares
            )
        )
        results = sorted((r for part in parts for r in part), key=lambda r: r.index)
    summary = summarize_point(sessions, results, time.monotonic() - started)
    return summary, [t for r in results for t in r.turns]


async def settle(url: str, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
    """Wait until the server has closed the last point's sessions (its slots are free again),
    as far as its /metrics shows; a server without /metrics is not waited for."""
    deadline = time.monotonic() + timeout_s
    active = await open_sessions(url)  # None: unknown
    while active and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        active = await open_sessions(url)
    if active:
        print(f"warning: {active:.0f} sessions still open after {timeout_s:.0f} s", file=sys.stderr)


async def open_sessions(url: str) -> float | None:
    samples = await wire.scrape(url)
    return None if samples is None else samples.get((wire.ACTIVE_SESSIONS, ()), 0.0)


async def sweep(
    url: str, points: Sequence[int], options: LoadOptions, workers: int = 1
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    summaries, turns = [], []
    with contextlib.ExitStack() as stack:
        pool = None
        if workers > 1:  # spawn: workers must not inherit this process's event loop
            context = multiprocessing.get_context("spawn")
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=context))
        for sessions in points:
            await settle(url)
            before = await wire.scrape(url)
            summary, records = await run_point(url, sessions, options, pool, workers)
            summary["server"] = server = wire.server_counts(before, await wire.scrape(url))
            seen = sum(r.status != "" for r in records) + summary["turns"]["replies_inside_speech"]
            # replies the server finished but never reported (e.g. cut off by a client's close)
            summary["replies_not_seen"] = (
                None if server is None else sum(server["responses"].values()) - seen
            )
            summaries.append(summary)
            turns += [{"sessions": sessions, **asdict(t), "answered": t.answered} for t in records]
            print(table_row(summary), flush=True)
            if summary["client_max_lag_ms"] > LAG_WARNING_MS:
                print(f"warning: at {sessions} sessions the generator fell "
                      f"{summary['client_max_lag_ms']:.0f} ms behind real time: "
                      "use --workers or a larger client host", file=sys.stderr)  # fmt: skip
    return summaries, turns


# -- the command --------------------------------------------------------------------------------


def start_stack(args: argparse.Namespace, points: Sequence[int], workdir: Path) -> Any:
    """The local stack on --model-dir or a fresh tiny pack; the caller stops it."""
    from services.cli.stack import LocalStack, free_port

    root = args.model_dir
    if root is None:
        from services.models.tiny import write_tiny_pack

        root = write_tiny_pack(workdir / "tiny-pack")
    env = {"CONTROLLER_TURN__SEED": str(args.seed)}
    if "CONTROLLER_LIMITS__MAX_SESSIONS" not in os.environ:
        env["CONTROLLER_LIMITS__MAX_SESSIONS"] = str(max(64, *points))
    env.update(dict(item.split("=", 1) for item in args.stack_env))
    stack = LocalStack(
        model_dir=root,
        workdir=workdir / "stack",
        controller_port=free_port(),
        log_level="WARNING",
        extra_env=env,
    )
    return stack.start()


def options_from(args: argparse.Namespace) -> LoadOptions:
    return LoadOptions(
        turns=args.turns,
        pause_rate=args.pause_rate,
        barge_in_rate=args.barge_in_rate,
        listen_s=args.listen_s,
        ramp_s=args.ramp_s,
        turn_timeout_s=args.turn_timeout_s,
        duration_s=args.duration_s,
        reply_tokens=args.reply_tokens,
        speculative={"on": True, "off": False}.get(args.speculative),
        transport=args.transport,
        frame_ms=args.frame_ms,
        seed=args.seed,
        clips_dir=str(args.clips_dir) if args.clips_dir else None,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--url", help="a running stack (http://HOST:PORT); default: start the local stack")
    add("--model-dir", type=Path, help="model root for the local stack (default: tiny pack)")
    add("--stack-env", action="append", default=[], metavar="VAR=VALUE",
        help="extra environment for the local stack (repeatable)")  # fmt: skip
    add("--sessions", default="1,8,32", help="sweep points: concurrent sessions, comma-separated")
    add("--turns", type=int, default=4, help="turns per session")
    add("--duration-s", type=float, help="per point: no new turn starts after this")
    add("--pause-rate", type=float, default=0.3, help="share of turns with a mid-sentence pause")
    add("--barge-in-rate", type=float, default=0.2, help="share of turns the user interrupts")
    add("--listen-s", type=float, default=4.0, help="reply audio listened to before cancelling")
    add("--ramp-s", type=float, default=2.0, help="sessions start within this window")
    add("--turn-timeout-s", type=float, default=60.0, help="end of speech → response.done")
    add("--reply-tokens", type=int, help="max_response_output_tokens (default: the server's)")
    add("--speculative", choices=("on", "off"), help="speculative replies (default: the server's)")
    add("--transport", choices=("binary", "json"), default="binary", help="reply audio transport")
    add("--frame-ms", type=int, default=20, help="input audio frame (ms)")
    add("--workers", type=int, default=1,
        help="client processes sharing the sessions (one event loop each)")  # fmt: skip
    add("--seed", type=int, default=7)
    add("--clips-dir", type=Path,
        help="clip WAVs: read when there, else made with espeak-ng and saved")  # fmt: skip
    add("--render-clips", action="store_true",
        help="only write every clip into --clips-dir, then exit")  # fmt: skip
    add("--out", type=Path, default=Path("var/realtime_load"), help="report folder")
    args = parser.parse_args(argv)
    if args.render_clips and args.clips_dir is None:
        parser.error("--render-clips needs --clips-dir")
    if not all(item.partition("=")[1] for item in args.stack_env):
        parser.error("--stack-env takes VAR=VALUE")
    return args


def build_report(
    command: str,
    target: str,
    options: LoadOptions,
    workers: int,
    summaries: list[dict[str, Any]],
    turns: list[dict[str, Any]],
    commit: str | None = None,
) -> dict[str, Any]:
    """The report of a sweep (``REPORT``): what ran, every point, the checks, the capacity."""
    return {
        "command": command,
        "commit": commit if commit is not None else git_commit(),
        "target": target,
        "options": asdict(options),
        "workers": workers,
        "points": summaries,
        "checks": checks(summaries),
        "largest_sessions_within_target": largest_within_target(summaries),
        "target_p95_ms": TARGET_MS,
        "plot": PLOT,
        "turns": turns,
    }


def write_report(
    report: dict[str, Any], out: Path, name: str = REPORT, plot_name: str = PLOT
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(report, indent=2) + "\n")
    plot(report["points"], out / plot_name, f"realtime load, commit {report['commit'] or '?'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_clips:
        print(f"wrote {render_all(args.clips_dir, LoadOptions.pause_s)} clips to {args.clips_dir}")
        return 0
    points = [int(n) for n in args.sessions.split(",") if n.strip()]
    options = options_from(args)
    args.out.mkdir(parents=True, exist_ok=True)
    print(TABLE_HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="realtime-load-") as scratch:
        stack = None if args.url else start_stack(args, points, Path(scratch))
        url = args.url or stack.url
        try:
            summaries, turns = asyncio.run(sweep(url, points, options, args.workers))
        finally:
            if stack is not None:
                stack.stop()
    report = build_report(
        " ".join(["python -m loadtests.realtime_load", *(argv or sys.argv[1:])]),
        args.url or f"local stack on {args.model_dir or 'the tiny pack'}",
        options,
        args.workers,
        summaries,
        turns,
    )
    write_report(report, args.out)
    print(f"largest sessions with p95 ≤ {TARGET_MS:.0f} ms, no errors, no refusals: "
          f"{report['largest_sessions_within_target']}")  # fmt: skip
    print(f"wrote {args.out / REPORT} and {args.out / PLOT}")
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
