"""All GPU checks and benchmarks, each in its own process (``make bench-gpu``).

    python3 -m loadtests.gpu.bench [--only equivalence,lm,token2wav,streams] [--out DIR]
        [--profile V]

Needs a CUDA GPU with vLLM 0.26 importable (the devpack: PYTHONPATH=/tmp/site). Results land
in --out (default $OUT, else var/gpu-bench): equivalence.json, bench_lm.jsonl/.md,
bench_token2wav.json, bench_streams.json, profile_*.txt. Exit status: non-zero if any part
failed. token2wav and streams need no vLLM.
"""

from __future__ import annotations

import argparse
import sys

from loadtests.gpu.common import out_dir, run_child

PARTS = {
    "equivalence": ("loadtests.gpu.equivalence", 900),
    "lm": ("loadtests.gpu.bench_lm", 2400),
    "token2wav": ("loadtests.gpu.bench_token2wav", 900),
    "streams": ("loadtests.gpu.bench_streams", 900),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS), help="parts to run, in order")
    parser.add_argument("--out")
    parser.add_argument("--profile", default="compiled", help="bench_lm variants to profile")
    parser.add_argument("--variants", default=None, help="bench_lm variants (default: all)")
    args = parser.parse_args(argv)
    out = str(out_dir(args.out))
    failed = []
    for part in args.only.split(","):
        module, timeout_s = PARTS[part]
        extra = ["--out", out]
        if part == "lm":
            extra += ["--profile", args.profile]
            extra += ["--variants", args.variants] if args.variants else []
        code, seconds = run_child(module, extra, timeout_s)
        print(f"== {part}: exit {code} after {seconds:.0f} s", flush=True)
        if code:
            failed.append(part)
    print("FAILED: " + ", ".join(failed) if failed else "all parts passed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
