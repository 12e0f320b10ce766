"""charts/stepaudio rendered and linted with the real Helm library (helm-python-sdk, Helm v4 SDK,
no helm binary): default values, the 130B Chat presets and the optional features."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest
import yaml

from deploy.grafana import dashboards
from deploy.prometheus import rules
from services.lm_engine.vllm_settings import VllmEngineSettings
from tests.deploy._support import (
    CHART,
    FULLNAME,
    NAMESPACE,
    PRESETS,
    Manifests,
    build_settings,
    load_values,
    prefix_of,
    render,
    service_address,
    unknown_settings,
)

GRPC_SERVICES = {"vad": 50051, "tokenizer": 50052, "llm": 50053, "tts": 50054}
OWNER_PREFIX = {
    "vad": "VAD_",
    "tokenizer": "TOKENIZER_",
    "llm": "LLM_",
    "e2e-llm": "LLM_",
    "tts": "TTS_",
    "controller": "CONTROLLER_",
}
# every optional part switched on (tiny models, so it renders without real storage)
ALL_FEATURES: dict[str, Any] = {
    "e2eLlm": {"enabled": True},
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "grafanaDashboards": {"enabled": True, "annotations": {"grafana_folder": "Step-Audio"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
    },
    "networkPolicy": {"enabled": True},
    "redis": {"auth": {"enabled": True, "password": "s3cret"}},
    "controller": {
        "autoscaling": {"enabled": True},
        "ingress": {"enabled": True, "className": "nginx"},
        "env": {"CONTROLLER_LIMITS__MAX_SESSIONS": 128, "CONTROLLER_TURN__SPECULATIVE": False},
    },
    "vad": {"env": {"VAD_GRPC_MAX_MESSAGE_BYTES": 8388608, "VAD_THRESHOLD": 0.6}},
}
VALUE_SETS = [None, *PRESETS, "all-features"]


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def values_for(name: str | None) -> dict[str, Any] | None:
    if name is None:
        return None
    if name == "all-features":
        return ALL_FEATURES
    return load_values(name)


@pytest.fixture(scope="module")
def default(chart: helm.Chart) -> Manifests:
    return render(chart)


def grpc_port(container: dict[str, Any]) -> int:
    return next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")


# ---------- helm lint and the values schema ----------


@pytest.mark.parametrize("values", VALUE_SETS)
def test_helm_lint_strict_passes(values: str | None) -> None:
    report = helm.lint(CHART, values_for(values), strict=True, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], json.dumps(report, indent=1)
    assert report["total_charts_linted"] == 1


def test_chart_metadata(chart: helm.Chart) -> None:
    assert chart.metadata["apiVersion"] == "v2"
    assert chart.name == "stepaudio"
    assert chart.schema is not None


@pytest.mark.parametrize("values", VALUE_SETS)
def test_values_pass_the_schema(chart: helm.Chart, values: str | None) -> None:
    chart.validate_schema(values_for(values))


def test_schema_vllm_keys_are_the_engine_settings(chart: helm.Chart) -> None:
    """llm.vllm / tts.vllm keys render as <PREFIX>VLLM__<UPPER_SNAKE>: the schema allows
    exactly the VllmEngineSettings fields, so a misspelt key fails at install."""
    schema = chart.schema
    assert schema is not None
    keys = schema["properties"]["llm"]["properties"]["vllm"]["properties"]
    snake = {re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower() for key in keys}
    assert snake == set(VllmEngineSettings.model_fields)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"llm": {"vllm": {"quantization": "int4"}}}, "quantization"),
        ({"llm": {"vllm": {"tensorParalelSize": 4}}}, "tensorParalelSize"),
        ({"vad": {"env": {"LLM_ENGINE": "vllm"}}}, "LLM_ENGINE"),
        ({"models": {"source": "s3"}}, "source"),
        ({"models": {"source": "pvc"}}, "models.pvc.claimName"),
        ({"llm": {"terminationGracePeriodSeconds": 10}}, "must exceed"),
        ({"llm": {"engine": "vllm", "vllm": {"distributedExecutorBackend": "ray"}}}, "ray"),
        (
            {
                "models": {"source": "pvc", "pvc": {"claimName": "m"}},
                "llm": {
                    "engine": "vllm",
                    "vllm": {"tensorParallelSize": 8, "distributedExecutorBackend": "ray"},
                    "ray": {"enabled": True, "workers": {"replicas": 1, "gpusPerWorker": 4}},
                    "gpus": 2,
                },
            },
            "must equal",
        ),
        (
            {
                "llm": {
                    "engine": "vllm",
                    "vllm": {"distributedExecutorBackend": "ray"},
                    "ray": {"enabled": True},
                }
            },
            "models.source",
        ),
        ({"redis": {"enabled": False}}, "redis.external"),
        ({"redis": {"auth": {"enabled": True}}}, "redis.auth.password"),
    ],
)
def test_bad_values_stop_the_render(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        chart.render(values, name="sa", namespace="voice")


# ---------- default values: the whole stack on CPU with the tiny pack ----------


def test_default_renders_every_component(default: Manifests) -> None:
    components = {*GRPC_SERVICES, "controller"}
    assert default.names("Deployment") == {f"{FULLNAME}-{c}" for c in components}
    assert default.names("Service") == {f"{FULLNAME}-{c}" for c in [*components, "redis"]}
    assert default.names("PodDisruptionBudget") == {f"{FULLNAME}-{c}" for c in components}
    assert default.names("StatefulSet") == {f"{FULLNAME}-redis"}
    for optional in (
        "RayCluster", "ServiceMonitor", "PrometheusRule", "NetworkPolicy", "Ingress", "Secret"
    ):  # fmt: skip
        assert not default.of_kind(optional), optional
    for component in components:
        assert default.container(component).spec["image"] == "stepaudio:0.1.0"
        assert "nvidia.com/gpu" not in str(default.container(component).spec["resources"])


def test_default_runs_each_service_from_the_cli(default: Manifests) -> None:
    for component in [*GRPC_SERVICES, "controller"]:
        assert default.container(component).spec["args"] == ["serve", component]


def test_tiny_pack_is_written_where_models_are_needed(default: Manifests) -> None:
    for component in ("tokenizer", "llm", "tts"):
        pod = default.deployment(component)["spec"]["template"]["spec"]
        (init,) = pod["initContainers"]
        assert init["args"] == ["models", "tiny", "--out", "/models"]
        assert {"name": "models", "emptyDir": {"sizeLimit": "256Mi"}} in pod["volumes"]
        mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["models"]["readOnly"] is True
    assert "initContainers" not in default.deployment("vad")["spec"]["template"]["spec"]


def test_grpc_services_have_native_grpc_probes(default: Manifests) -> None:
    for component, port in GRPC_SERVICES.items():
        container = default.container(component).spec
        assert grpc_port(container) == port
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": port}, (component, probe)
        # the startup probe covers model loading; liveness tolerates a busy moment
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
        assert container["livenessProbe"]["failureThreshold"] >= 3


def test_controller_probes_healthz_and_readyz(default: Manifests) -> None:
    container = default.container("controller").spec
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_controller_dials_the_services_dns_names(default: Manifests) -> None:
    env = default.container("controller").env
    for component, port in GRPC_SERVICES.items():
        assert env[f"CONTROLLER_SERVICES__{component.upper()}"] == service_address(component, port)
        service = default.get("Service", f"{FULLNAME}-{component}")
        assert {"name": "grpc", "port": port, "targetPort": "grpc", "protocol": "TCP"}.items() <= (
            service["spec"]["ports"][0].items()
        )
    assert "CONTROLLER_SERVICES__E2E_LLM" not in env
    redis_host = f"{FULLNAME}-redis.{NAMESPACE}.svc.cluster.local"
    assert env["CONTROLLER_REDIS__URL"] == f"redis://{redis_host}:6379/0"
    assert env["CONTROLLER_HOST"] == "0.0.0.0"


def test_services_bind_all_interfaces_and_serve_metrics(default: Manifests) -> None:
    for component, port in GRPC_SERVICES.items():
        env = default.container(component).env
        prefix = OWNER_PREFIX[component]
        assert env[f"{prefix}HOST"] == "0.0.0.0"
        assert env[f"{prefix}PORT"] == str(port)
        assert env[f"{prefix}METRICS_PORT"] == "9090"


def test_termination_grace_covers_prestop_and_drain(default: Manifests) -> None:
    """Delete → preStop sleep → SIGTERM → NOT_SERVING for DRAIN_DELAY_S → in-flight RPCs get
    SHUTDOWN_GRACE_S: all of it must fit in terminationGracePeriodSeconds."""
    for component in [*GRPC_SERVICES, "controller"]:
        pod = default.deployment(component)["spec"]["template"]["spec"]
        container = default.container(component)
        command = container.spec["lifecycle"]["preStop"]["exec"]["command"]
        prefix = OWNER_PREFIX[component]
        if component == "controller":  # python: sleep, then POST /admin/drain
            assert "/admin/drain" in command[2]
            sleep = int(command[2].split("time.sleep(")[1].split(")")[0])
            drain = float(container.env["CONTROLLER_LIMITS__DRAIN_TIMEOUT_S"])
        else:
            sleep = int(command[1])
            drain = float(container.env.get(f"{prefix}DRAIN_DELAY_S") or 0)
        grace = float(container.env.get(f"{prefix}SHUTDOWN_GRACE_S") or 10)  # uvicorn: 10 s
        assert sleep > 0
        assert pod["terminationGracePeriodSeconds"] > sleep + drain + grace, component


def test_pods_run_as_non_root_with_a_read_only_root(default: Manifests) -> None:
    for dep in default.of_kind("Deployment"):
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/tmp", "/home/stepaudio"} <= mounts


def test_bundled_redis_keeps_an_append_only_file(default: Manifests) -> None:
    redis = default.get("StatefulSet", f"{FULLNAME}-redis")
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:5] == ["redis-server", "--appendonly", "yes", "--appendfsync", "everysec"]
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"


def test_env_changes_roll_the_pods(chart: helm.Chart, default: Manifests) -> None:
    changed = render(chart, {"vad": {"env": {"VAD_THRESHOLD": "0.7"}}})

    def checksum(m: Manifests, component: str) -> str:
        meta = m.deployment(component)["spec"]["template"]["metadata"]
        return str(meta["annotations"]["checksum/env"])

    assert checksum(changed, "vad") != checksum(default, "vad")
    assert checksum(changed, "tts") == checksum(default, "tts")


# ---------- every environment variable is a real setting, with a valid value ----------


@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_env_var_is_a_setting_of_its_service(chart: helm.Chart, values: str | None) -> None:
    manifests = render(chart, values_for(values))
    checked = 0
    for container in manifests.containers():
        prefixes = {p for name in container.env if (p := prefix_of(name)) and p != "STEPAUDIO_"}
        if container.owner.endswith("-llm-ray"):
            assert not prefixes, f"Ray pod sets service settings: {prefixes}"
            continue
        component = container.owner.removeprefix(f"{FULLNAME}-")
        owner = OWNER_PREFIX[component]
        assert prefixes == {owner}, (component, prefixes)
        assert not unknown_settings(list(container.env), owner), component
        plain = {k: v for k, v in container.env.items() if v is not None}
        build_settings(owner, plain)  # the service's own validation of every value
        checked += 1
    assert checked >= 5


def test_whole_numbers_render_as_integers(chart: helm.Chart) -> None:
    manifests = render(chart, ALL_FEATURES)
    env = manifests.container("vad").env
    assert env["VAD_GRPC_MAX_MESSAGE_BYTES"] == "8388608"
    assert env["VAD_THRESHOLD"] == "0.6"
    controller = manifests.container("controller").env
    assert controller["CONTROLLER_LIMITS__MAX_SESSIONS"] == "128"
    assert controller["CONTROLLER_TURN__SPECULATIVE"] == "false"


# ---------- the 130B Chat presets (issue 8) ----------


def llm_of(manifests: Manifests) -> tuple[dict[str, str | None], dict[str, Any]]:
    container = manifests.container("llm")
    return container.env, container.spec


def test_preset_tp4_bf16_four_gpus(chart: helm.Chart) -> None:
    manifests = render(chart, load_values("values-chat-tp4-bf16.yaml"))
    env, spec = llm_of(manifests)
    assert env["LLM_ENGINE"] == "vllm"
    assert env["LLM_VLLM__TENSOR_PARALLEL_SIZE"] == "4"
    assert env["LLM_VLLM__PIPELINE_PARALLEL_SIZE"] == "1"
    assert env["LLM_VLLM__DISTRIBUTED_EXECUTOR_BACKEND"] == "mp"
    assert env["LLM_VLLM__DTYPE"] == "bfloat16"
    assert "LLM_VLLM__QUANTIZATION" not in env
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert spec["image"] == "stepaudio-gpu:0.1.0"
    settings = build_settings("LLM_", {k: v for k, v in env.items() if v is not None})
    assert settings.vllm.tensor_parallel_size == 4  # type: ignore[attr-defined]
    assert settings.vllm.quantization is None  # type: ignore[attr-defined]
    assert_real_gpu_stack(manifests)


def test_preset_tp2_fp8_two_gpus(chart: helm.Chart) -> None:
    manifests = render(chart, load_values("values-chat-tp2-fp8.yaml"))
    env, spec = llm_of(manifests)
    assert env["LLM_VLLM__TENSOR_PARALLEL_SIZE"] == "2"
    assert env["LLM_VLLM__QUANTIZATION"] == "fp8"
    assert env["LLM_VLLM__DISTRIBUTED_EXECUTOR_BACKEND"] == "mp"
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == 2
    settings = build_settings("LLM_", {k: v for k, v in env.items() if v is not None})
    assert settings.vllm.quantization == "fp8"  # type: ignore[attr-defined]
    assert_real_gpu_stack(manifests)


def assert_real_gpu_stack(manifests: Manifests) -> None:
    """What both single-pod presets share: real models from a claim, no tiny pack, a big
    /dev/shm for the TP workers, a long startup window, TTS on one GPU."""
    pod = manifests.deployment("llm")["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is True
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    _, spec = llm_of(manifests)
    startup = spec["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
    deployment = manifests.deployment("llm")["spec"]
    assert deployment["strategy"]["rollingUpdate"]["maxSurge"] == 0
    tts = manifests.container("tts")
    assert tts.spec["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert tts.env["TTS_DEVICE"] == "cuda" and tts.env["TTS_ENGINE"] == "vllm"
    assert manifests.deployment("controller")["spec"]["replicas"] == 2


def test_preset_ray_spans_two_nodes(chart: helm.Chart) -> None:
    manifests = render(chart, load_values("values-chat-ray-pp2.yaml"))
    env, spec = llm_of(manifests)
    assert env["LLM_VLLM__DISTRIBUTED_EXECUTOR_BACKEND"] == "ray"
    assert env["LLM_VLLM__TENSOR_PARALLEL_SIZE"] == "4"
    assert env["LLM_VLLM__PIPELINE_PARALLEL_SIZE"] == "2"
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == 4
    head = f"{FULLNAME}-llm-ray-head-svc.{NAMESPACE}.svc.cluster.local:6379"
    assert env["RAY_ADDRESS"] == head
    script = spec["args"][0]
    assert "ray start" in script and "--num-gpus=4" in script
    assert script.rstrip().endswith("exec stepaudio serve llm")
    ray = manifests.get("RayCluster", f"{FULLNAME}-llm-ray")
    assert ray["apiVersion"] == "ray.io/v1"
    assert ray["spec"]["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    (workers,) = ray["spec"]["workerGroupSpecs"]
    assert workers["replicas"] == 1
    worker = workers["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert worker["image"] == spec["image"] == "stepaudio-gpu:0.1.0"
    assert {m["mountPath"] for m in worker["volumeMounts"]} >= {"/models", "/dev/shm"}


# ---------- optional parts ----------


def test_all_optional_features(chart: helm.Chart) -> None:
    manifests = render(chart, ALL_FEATURES)
    e2e = manifests.container("e2e-llm")
    assert e2e.env["LLM_MODEL_NAME"] == "Step-Audio-AQAA"
    assert e2e.spec["args"] == ["serve", "llm"]
    controller = manifests.container("controller").env
    assert controller["CONTROLLER_SERVICES__E2E_LLM"] == service_address("e2e-llm", 50053)
    # the tiny pack with the AQAA folder wherever models are written
    init = manifests.deployment("e2e-llm")["spec"]["template"]["spec"]["initContainers"][0]
    assert init["args"][-2:] == ["--variant", "aqaa"]
    # redis password from the Secret, expanded into the URL by the kubelet
    assert controller["REDIS_PASSWORD"] is None
    redis_url = controller["CONTROLLER_REDIS__URL"]
    assert redis_url is not None and redis_url.startswith("redis://:$(REDIS_PASSWORD)@")
    names = [e["name"] for e in manifests.container("controller").spec["env"]]
    assert names.index("REDIS_PASSWORD") < names.index("CONTROLLER_REDIS__URL")
    assert manifests.names("Secret") == {f"{FULLNAME}-redis"}
    assert manifests.names("HorizontalPodAutoscaler") == {f"{FULLNAME}-controller"}
    assert "replicas" not in manifests.deployment("controller")["spec"]
    assert manifests.names("Ingress") == {f"{FULLNAME}-controller"}
    (monitor,) = manifests.of_kind("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics", "http"]


def test_network_policies_admit_only_the_controller(chart: helm.Chart) -> None:
    manifests = render(chart, ALL_FEATURES)
    controller_pods = {
        "app.kubernetes.io/name": "stepaudio",
        "app.kubernetes.io/instance": "sa",
        "app.kubernetes.io/component": "controller",
    }
    ports = {**GRPC_SERVICES, "e2e-llm": 50053, "redis": 6379}
    for component, port in ports.items():
        policy = manifests.get("NetworkPolicy", f"{FULLNAME}-{component}")
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        serving = policy["spec"]["ingress"][0]
        assert serving["from"] == [{"podSelector": {"matchLabels": controller_pods}}]
        assert serving["ports"] == [{"port": port, "protocol": "TCP"}]
        for rule in policy["spec"]["ingress"][1:]:  # metrics only
            assert rule["ports"] == [{"port": 9090, "protocol": "TCP"}]
    assert f"{FULLNAME}-controller" in manifests.names("NetworkPolicy")


def test_external_redis_url_from_a_secret(chart: helm.Chart) -> None:
    values = {"redis": {"enabled": False, "external": {"existingSecret": "redis-url"}}}
    manifests = render(chart, values)
    assert not manifests.of_kind("StatefulSet")
    (entry,) = [
        e
        for e in manifests.container("controller").spec["env"]
        if e["name"] == "CONTROLLER_REDIS__URL"
    ]
    assert entry["valueFrom"]["secretKeyRef"] == {"name": "redis-url", "key": "redis-url"}


def test_host_path_models_without_the_tiny_pack(chart: helm.Chart) -> None:
    values = {"models": {"source": "hostPath", "hostPath": {"path": "/data/step-audio"}}}
    manifests = render(chart, values)
    pod = manifests.deployment("llm")["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["hostPath"] == {"path": "/data/step-audio", "type": "Directory"}


# ---------- observability: dashboards for the Grafana sidecar, rules for the operator ----------


def test_dashboards_ship_as_sidecar_configmaps(chart: helm.Chart) -> None:
    manifests = render(chart, ALL_FEATURES)
    maps = [m for m in manifests.of_kind("ConfigMap") if "-dashboard-" in m["metadata"]["name"]]
    shipped = {}
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["annotations"] == {"grafana_folder": "Step-Audio"}
        assert config_map["metadata"]["namespace"] == NAMESPACE
        shipped.update(config_map["data"])
    expected = {name: json.loads(text) for name, text in dashboards.rendered().items()}
    assert {name: json.loads(text) for name, text in shipped.items()} == expected
    assert f"{FULLNAME}-dashboard-overview" in {m["metadata"]["name"] for m in maps}


def test_rules_ship_as_a_prometheusrule(chart: helm.Chart) -> None:
    manifests = render(chart, ALL_FEATURES)
    rule = manifests.get("PrometheusRule", FULLNAME)
    assert rule["metadata"]["labels"]["release"] == "prom"
    expected = yaml.safe_load(rules.render())["groups"]
    assert rule["spec"]["groups"] == expected  # alert templates ({{ $labels.x }}) untouched
    assert any(
        "{{ $labels.job }}" in str(r.get("annotations")) for g in expected for r in g["rules"]
    )


def test_observability_objects_are_optional(default: Manifests) -> None:
    assert not default.of_kind("PrometheusRule")
    assert not [m for m in default.of_kind("ConfigMap") if "-dashboard-" in m["metadata"]["name"]]


def test_api_keys_from_a_secret_and_the_drain_presents_the_admin_key(chart: helm.Chart) -> None:
    assert render(chart).container("controller").env["CONTROLLER_AUTH__ENABLED"] == "true"
    values = {"controller": {"auth": {"existingSecret": "stepaudio-keys"}}}
    manifests = render(chart, values)
    controller = manifests.container("controller")
    keys_file = controller.env["CONTROLLER_AUTH__KEYS_FILE"]
    assert keys_file == "/etc/stepaudio/keys/keys.json"
    (mount,) = [m for m in controller.spec["volumeMounts"] if m["name"] == "api-keys"]
    assert keys_file.startswith(mount["mountPath"]) and mount["readOnly"]
    pod = manifests.deployment("controller")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "api-keys"]
    assert volume["secret"]["secretName"] == "stepaudio-keys"
    (admin,) = [e for e in controller.spec["env"] if e["name"] == "STEPAUDIO_ADMIN_KEY"]
    assert admin["valueFrom"]["secretKeyRef"]["key"] == "admin-key"
    pre_stop = " ".join(controller.spec["lifecycle"]["preStop"]["exec"]["command"])
    assert "STEPAUDIO_ADMIN_KEY" in pre_stop and "Authorization" in pre_stop
