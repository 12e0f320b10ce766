"""`make bench`: every CPU benchmark on one tiny model pack, then a markdown summary.

    python -m loadtests.bench [--model-dir ROOT] [--out FILE] [--json FILE] [--repeats 2]

Runs, in order, ``loadtests.bench_tokenizer``, ``bench_token2wav``, ``bench_lm`` and
``bench_dialogue`` (the whole stack as subprocesses) on ROOT, or on the tiny pack with its
AQAA variant written once to a temporary folder. Each table is printed as its benchmark ends;
the markdown summary follows on stdout (and goes to ``--out``). docs/benchmarks.md explains
every number.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtests import bench_dialogue, bench_lm, bench_token2wav, bench_tokenizer

Bench = Callable[[Path], dict[str, Any]]
BENCHES: tuple[tuple[str, str, Bench], ...] = (
    ("tokenizer", "Audio tokenizer (real-time factor, 10 s of speech)", bench_tokenizer.run),
    ("token2wav", "token2wav vocoder (10 s of audio)", bench_token2wav.run),
    ("lm", "Step1 engine decode speed (tiny TTS LM)", bench_lm.run),
)


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores_usable": usable,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "os": platform.platform(terse=True),
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def kv_table(results: dict[str, Any], root: Path) -> list[str]:
    lines = ["| measure | value |", "|---|---|"]
    for key, value in results.items():
        if isinstance(value, str) and value.startswith(str(root)):
            value = os.path.relpath(value, root)  # the pack's temporary path says nothing
        lines.append(f"| {key} | {_fmt(value)} |")
    return lines


def summary(
    results: dict[str, Any], seconds: dict[str, float], info: dict[str, Any], root: Path
) -> str:
    started = info["date"]
    out = [
        f"# Benchmarks ({started})",
        "",
        f"Command: `{info['command']}`  ",
        f"Machine: {info['machine']['cpu']}, {info['machine']['cores_usable']} usable cores, "
        f"CPU only; Python {info['machine']['python']}, torch {info['machine']['torch']}  ",
        f"Models: {info['models']}  ",
        "Run times: "
        + ", ".join(f"{name} {secs:.0f} s" for name, secs in seconds.items())
        + f" (total {sum(seconds.values()):.0f} s)",
        "",
    ]
    for name, title, _ in BENCHES:
        out += [f"## {title}", "", *kv_table(results[name], root), ""]
    dialogue = bench_dialogue.markdown(results["dialogue"])
    out += ["## Spoken dialogue over the whole stack", "", dialogue]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="model root (default: tiny aqaa pack)")
    parser.add_argument("--out", type=Path, help="also write the markdown summary here")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--repeats", type=int, default=2, help="bench_dialogue passes")
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"python -m loadtests.bench {shlex.join(given)}".strip(),
        "machine": machine(),
    }
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pack-") as scratch:
        root = args.model_dir
        if root is None:
            from services.models.tiny import write_tiny_pack

            started = time.perf_counter()
            root = write_tiny_pack(Path(scratch), variant="aqaa")
            seconds["tiny pack"] = time.perf_counter() - started
            info["models"] = "tiny pack (aqaa variant), written by services.models.tiny"
        else:
            info["models"] = str(root)
        for name, title, bench in BENCHES:
            print(f"== {title}", flush=True)
            started = time.perf_counter()
            results[name] = bench(root)
            seconds[name] = time.perf_counter() - started
            print("\n".join(kv_table(results[name], root)) + "\n", flush=True)
        print("== Spoken dialogue over the whole stack (real-time clips)", flush=True)
        started = time.perf_counter()
        results["dialogue"] = bench_dialogue.run(root, repeats=args.repeats)
        seconds["dialogue"] = time.perf_counter() - started
        print(bench_dialogue.markdown(results["dialogue"]) + "\n", flush=True)
        text = summary(results, seconds, info, root)
    print("=" * 78)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        payload = {"info": info, "seconds": seconds, "results": results}
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
