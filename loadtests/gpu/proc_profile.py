"""Where a capacity point's CPU goes: cores used per service process tree, and py-spy stack
dumps of every service mid-point.

nvidia-smi shows the GPU's share; this shows the host's. Each direct child of ``stepaudio serve``
is one service (its vLLM engine-core subprocess counted with it); the load generator is this
process and its children. Cores used = CPU seconds (utime + stime, /proc) over the point's wall
time. A service near its thread cap (or near 1.0 for a single-threaded event loop) is CPU-bound.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PY_SPY_CANDIDATES = ("/tmp/site.gpustack-extra/bin/py-spy", "/tmp/site.gpustack/bin/py-spy")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # fields from the state on (comm may hold spaces)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) is not None:
            tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def _descendants(pid: int, tree: dict[int, list[int]]) -> list[int]:
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(tree.get(current, []))
    return found


def _name_of(pid: int) -> str:
    with contextlib.suppress(OSError):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        for i, arg in enumerate(argv):
            if arg == b"-m" and i + 1 < len(argv):
                return argv[i + 1].decode().removeprefix("services.")
        return Path(argv[0].decode()).name
    return str(pid)


def _cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        if (fields := _stat_fields(pid)) is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS_PER_S


def groups(stack_pid: int) -> dict[str, list[int]]:
    """{service: its process tree} under serve, plus 'loadgen' (this process and its
    children)."""
    tree = _children()
    result = {_name_of(child): _descendants(child, tree) for child in tree.get(stack_pid, [])}
    result["loadgen"] = _descendants(os.getpid(), tree)  # in-process with one worker
    return result


def _host_busy_s() -> tuple[float, int]:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + values[4]
    return (sum(values) - idle) / TICKS_PER_S, os.cpu_count() or 1


class ProcessProfile:
    """Cores used per service over a point, and one py-spy dump per service at ``dump_at_s``.

    The process trees are looked up at the start and again at the end (the load generator's
    workers start after the point does)."""

    def __init__(self, stack_pid: int | None, dump_dir: Path, label: str, dump_at_s: float) -> None:
        self.stack_pid, self.dump_dir, self.label, self.dump_at_s = (
            stack_pid, dump_dir, label, dump_at_s,
        )  # fmt: skip
        self.cores: dict[str, float] = {}
        self._timer: threading.Timer | None = None

    def __enter__(self) -> ProcessProfile:
        self._started = time.monotonic()
        self._host = _host_busy_s()[0]
        self._before = self._snapshot()
        self._timer = threading.Timer(self.dump_at_s, self._dump)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        wall = max(1e-6, time.monotonic() - self._started)
        after = self._snapshot()
        self.cores = {
            name: round((used - self._before.get(name, 0.0)) / wall, 2)
            for name, used in sorted(after.items())
        }
        busy, cpus = _host_busy_s()
        self.cores["host"] = round((busy - self._host) / wall, 2)
        self.cores["host_cpus"] = float(cpus)

    def _snapshot(self) -> dict[str, float]:
        if self.stack_pid is None:
            return {}
        return {name: _cpu_s(pids) for name, pids in groups(self.stack_pid).items()}

    def _dump(self) -> None:
        """py-spy's stacks of every service process (threads, idle ones left out)."""
        py_spy = next((p for p in PY_SPY_CANDIDATES if os.access(p, os.X_OK)), None)
        py_spy = py_spy or shutil.which("py-spy")
        if py_spy is None or self.stack_pid is None:
            return
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        for name, pids in groups(self.stack_pid).items():
            if name in ("loadgen", "redis-server"):
                continue
            path = self.dump_dir / f"pyspy-{self.label}-{name}.txt"
            with path.open("w") as out:
                for pid in pids:
                    out.write(f"=== {name} pid {pid}\n")
                    out.flush()
                    with contextlib.suppress(subprocess.SubprocessError, OSError):
                        subprocess.run(
                            [py_spy, "dump", "--pid", str(pid), "--nonblocking"],
                            stdout=out, stderr=subprocess.STDOUT, timeout=20, check=False,
                        )  # fmt: skip
