"""Render every dashboard to a PNG from a short load run on the local stack (docs/img/).

Grafana cannot be installed on the machine the docs are built on, so this draws each panel
with matplotlib from the same PromQL its JSON holds, queried from a real Prometheus (the
distribution's binary, with the stack's rules) that scraped the real stack during the run:

    python -m deploy.grafana.render --model-dir models/tiny --out docs/img

It starts the subprocess stack (``stepaudio serve``'s ``LocalStack``, each service with a
metrics port), Debian's ``prometheus-redis-exporter`` when installed (Redis panels), and
Prometheus; drives concurrent realtime sessions (spoken turns, speculation on half of them,
an unknown event now and then); then queries every panel over the run. GPU panels stay empty
here: they need NVIDIA's dcgm-exporter on a GPU node.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the headless backend

from deploy.grafana import dashboards  # noqa: E402
from deploy.prometheus.local import LocalPrometheus, free_port  # noqa: E402
from services.cli.realtime_client import RealtimeClient  # noqa: E402
from services.cli.stack import LocalStack  # noqa: E402
from services.common.audio import decode_audio_file  # noqa: E402
from services.models.tiny import ASSETS  # noqa: E402

log = logging.getLogger(__name__)
GRID_UNIT_PX = (60, 34)  # one Grafana grid column / row, in pixels of the PNG
DPI = 100
TOP_PX = 64  # the dashboard title


# ---------------------------------------------------------------------------- load


async def one_session(url: str, turns: int, speculative: bool, index: int) -> int:
    samples, rate = decode_audio_file(ASSETS / "demo_question.wav")
    done = 0
    async with RealtimeClient(url) as client:
        await client.configure(speculative=speculative)
        for turn in range(turns):
            if (index + turn) % 3 == 0:
                await client.send({"type": "no.such.event"})  # an error by code on the board
            result = await client.speak_and_wait(
                samples, rate, tolerate=("unknown_event", "overloaded")
            )
            done += result.done.get("status") == "completed"
    return done


async def drive_load(url: str, sessions: int, turns: int) -> int:
    runs = [one_session(url, turns, i % 2 == 0, i) for i in range(sessions)]
    return sum(await asyncio.gather(*runs))


def start_redis_exporter(redis_url: str) -> tuple[subprocess.Popen[bytes] | None, int]:
    binary = shutil.which("prometheus-redis-exporter")
    if binary is None:
        log.warning("prometheus-redis-exporter not installed: the Redis panels stay empty")
        return None, 0
    port = free_port()
    address = redis_url.removeprefix("redis://").split("/")[0]
    process = subprocess.Popen(
        [binary, f"--redis.addr=redis://{address}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, port


# ---------------------------------------------------------------------------- drawing


def legend_text(template: str, labels: dict[str, str]) -> str:
    if not template:
        return ",".join(f"{k}={v}" for k, v in labels.items() if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


def draw_timeseries(ax: Any, series: list[tuple[str, list[Any]]], unit: str) -> None:
    for name, values in series:
        times = [float(t) for t, _ in values]
        numbers = [float(v) for _, v in values]
        ax.plot([t - times[0] if times else 0 for t in times], numbers, label=name, linewidth=1.4)
    ax.set_xlabel("seconds into the run", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if unit in ("s", "percentunit", "bytes", "reqps"):
        ax.set_ylabel({"s": "seconds", "percentunit": "ratio", "bytes": "bytes",
                       "reqps": "per second"}[unit], fontsize=7)  # fmt: skip
    if series:
        ax.legend(fontsize=6, loc="upper left", ncol=2, framealpha=0.6)


def draw_stat(ax: Any, series: list[tuple[str, list[Any]]], unit: str) -> None:
    ax.set_axis_off()
    if not series:
        return
    value = float(series[0][1][-1][1])
    text = "NaN" if value != value else f"{value:.3g}"
    if unit == "percentunit" and value == value:
        text = f"{value:.1%}"
    ax.text(0.5, 0.4, text, ha="center", va="center", fontsize=22, color="#1f6feb")


def render_board(board: dict[str, Any], prometheus: LocalPrometheus, start: float, end: float,
                 out: Path) -> Path:  # fmt: skip
    panels = board["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    width, height = 24 * GRID_UNIT_PX[0], rows * GRID_UNIT_PX[1] + TOP_PX
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    fig.text(0.006, 1 - 28 / height, board["title"], fontsize=14, weight="bold")
    step = max(2.0, (end - start) / 200)
    ux, uy = GRID_UNIT_PX
    for panel in panels:
        pos = panel["gridPos"]
        if panel["type"] == "row":
            top = TOP_PX + pos["y"] * uy + 22
            fig.text(0.006, 1 - top / height, panel["title"], fontsize=11, weight="bold",
                     color="#444444")  # fmt: skip
            continue
        left, top = pos["x"] * ux + 40, TOP_PX + pos["y"] * uy + 22  # room for the title
        box_w, box_h = pos["w"] * ux - 60, pos["h"] * uy - 22 - 30  # and for the x labels
        box = [left / width, 1 - (top + box_h) / height, box_w / width, box_h / height]
        ax = fig.add_axes(box)
        ax.set_title(panel["title"], fontsize=9, loc="left")
        series: list[tuple[str, list[Any]]] = []
        external = False
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        for _, expr, legend in dashboards.panel_queries({**board, "panels": [panel]}):
            external = external or dashboards.is_external(expr)
            for result in prometheus.query_range(expr, start, end, step):
                series.append((legend_text(legend, result["metric"]), result["values"]))
        if panel["type"] == "stat":
            draw_stat(ax, series, unit)
        else:
            draw_timeseries(ax, series, unit)
        if not series:
            why = "no data: needs NVIDIA dcgm-exporter" if external else "no data"
            ax.text(0.5, 0.5, why, ha="center", va="center", fontsize=9, color="gray",
                    transform=ax.transAxes)  # fmt: skip
    path = out / f"dashboard-{board['uid']}.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models/tiny"))
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--turns", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stepaudio-render-") as tmp:
        workdir = Path(tmp)
        stack = LocalStack(args.model_dir, workdir / "stack", controller_port=free_port(),
                           serve_metrics=True, log_level="WARNING")  # fmt: skip
        stack.start()
        exporter, exporter_port = start_redis_exporter(str(stack.redis_url))
        try:
            targets = {"controller": f"127.0.0.1:{stack.controller_port}"}
            targets |= {name: f"127.0.0.1:{port}" for name, port in stack.metrics_ports.items()}
            if exporter is not None:
                targets["redis"] = f"127.0.0.1:{exporter_port}"
            with LocalPrometheus(workdir / "prometheus", targets, interval_s=2.0) as prometheus:
                start = time.time()
                completed = asyncio.run(drive_load(stack.url, args.sessions, args.turns))
                time.sleep(10)  # a few more scrapes and rule evaluations after the last turn
                end = time.time()
                log.info("load run: %d turns completed in %.0f s", completed, end - start)
                for path in sorted(dashboards.OUT_DIR.glob("*.json")):
                    board = json.loads(path.read_text())
                    written = render_board(board, prometheus, start, end, args.out)
                    log.info("wrote %s", written)
        finally:
            if exporter is not None:
                exporter.terminate()
                exporter.wait(timeout=10)
            stack.stop()


if __name__ == "__main__":
    main()
