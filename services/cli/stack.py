"""The local stack: redis-server (unless one is configured), four gRPC services, controller.

Each part runs as its own process (``python -m services.<name>``), configured only through
environment variables, exactly as a container would be. Stopping sends SIGTERM to all and
waits; Ctrl-C does the same.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.cli import CliError
from services.models import layout

SERVICES = ("vad", "tokenizer", "llm", "tts")
START_TIMEOUT_S = 180.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_port_free(host: str, port: int) -> None:
    """Refuse a port that something else holds, before any process is started."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise CliError(
                f"port {port} on {host} is in use ({exc.strerror}): stop what holds it "
                "or pick another with --port"
            ) from None


def check_model_root(root: Path) -> None:
    """The three model folders exist and can be read, before any service tries to load them."""
    for folder in (root, layout.chat_dir(root), layout.tts_dir(root), layout.tokenizer_dir(root)):
        if not folder.is_dir():
            raise CliError(
                f"no model folder {folder}: point --model-dir / STEPAUDIO_MODEL_DIR at a model "
                "root holding the Step-Audio folders (README), or write the tiny pack with "
                f"`stepaudio models tiny --out {root}`"
            )
        if not os.access(folder, os.R_OK | os.X_OK):
            raise CliError(f"model folder {folder} is not readable by this user: fix its mode")


def last_log_line(log: Path) -> str:
    """The last non-empty line a process wrote: usually the reason it stopped."""
    with contextlib.suppress(OSError):
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()
    return "(no output)"


def exited_error(name: str, process: subprocess.Popen[bytes], log: Path) -> CliError:
    return CliError(
        f"{name} exited with code {process.returncode} while starting: {last_log_line(log)} "
        f"(whole log: {log})"
    )


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], name: str, timeout_s: float, log: Path
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise exited_error(name, process, log)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise CliError(f"{name} did not open port {port} within {timeout_s:.0f} s (log: {log})")


def wait_serving(
    port: int, process: subprocess.Popen[bytes], name: str, timeout_s: float, log: Path
) -> None:
    """Poll a service's gRPC health until SERVING (its models loaded and warmed up)."""
    deadline = time.monotonic() + timeout_s
    request = health_pb2.HealthCheckRequest(service="")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise exited_error(name, process, log)
            with contextlib.suppress(grpc.RpcError):
                # types-grpcio-health-checking declares HealthStub without its methods
                reply = stub.Check(request, timeout=2)  # type: ignore[attr-defined]
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.25)
    raise CliError(f"{name} was not SERVING within {timeout_s:.0f} s (log: {log})")


def wait_ready(
    url: str, processes: dict[str, subprocess.Popen[bytes]], timeout_s: float, logs: Path
) -> None:
    """Poll the controller's /readyz until every service reports SERVING."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                raise exited_error(name, process, logs / f"{name}.log")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise CliError(
        f"the stack was not ready within {timeout_s:.0f} s ({url}/readyz); logs in {logs}"
    )


@dataclass
class LocalStack:
    model_dir: Path
    workdir: Path
    host: str = "127.0.0.1"
    controller_port: int = 8000
    redis_url: str | None = None
    log_level: str = "INFO"
    extra_env: dict[str, str] = field(default_factory=dict)
    serve_metrics: bool = False  # each gRPC service serves /metrics on a free port
    # one service at a time, each SERVING before the next starts: two vLLM engines must not
    # measure GPU memory while another process is allocating it (one GPU host)
    sequential: bool = False
    start_timeout_s: float = START_TIMEOUT_S
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    commands: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.controller_port}"

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.processes[name] = process
        self.commands[name] = (args, env)
        return process

    def respawn(self, name: str) -> subprocess.Popen[bytes]:
        """Start a part again with its command and environment (same port; supervisor)."""
        return self._spawn(name, *self.commands[name])

    def _base_env(self) -> dict[str, str]:
        # the shell's settings (LLM_ENGINE=vllm, ...) pass through; the stack sets ports etc.
        env = dict(os.environ)
        env.update(self.extra_env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def start(self) -> LocalStack:
        check_port_free(self.host, self.controller_port)
        check_model_root(self.model_dir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_redis()
            self.start_services()
            self._start_controller()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_redis(self) -> None:
        if self.redis_url:
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise CliError(
                "redis-server is not installed: run `make setup` (as root it installs it), "
                "or `apt-get install redis-server`, or point CONTROLLER_REDIS__URL at a Redis"
            )
        port = free_port()
        data = self.workdir / "redis"
        data.mkdir(exist_ok=True)
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                "--appendonly", "yes", "--save", ""]  # fmt: skip
        redis = self._spawn("redis", args, self._base_env())
        wait_for_port(port, redis, "redis-server", 20, self.workdir / "redis.log")
        self.redis_url = f"redis://127.0.0.1:{port}/0"

    def start_services(self) -> None:
        for name in SERVICES:
            port = self.ports.setdefault(name, free_port())  # reserved: the controller came first
            prefix = name.upper()
            env = self._base_env() | {
                f"{prefix}_PORT": str(port),
                f"{prefix}_HOST": "127.0.0.1",
                f"{prefix}_LOG_LEVEL": self.log_level,
            }
            if self.serve_metrics:
                self.metrics_ports[name] = free_port()
                env[f"{prefix}_METRICS_PORT"] = str(self.metrics_ports[name])
            if name != "vad":
                env[f"{prefix}_MODEL_DIR"] = str(self.model_dir)
            if name == "tts":
                env["TTS_VOICES_DIR"] = str(self.workdir / "voices")
            process = self._spawn(name, [sys.executable, "-m", f"services.{name}"], env)
            if self.sequential:
                started = time.monotonic()
                wait_serving(
                    port, process, name, self.start_timeout_s, self.workdir / f"{name}.log"
                )
                print(f"{name} SERVING after {time.monotonic() - started:.1f} s", flush=True)
        if (self.model_dir / layout.AQAA_DIR).is_dir():
            port = self.ports.setdefault("e2e_llm", free_port())
            env = self._base_env() | {
                "LLM_PORT": str(port),
                "LLM_MODEL_DIR": str(self.model_dir),
                "LLM_MODEL_NAME": layout.AQAA_DIR,
                "LLM_LOG_LEVEL": self.log_level,
            }
            self._spawn("e2e_llm", [sys.executable, "-m", "services.llm"], env)
        for name, port in self.ports.items():
            log = self.workdir / f"{name}.log"
            wait_for_port(port, self.processes[name], name, self.start_timeout_s, log)

    def _start_controller(self, *, wait: bool = True) -> None:
        env = self._base_env() | {
            "CONTROLLER_HOST": self.host,
            "CONTROLLER_PORT": str(self.controller_port),
            "CONTROLLER_LOG_LEVEL": self.log_level,
            "CONTROLLER_REDIS__URL": str(self.redis_url),
        }
        if self.host in LOOPBACK_HOSTS:  # a local demo: no keys (the controller warns loudly)
            env.setdefault("CONTROLLER_AUTH__ENABLED", "false")
        for name, port in self.ports.items():
            env[f"CONTROLLER_SERVICES__{name.upper()}"] = f"127.0.0.1:{port}"
        self._spawn("controller", [sys.executable, "-m", "services.controller"], env)
        if wait:
            wait_ready(self.url, self.processes, self.start_timeout_s, self.workdir)

    def start_controller_first(self) -> list[str]:
        """Redis and the controller only, pointed at ports reserved for the services, which
        are not started (a start-order test; Kubernetes starts pods in any order); then
        :meth:`start_services`. Returns the services the controller waits for."""
        check_port_free(self.host, self.controller_port)
        check_model_root(self.model_dir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        names = list(SERVICES)
        if (self.model_dir / layout.AQAA_DIR).is_dir():
            names.append("e2e_llm")
        for name in names:
            self.ports[name] = free_port()
        self._start_redis()
        self._start_controller(wait=False)
        return names

    def stop(self, timeout_s: float = 20.0) -> None:
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
