"""A real Prometheus (the distribution's binary) on a free local port, scraping given targets
every second and evaluating the stack's rules: the observability integration test and the
docs' dashboard renderings use it against a locally running stack.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from deploy.prometheus.rules import RULES_FILE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape_config(targets: Mapping[str, str], interval_s: float) -> dict[str, Any]:
    """Jobs ``stepaudio-<name>`` (as in compose) scraping ``host:port`` /metrics."""
    interval = f"{int(interval_s * 1000)}ms"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(RULES_FILE)],
        "scrape_configs": [
            {"job_name": f"stepaudio-{name}", "static_configs": [{"targets": [target]}]}
            for name, target in targets.items()
        ],
    }


class LocalPrometheus:
    """``with LocalPrometheus(workdir, {"vad": "127.0.0.1:9101"}) as prom: prom.query(expr)``."""

    def __init__(
        self, workdir: Path, targets: Mapping[str, str], *, interval_s: float = 1.0
    ) -> None:
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        if not Path(binary).exists():
            raise RuntimeError("prometheus is not installed (apt-get install prometheus)")
        self.binary = binary
        self.workdir = workdir
        self.targets = dict(targets)
        self.interval_s = interval_s
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> LocalPrometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(self.targets, self.interval_s)))
        log = (self.workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited: {(self.workdir / 'prometheus.log').read_text()}"
                )
            try:
                if self.http.get("/-/ready").status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"prometheus not ready on port {self.port} within {timeout_s} s")

    def stop(self) -> None:
        self.http.close()
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        reply = self.http.get(path, params=params)
        body = reply.json()
        if body.get("status") != "success":
            raise ValueError(f"{params.get('query')}: {body.get('error', reply.text)}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query: the result vector (empty = no data)."""
        return list(self._get("/api/v1/query", {"query": expr})["result"])

    def query_range(
        self, expr: str, start: float, end: float, step_s: float
    ) -> list[dict[str, Any]]:
        params = {"query": expr, "start": start, "end": end, "step": step_s}
        return list(self._get("/api/v1/query_range", params)["result"])

    def targets_up(self) -> dict[str, bool]:
        active = self._get("/api/v1/targets", {})["activeTargets"]
        return {t["labels"]["job"]: t["health"] == "up" for t in active}

    def rules(self) -> list[dict[str, Any]]:
        groups = self._get("/api/v1/rules", {})["groups"]
        return [rule for group in groups for rule in group["rules"]]
