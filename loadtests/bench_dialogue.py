"""Spoken dialogue over the real stack: end of speech → first audio, speculation, context.

    python -m loadtests.bench_dialogue [--model-dir ROOT] [--repeats 2] [--json FILE]

Starts the local stack as subprocesses (``services.cli.stack.LocalStack``: redis-server, VAD,
tokenizer, LLM, TTS, the controller, and an end-to-end LLM when ROOT has ``Step-Audio-AQAA/``)
on ROOT, or on the tiny pack (aqaa variant) written to a temporary folder. Clips are espeak-ng
speech made at run time (``tests/helpers/clips.py``) and are streamed over ``/v1/realtime`` at
real-time pace in 20 ms frames, each followed by 1 s of silence (the VAD ends the turn after
600 ms of it). Turns run one at a time.

Scenarios
  (a) plain     clips without pauses, speculation off vs on (two sessions, turns alternate):
                the stage breakdown of ``response.done.timings_ms`` (ms from the server's end of
                turn) and the tokenizer tail (the controller's ``tokenizer_tail`` histogram,
                read per turn from /metrics).
  (b) pauses    clips with a 350 ms mid-sentence pause (> speculate_after_ms 250, < silence
                600), speculation off vs on, transcription on, audio_turns_kept=1: speculation
                commit rate, latency saved (first audio of committed speculative turns vs the
                same clips without speculation), context compression ratio (audio tokens
                replaced ÷ transcript tokens, from the controller's counters).
  (c) pipelines the same plain clips with ``pipeline: cascade`` vs ``end_to_end`` (speculation
                off), when the stack has an end-to-end LLM.

Every reply is cancelled (``response.cancel``) as soon as its first audio arrives: the bench
measures latency, and paced playback of whole replies would only add wall time. Sessions use a
fixed reply seed (``CONTROLLER_TURN__SEED``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from services.cli.realtime_client import RealtimeClient
from services.cli.stack import LocalStack, free_port
from services.models import layout
from services.models.text_tokenizer import TextTokenizer
from tests.helpers.clips import RATE_HZ, phrase, silence, with_pauses

PLAIN = (
    "What is the weather like in Paris today?",
    "Tell me a short story about a cat.",
    "How far away is the moon from here?",
    "Can you recommend a good book to read?",
)
PAUSED = (
    ("What is the weather like", "in Paris today?"),
    ("Tell me a short story", "about a cat on the moon."),
    ("How far away", "is the moon from here?"),
    ("Can you recommend", "a good book to read?"),
)
PAUSE_S = 0.35  # mid-sentence pause: longer than speculate_after_ms, shorter than silence_ms
END_SILENCE_S = 1.0  # after each clip: the VAD ends the turn after 600 ms of it
REPLY_TOKENS = 256  # enough for a first clause (cascade) or first audio ids (end to end)
TURN_TIMEOUT_S = 120.0
SEED = 7
STAGES = (
    "tokenizer_tail",
    "speculation_started",
    "llm_first_token",
    "first_clause",
    "tts_first_chunk",
    "first_audio",
    "client_first_audio",
)
TRANSCRIBED = "conversation.item.input_audio_transcription.completed"
M = "stepaudio_controller_"


# -- metrics ----------------------------------------------------------------------------------


async def scrape(http: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The controller's /metrics as {(sample name, sorted labels): value}."""
    text = (await http.get("/metrics")).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


def metric(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(after: dict[Any, float], before: dict[Any, float], name: str, **labels: str) -> float:
    return metric(after, name, **labels) - metric(before, name, **labels)


# -- one turn ---------------------------------------------------------------------------------


@dataclass
class Turn:
    scenario: str
    mode: str
    clip: str
    status: str = ""
    speculative: bool = False
    stages_ms: dict[str, float] = field(default_factory=dict)
    audio_tokens: int = 0  # the user turn's audio ids
    errors: list[str] = field(default_factory=list)
    speculations: dict[str, float] = field(default_factory=dict)  # outcome → count this turn


async def speak_turn(
    client: RealtimeClient,
    http: httpx.AsyncClient,
    samples: np.ndarray,
    turn: Turn,
    *,
    wait_transcript: bool = False,
) -> Turn:
    """Stream a clip and its trailing silence; read events until response.done."""
    before = await scrape(http)
    clip = np.concatenate([samples, silence(END_SILENCE_S)])
    sender = asyncio.create_task(client.stream_audio(clip, RATE_HZ))
    stopped_at = first_audio_at = None
    item_id, done = "", None
    seen = len(client.result.events)
    try:
        deadline = time.monotonic() + TURN_TIMEOUT_S
        while done is None:
            try:
                event = await client.next_event(max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                kinds = [e["type"] for e in client.result.events[seen:]]
                raise RuntimeError(f"{turn.clip!r}: no response.done; events: {kinds}") from None
            kind = event["type"]
            if kind == "input_audio_buffer.speech_stopped":
                stopped_at = time.monotonic()
            elif kind == "conversation.item.created" and event["item"]["role"] == "user":
                item_id = event["item"]["id"]
                turn.audio_tokens = int(event["item"]["content"][0].get("audio_tokens", 0))
            elif kind == "response.audio.delta" and first_audio_at is None:
                first_audio_at = time.monotonic()
                await client.send({"type": "response.cancel"})  # latency is measured
            elif kind == "response.done":
                done = event["response"]
            elif kind == "error":
                turn.errors.append(str(event["error"].get("code")))
        if wait_transcript and item_id:
            while not any(e.get("item_id") == item_id for e in client.result.of_type(TRANSCRIBED)):
                await client.next_event(TURN_TIMEOUT_S)
    finally:
        await sender
    after = await scrape(http)
    turn.status, turn.speculative = done["status"], bool(done["speculative"])
    turn.stages_ms = {k: float(v) for k, v in done["timings_ms"].items()}
    tail_s = delta(after, before, f"{M}tokenizer_tail_seconds_sum")
    if delta(after, before, f"{M}tokenizer_tail_seconds_count") == 1:
        turn.stages_ms["tokenizer_tail"] = round(tail_s * 1000, 1)
    if stopped_at is not None and first_audio_at is not None:  # as the client saw it
        turn.stages_ms["client_first_audio"] = round((first_audio_at - stopped_at) * 1000, 1)
    for outcome in ("started", "committed", "discarded", "shed"):
        turn.speculations[outcome] = delta(after, before, f"{M}speculations_total", outcome=outcome)
    return turn


# -- scenarios --------------------------------------------------------------------------------


async def open_session(url: str, **settings: Any) -> RealtimeClient:
    client = RealtimeClient(url)
    await client.__aenter__()
    await client.configure(max_response_output_tokens=REPLY_TOKENS, **settings)
    return client


async def alternate(
    url: str,
    http: httpx.AsyncClient,
    scenario: str,
    modes: dict[str, dict[str, Any]],
    clips: Sequence[tuple[str, np.ndarray]],
    repeats: int,
    *,
    wait_transcript: bool = False,
) -> list[Turn]:
    """One session per mode; every clip is spoken in each mode in turn (same load for all)."""
    sessions = {mode: await open_session(url, **settings) for mode, settings in modes.items()}
    turns = []
    try:
        for _ in range(repeats):
            for name, samples in clips:
                for mode, client in sessions.items():
                    turn = Turn(scenario, mode, name)
                    turns.append(
                        await speak_turn(
                            client, http, samples, turn, wait_transcript=wait_transcript
                        )
                    )
    finally:
        for client in sessions.values():
            await client.__aexit__()
    return turns


def summarize(turns: list[Turn]) -> dict[str, Any]:
    """Median / p95 of every stage per mode."""
    out: dict[str, Any] = {}
    for mode in dict.fromkeys(t.mode for t in turns):
        mine = [t for t in turns if t.mode == mode]
        stages: dict[str, dict[str, float]] = {}
        for stage in STAGES:
            values = [t.stages_ms[stage] for t in mine if stage in t.stages_ms]
            if values:
                stages[stage] = {
                    "median": round(statistics.median(values), 1),
                    "p95": round(float(np.percentile(values, 95)), 1),
                    "n": len(values),
                }
        out[mode] = {
            "turns": len(mine),
            "speculative_turns": sum(t.speculative for t in mine),
            "errors": sorted({e for t in mine for e in t.errors}),
            "stages_ms": stages,
        }
    return out


def speculation_stats(turns: list[Turn]) -> dict[str, float]:
    totals = {k: sum(t.speculations.get(k, 0) for t in turns) for k in ("started", "committed")}
    for key in ("discarded", "shed"):
        totals[key] = sum(t.speculations.get(key, 0) for t in turns)
    totals["commit_rate"] = (
        round(totals["committed"] / totals["started"], 3) if totals["started"] else 0.0
    )
    return totals


def latency_saved(turns: list[Turn], off: str, on: str) -> dict[str, float]:
    """first_audio of the same clip without speculation minus with a committed speculation."""
    paired = []
    for turn in turns:
        if turn.mode != on or not turn.speculative or "first_audio" not in turn.stages_ms:
            continue
        base = [
            t.stages_ms["first_audio"]
            for t in turns
            if t.mode == off and t.clip == turn.clip and "first_audio" in t.stages_ms
        ]
        if base:
            paired.append(statistics.median(base) - turn.stages_ms["first_audio"])
    off_values = [t.stages_ms["first_audio"] for t in turns if t.mode == off]
    on_values = [t.stages_ms["first_audio"] for t in turns if t.mode == on and t.speculative]
    return {
        "pairs": len(paired),
        "median_saved_ms": round(statistics.median(paired), 1) if paired else float("nan"),
        "first_audio_off_median_ms": round(statistics.median(off_values), 1)
        if off_values
        else float("nan"),
        "first_audio_committed_median_ms": round(statistics.median(on_values), 1)
        if on_values
        else float("nan"),
    }


async def run_async(model_root: Path, url: str, repeats: int, e2e: bool) -> dict[str, Any]:
    plain = [(text, phrase(text)) for text in PLAIN]
    paused = [(" / ".join(parts), with_pauses(parts, PAUSE_S)) for parts in PAUSED]
    results: dict[str, Any] = {"repeats": repeats, "pause_s": PAUSE_S}
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        warm = await open_session(url, speculative=False, transcribe=False)
        try:  # first calls pay one-off costs (allocations, lazy initialisation)
            for name, samples in plain[:2]:
                await speak_turn(warm, http, samples, Turn("warm-up", "-", name))
        finally:
            await warm.__aexit__()

        modes = {
            "speculation off": {"speculative": False, "transcribe": False},
            "speculation on": {"speculative": True, "transcribe": False},
        }
        turns_a = await alternate(url, http, "plain", modes, plain, repeats)
        results["plain"] = {
            "summary": summarize(turns_a),
            "speculation": speculation_stats([t for t in turns_a if t.mode == "speculation on"]),
            "latency_saved": latency_saved(turns_a, "speculation off", "speculation on"),
        }

        context = {"transcribe": True, "audio_turns_kept": 1}
        modes_b = {
            "speculation off": {"speculative": False, **context},
            "speculation on": {"speculative": True, **context},
        }
        before = await scrape(http)
        turns_b = await alternate(url, http, "pauses", modes_b, paused, 1, wait_transcript=True)
        after = await scrape(http)
        replaced = delta(after, before, f"{M}context_audio_tokens_replaced_total")
        transcript = delta(after, before, f"{M}context_transcript_tokens_total")
        results["pauses"] = {
            "summary": summarize(turns_b),
            "speculation": speculation_stats([t for t in turns_b if t.mode == "speculation on"]),
            "latency_saved": latency_saved(turns_b, "speculation off", "speculation on"),
            "compression": {
                "audio_tokens_replaced": replaced,
                "transcript_tokens": transcript,
                "ratio": round(replaced / transcript, 2) if transcript else float("nan"),
                **reference_compression(model_root, turns_b),
            },
        }

        if e2e:
            pipelines = {
                "cascade": {"pipeline": "cascade", "speculative": False, "transcribe": False},
                "end_to_end": {"pipeline": "end_to_end", "speculative": False, "transcribe": False},
            }
            turns_c = await alternate(url, http, "pipelines", pipelines, plain, repeats)
            results["pipelines"] = {"summary": summarize(turns_c)}
    results["turns"] = [t.__dict__ for t in turns_a + turns_b + (turns_c if e2e else [])]
    return results


def reference_compression(model_root: Path, turns: list[Turn]) -> dict[str, float]:
    """Audio ids per turn ÷ the Chat tokenizer's ids for the clip's true text (perfect ASR)."""
    tokenizer = TextTokenizer.from_folder(layout.chat_dir(model_root))
    audio = [t.audio_tokens for t in turns if t.audio_tokens]
    text = [
        len(tokenizer.encode_continuation(t.clip.replace(" / ", " ")))
        for t in turns
        if t.audio_tokens
    ]
    return {
        "audio_tokens_per_turn": round(statistics.mean(audio), 1) if audio else float("nan"),
        "true_text_tokens_per_turn": round(statistics.mean(text), 1) if text else float("nan"),
        "true_text_ratio": round(sum(audio) / sum(text), 2) if text else float("nan"),
    }


def run(model_root: Path, *, repeats: int = 2, seed: int = SEED) -> dict[str, Any]:
    """Start the stack on ``model_root``, run the scenarios, stop it; results as a dict."""
    e2e = (model_root / layout.AQAA_DIR).is_dir()
    with tempfile.TemporaryDirectory(prefix="bench-dialogue-") as workdir:
        stack = LocalStack(
            model_dir=model_root,
            workdir=Path(workdir),
            controller_port=free_port(),
            log_level="WARNING",
            extra_env={"CONTROLLER_TURN__SEED": str(seed)},
        )
        started = time.perf_counter()
        stack.start()
        try:
            startup_s = time.perf_counter() - started
            results = asyncio.run(run_async(model_root, stack.url, repeats, e2e))
        finally:
            stack.stop()
    results["stack_startup_s"] = round(startup_s, 1)
    results["end_to_end_available"] = e2e
    return results


# -- tables -----------------------------------------------------------------------------------


def _stage_table(summary: dict[str, Any]) -> list[str]:
    modes = list(summary)
    header = "| stage (ms from end of turn) | " + " | ".join(f"{m} median | {m} p95" for m in modes)
    lines = [header + " |", "|---" * (1 + 2 * len(modes)) + "|"]
    for stage in STAGES:
        cells = []
        for mode in modes:
            value = summary[mode]["stages_ms"].get(stage)
            cells += [f"{value['median']:.0f}", f"{value['p95']:.0f}"] if value else ["–", "–"]
        if any(c != "–" for c in cells):
            lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    counts = "; ".join(
        f"{m}: {summary[m]['turns']} turns, {summary[m]['speculative_turns']} answered by a "
        "committed speculation"
        for m in modes
    )
    lines += ["", f"Turns — {counts}."]
    return lines


def markdown(results: dict[str, Any]) -> str:
    out = [f"Stack start-up: {results['stack_startup_s']} s.", ""]
    plain = results["plain"]
    out += ["**(a) Plain turns: end of turn → first audio, stage breakdown**", ""]
    out += _stage_table(plain["summary"])
    spec, saved = plain["speculation"], plain["latency_saved"]
    out += [
        "",
        f"Speculation on: {spec['committed']:.0f} of {spec['started']:.0f} speculations "
        f"committed ({spec['commit_rate']:.0%}); first audio median "
        f"{saved['first_audio_off_median_ms']:.0f} ms without speculation vs "
        f"{saved['first_audio_committed_median_ms']:.0f} ms for committed speculative turns "
        f"(median saving per clip {saved['median_saved_ms']:.0f} ms, {saved['pairs']} pairs).",
        "",
    ]
    pauses = results["pauses"]
    spec, saved, comp = pauses["speculation"], pauses["latency_saved"], pauses["compression"]
    out += [
        f"**(b) Clips with a {results['pause_s'] * 1000:.0f} ms mid-sentence pause "
        "(transcription on, audio_turns_kept = 1)**",
        "",
    ]
    out += _stage_table(pauses["summary"])
    out += [
        "",
        "| measure | value |",
        "|---|---|",
        f"| speculations started / committed / discarded | {spec['started']:.0f} / "
        f"{spec['committed']:.0f} / {spec['discarded']:.0f} |",
        f"| commit rate | {spec['commit_rate']:.0%} |",
        f"| first audio, no speculation (median) | {saved['first_audio_off_median_ms']:.0f} ms |",
        f"| first audio, committed speculation (median) | "
        f"{saved['first_audio_committed_median_ms']:.0f} ms |",
        f"| latency saved per committed turn (median of {saved['pairs']} clip pairs) | "
        f"{saved['median_saved_ms']:.0f} ms |",
        "| context: audio tokens replaced ÷ transcript tokens | "
        f"{comp['audio_tokens_replaced']:.0f} ÷ {comp['transcript_tokens']:.0f} = "
        f"{comp['ratio']} |",
        f"| same with the clips' true text (perfect ASR), tiny tokenizer | "
        f"{comp['audio_tokens_per_turn']} ÷ {comp['true_text_tokens_per_turn']} = "
        f"{comp['true_text_ratio']} |",
        "",
    ]
    if "pipelines" in results:
        out += ["**(c) Cascade vs end-to-end (AQAA-style) pipeline**", ""]
        out += _stage_table(results["pipelines"]["summary"])
        errors = {m: s["errors"] for m, s in results["pipelines"]["summary"].items() if s["errors"]}
        if errors:
            out += ["", f"Error events seen: {errors}."]
        out.append("")
    else:
        out += ["(c) skipped: the model root has no Step-Audio-AQAA/ (no end-to-end LLM).", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="model root (default: tiny aqaa pack)")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the plain clips")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tiny-pack-") as scratch:
        root = args.model_dir
        if root is None:
            from services.models.tiny import write_tiny_pack

            root = write_tiny_pack(Path(scratch), variant="aqaa")
        results = run(root, repeats=args.repeats)
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
