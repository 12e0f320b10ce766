"""docker-compose.yml, checked without docker: its structure, that every service variable is a
real setting with a valid value, and that the health-check one-liners work against real
servers."""

from __future__ import annotations

import http.server
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.deploy._support import (
    ROOT,
    build_settings,
    interpolate_defaults,
    prefix_of,
    unknown_settings,
)

COMPOSE = ROOT / "docker-compose.yml"
APP = {
    "vad": ("VAD_", 50051),
    "tokenizer": ("TOKENIZER_", 50052),
    "llm": ("LLM_", 50053),
    "tts": ("TTS_", 50054),
    "llm-gpu": ("LLM_", 50053),
    "tts-gpu": ("TTS_", 50054),
    "controller": ("CONTROLLER_", 8000),
}
MODELS_VOLUME = "${STEPAUDIO_MODEL_DIR:-./models/tiny}:/models:ro"
OBSERVABILITY = ("redis-exporter", "prometheus", "grafana")
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def env_of(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment as a mapping"
    return {k: None if v is None else str(v) for k, v in env.items()}


def test_services_and_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", *APP, *OBSERVABILITY}
    for name, service in services.items():
        expected = ["gpu"] if name.endswith("-gpu") else None
        assert service.get("profiles") == expected, name


def test_redis_appends_to_a_volume(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert redis["volumes"] == ["redis-data:/data"]
    assert "redis-data" in compose["volumes"]
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_app_services_share_the_image_and_run_one_service(compose: dict[str, Any]) -> None:
    for name, (prefix, port) in APP.items():
        service = compose["services"][name]
        component = name.removesuffix("-gpu")
        assert service["command"] == ["serve", component], name
        gpu = name.endswith("-gpu")
        dockerfile = "deploy/docker/Dockerfile.gpu" if gpu else "deploy/docker/Dockerfile"
        assert service["build"] == {"context": ".", "dockerfile": dockerfile}
        assert (ROOT / dockerfile).is_file()
        assert service["init"] is True
        env = env_of(service)
        assert env[f"{prefix}HOST"] == "0.0.0.0", name
        assert env[f"{prefix}PORT"] == str(port), name
        if component in ("tokenizer", "llm", "tts"):
            assert MODELS_VOLUME in service["volumes"], name
            assert env[f"{prefix}MODEL_DIR"] == "/models", name


def test_every_env_var_is_a_setting_with_a_valid_value(compose: dict[str, Any]) -> None:
    for name, (prefix, _) in APP.items():
        env = env_of(compose["services"][name])
        assert {prefix_of(k) for k in env} == {prefix}, name
        assert not unknown_settings(list(env), prefix), name
        # unset shell variables: defaults of ${VAR:-default}; bare names stay unset
        values = {k: interpolate_defaults(v) for k, v in env.items() if v is not None}
        build_settings(prefix, values)


def test_healthchecks_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, (_, port) in APP.items():
        check = services[name]["healthcheck"]
        assert check["test"][:3] == ["CMD", "python", "-c"], name
        assert "start_period" in check and check["retries"] >= 3
        if name != "controller":
            assert check["test"][-1] == str(port), name
            assert "grpc_health" in check["test"][3]
    assert "/readyz" in services["controller"]["healthcheck"]["test"][3]
    depends = services["controller"]["depends_on"]
    assert set(depends) == {"redis", *APP} - {"controller"}
    for name, rule in depends.items():
        assert rule["condition"] == "service_healthy", name
        # the CPU and GPU variants of the LLM and TTS replace each other
        assert rule.get("required", True) is (name in ("redis", "vad", "tokenizer")), name


def test_controller_targets_the_services(compose: dict[str, Any]) -> None:
    env = env_of(compose["services"]["controller"])
    assert interpolate_defaults(env["CONTROLLER_REDIS__URL"] or "") == "redis://redis:6379/0"
    for name in ("vad", "tokenizer", "llm", "tts"):
        target = interpolate_defaults(env[f"CONTROLLER_SERVICES__{name.upper()}"] or "")
        assert target == f"{name}:{APP[name][1]}"
    assert interpolate_defaults(env["CONTROLLER_SERVICES__E2E_LLM"] or "") == ""
    assert compose["services"]["controller"]["ports"] == ["${STEPAUDIO_PORT:-8000}:8000"]


def test_gpu_profile_runs_vllm_on_reserved_gpus(compose: dict[str, Any]) -> None:
    llm = compose["services"]["llm-gpu"]
    assert env_of(llm)["LLM_ENGINE"] == "vllm"
    assert env_of(compose["services"]["llm"])["LLM_ENGINE"] == "torch"
    # TP and fp8 come from the shell under their real names (docs/deploy.md)
    assert env_of(llm)["LLM_VLLM__TENSOR_PARALLEL_SIZE"] is None
    assert env_of(llm)["LLM_VLLM__QUANTIZATION"] is None
    for name in ("llm-gpu", "tts-gpu"):
        service = compose["services"][name]
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert service["shm_size"]
    assert env_of(compose["services"]["tts-gpu"])["TTS_DEVICE"] == "cuda"


# ---------- the health-check commands against real servers ----------


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, servicer
    server.stop(None)


def run_check(test: list[str], *args: str) -> int:
    assert test[:2] == ["CMD", "python"]
    command = [sys.executable, *test[2:-1], *args] if args else [sys.executable, *test[2:]]
    return subprocess.run(command, capture_output=True, timeout=30, check=False).returncode


def test_grpc_healthcheck_passes_only_when_serving(
    compose: dict[str, Any], health_server: tuple[int, health.HealthServicer]
) -> None:
    port, servicer = health_server
    test = compose["services"]["vad"]["healthcheck"]["test"]
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert run_check(test, str(port)) == 1
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert run_check(test, str(port)) == 0


def free_port() -> int:
    """A local port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_grpc_healthcheck_fails_without_a_server(compose: dict[str, Any]) -> None:
    test = compose["services"]["llm"]["healthcheck"]["test"]
    assert run_check(test, str(free_port())) == 1


def test_controller_healthcheck_follows_readyz(compose: dict[str, Any]) -> None:
    status = {"code": 503}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status["code"] if self.path == "/readyz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        test = list(compose["services"]["controller"]["healthcheck"]["test"])
        test[3] = test[3].replace("127.0.0.1:8000", f"127.0.0.1:{server.server_port}")
        assert run_check(test) == 1
        status["code"] = 200
        assert run_check(test) == 0
    finally:
        server.shutdown()
        server.server_close()


# ---------- Prometheus and Grafana ----------


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path → host path of the service's bind mounts."""
    found = {}
    for volume in service["volumes"]:
        host, container, *_ = volume.split(":")
        if host.startswith("./"):
            found[container] = ROOT / host
    return found


def test_prometheus_scrapes_every_service_and_loads_the_rules(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    prometheus = compose["services"]["prometheus"]
    files = mounts(prometheus)
    config = yaml.safe_load(files["/etc/prometheus/prometheus.yml"].read_text())
    (rule_file,) = config["rule_files"]
    assert files[rule_file] == ROOT / "deploy/prometheus/stepaudio-rules.yml"
    scraped = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            scraped.update(dict.fromkeys(sd["names"], sd["port"]))
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                name, port = target.split(":")
                scraped[name] = int(port)
        assert job["job_name"] == "dcgm" or job["job_name"].startswith("stepaudio-")
    for name, (prefix, port) in APP.items():
        env = env_of(compose["services"][name])
        metrics_port = int(env[f"{prefix}METRICS_PORT"] or 0) if name != "controller" else port
        assert scraped[name] == metrics_port, name
    assert scraped["redis-exporter"] == 9121
    assert (
        compose["services"]["redis-exporter"]["environment"]["REDIS_ADDR"] == "redis://redis:6379"
    )
    # the real promtool accepts the config, with the rules at their path on this machine
    config["rule_files"] = [str(files[rule_file])]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [PROMTOOL, "check", "config", str(local)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_is_provisioned_with_the_datasource_and_dashboards(
    compose: dict[str, Any],
) -> None:
    grafana = compose["services"]["grafana"]
    files = mounts(grafana)
    provisioning = files["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards/stepaudio.yml").read_text())[
        "providers"
    ]
    dashboards = files[provider["options"]["path"]]
    assert dashboards == ROOT / "deploy/grafana/dashboards"
    assert {p.name for p in dashboards.glob("*.json")} >= {"stepaudio-overview.json"}
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards / Path(home).name).is_file()
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"
