"""Shared by the deployment tests: rendering the chart, reading containers' environments, and
checking that every variable the deployment sets is a real setting of the service it runs."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import helm_python as helm
import yaml
from pydantic_settings import BaseSettings

from services.cli.config import settings_classes
from services.common.settings import env_vars

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "stepaudio"
PRESETS = sorted(p.name for p in CHART.glob("values-*.yaml"))
RELEASE, NAMESPACE = "sa", "voice"
FULLNAME = f"{RELEASE}-stepaudio"

# settings class of each env prefix (VAD_, TOKENIZER_, LLM_, TTS_, CONTROLLER_)
SETTINGS: dict[str, type[BaseSettings]] = {
    str(cls.model_config["env_prefix"]): cls for _, cls in settings_classes()
}
KNOWN: dict[str, set[str]] = {
    prefix: {name for name, *_ in env_vars(cls)} for prefix, cls in SETTINGS.items()
}
# other project variables (README "CLI" table)
PROJECT_OTHER = {"STEPAUDIO_": {"STEPAUDIO_MODEL_DIR"}}


def load_values(name: str) -> dict[str, Any]:
    return yaml.safe_load((CHART / name).read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def prefix_of(name: str) -> str | None:
    for prefix in [*SETTINGS, *PROJECT_OTHER]:
        if name.startswith(prefix):
            return prefix
    return None


def unknown_settings(names: list[str], owner: str) -> list[str]:
    """Variables with a project prefix that are not settings of ``owner`` (its prefix)."""
    problems = []
    for name in names:
        prefix = prefix_of(name)
        if prefix is None:
            continue  # not the project's (HF_HUB_OFFLINE, RAY_ADDRESS, ...)
        if prefix in PROJECT_OTHER:
            if name not in PROJECT_OTHER[prefix]:
                problems.append(f"{name}: not a project variable")
        elif prefix != owner:
            problems.append(f"{name}: set on a {owner}* service")
        elif name not in KNOWN[prefix]:
            problems.append(f"{name}: not a {SETTINGS[prefix].__name__} setting")
    return problems


def build_settings(owner: str, env: Mapping[str, str]) -> BaseSettings:
    """Construct the service's settings from exactly this environment (validates every value
    the way the service does at start; extra="forbid" also rejects unknown names)."""
    with mock.patch.dict(os.environ, dict(env), clear=True):
        return SETTINGS[owner]()


@dataclass
class Container:
    owner: str  # the pod's Deployment / group name
    spec: dict[str, Any]
    env: dict[str, str | None]  # None: the value comes from valueFrom

    @property
    def name(self) -> str:
        return str(self.spec["name"])


class Manifests:
    """Rendered chart: every document, by kind and name."""

    def __init__(self, rendered: Mapping[str, str]) -> None:
        self.files = dict(rendered)
        self.docs: list[dict[str, Any]] = []
        for path, text in sorted(rendered.items()):
            if path.endswith("NOTES.txt"):
                continue
            self.docs.extend(doc for doc in yaml.safe_load_all(text) if doc)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def names(self, kind: str) -> set[str]:
        return {d["metadata"]["name"] for d in self.of_kind(kind)}

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} documents"
        return found[0]

    def deployment(self, component: str) -> dict[str, Any]:
        return self.get("Deployment", f"{FULLNAME}-{component}")

    def container(self, component: str) -> Container:
        pod = self.deployment(component)["spec"]["template"]["spec"]
        return self._container(component, pod["containers"][0])

    def containers(self) -> Iterator[Container]:
        """Main containers of every Deployment and of the Ray pods."""
        for dep in self.of_kind("Deployment"):
            for spec in dep["spec"]["template"]["spec"]["containers"]:
                yield self._container(dep["metadata"]["name"], spec)
        for ray in self.of_kind("RayCluster"):
            groups = [ray["spec"]["headGroupSpec"], *ray["spec"]["workerGroupSpecs"]]
            for group in groups:
                for spec in group["template"]["spec"]["containers"]:
                    yield self._container(ray["metadata"]["name"], spec)

    def _container(self, owner: str, spec: dict[str, Any]) -> Container:
        env: dict[str, str | None] = {}
        for source in spec.get("envFrom", []):
            ref = source["configMapRef"]["name"]
            env.update(self.get("ConfigMap", ref).get("data") or {})
        for item in spec.get("env", []):
            env[item["name"]] = item.get("value") if "valueFrom" not in item else None
        return Container(owner, spec, env)


def render(chart: helm.Chart, values: dict[str, Any] | None = None) -> Manifests:
    return Manifests(chart.render(values, name=RELEASE, namespace=NAMESPACE))


def service_address(component: str, port: int) -> str:
    return f"{FULLNAME}-{component}.{NAMESPACE}.svc.cluster.local:{port}"


_INTERPOLATION = re.compile(r"\$\{([A-Za-z0-9_]+)(?::?-([^}]*))?\}")


def interpolate_defaults(value: str) -> str:
    """Compose ``${VAR:-default}`` with VAR unset: the default (empty without one)."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", value)
