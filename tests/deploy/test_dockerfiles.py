"""deploy/docker/Dockerfile{,.gpu} and .dockerignore, checked statically (no docker engine
here): the stages and commands the images rely on, and that the build context holds what the
COPY instructions need and nothing else."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy._support import ROOT

DOCKERFILES = {
    "cpu": ROOT / "deploy" / "docker" / "Dockerfile",
    "gpu": ROOT / "deploy" / "docker" / "Dockerfile.gpu",
}


@dataclass
class Stage:
    base: str
    name: str
    steps: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.steps if i == instruction]


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "dangling line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert instruction == "ARG", f"{instruction} before the first FROM"
            key, _, default = rest.partition("=")
            global_args[key] = default.strip('"')
        else:
            stages[-1].steps.append((instruction, rest.strip()))
    return global_args, stages


def base_image(global_args: dict[str, str], stage: Stage) -> str:
    match = re.fullmatch(r"\$\{(\w+)\}", stage.base)
    return global_args[match.group(1)] if match else stage.base


@pytest.fixture(params=sorted(DOCKERFILES))
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, dict[str, str], list[Stage]]:
    kind = str(request.param)
    return kind, *parse(DOCKERFILES[kind])


def run_index(stage: Stage, needle: str) -> int:
    runs = [i for i, (ins, arg) in enumerate(stage.steps) if ins == "RUN" and needle in arg]
    assert runs, f"no RUN with {needle!r} in stage {stage.name}"
    return runs[0]


def test_build_stage_generates_stubs_then_installs(
    dockerfile: tuple[str, dict[str, str], list[Stage]],
) -> None:
    kind, _, stages = dockerfile
    build, runtime = stages
    assert (build.name, runtime.name) == ("build", "runtime")
    copies = [a for i, a in build.steps if i == "COPY"]
    assert copies[0].split()[:-1] == ["Makefile", "pyproject.toml", "README.md"]
    assert "protos/ protos/" in copies
    protos = run_index(build, "make protos")
    assert "VENV=/opt/venv" in build.steps[protos][1]
    assert run_index(build, "grpcio-tools==1.76.0") < protos
    install = run_index(build, "pip install ." if kind == "cpu" else "pip install -c")
    assert protos < install
    assert build.steps.index(("COPY", "services/ services/")) < install
    # the stubs must import after the install (build fails early otherwise)
    assert "stepaudio.serving.v1" in build.steps[install][1]
    if kind == "gpu":
        assert '".[gpu]"' in build.steps[install][1]


def test_runtime_is_non_root_with_the_cli_entrypoint(
    dockerfile: tuple[str, dict[str, str], list[Stage]],
) -> None:
    kind, global_args, stages = dockerfile
    build, runtime = stages
    assert base_image(global_args, runtime) == base_image(global_args, build)
    (user,) = runtime.args("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0  # numeric: runAsNonRoot can verify it
    assert any(f"--uid {uid}" in run for run in runtime.args("RUN"))
    assert runtime.steps.index(("USER", user)) > max(
        i for i, (ins, _) in enumerate(runtime.steps) if ins == "RUN"
    )
    (entrypoint,) = runtime.args("ENTRYPOINT")
    assert json.loads(entrypoint) == ["/usr/bin/tini", "--", "stepaudio"]
    assert any("tini" in run for run in runtime.args("RUN"))
    (cmd,) = runtime.args("CMD")
    assert json.loads(cmd)[0] == "serve"
    assert runtime.args("COPY") == ["--from=build /opt/venv /opt/venv"]
    env = " ".join(runtime.args("ENV"))
    assert "PATH=/opt/venv/bin:$PATH" in env
    # the writable path the TTS voices volume mounts over belongs to the user
    assert any("/var/lib/stepaudio/voices" in run and "chown" in run for run in runtime.args("RUN"))


def test_cpu_image_base_and_torch(dockerfile: tuple[str, dict[str, str], list[Stage]]) -> None:
    kind, global_args, stages = dockerfile
    base = base_image(global_args, stages[0])
    build = stages[0]
    if kind == "cpu":
        assert base.startswith("python:3.11-slim")
        torch = build.steps[run_index(build, 'pip install "torch==')][1]
        assert "--index-url" in torch and "${TORCH_INDEX_URL}" in torch
        assert ("ARG", "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu") in build.steps
        assert run_index(build, "torch==") < run_index(build, "pip install .")
    else:
        assert base.startswith("pytorch/pytorch:2.11.") and "cuda" in base
        # the base's CUDA torch is kept: vLLM 0.26.0 pins torch 2.11
        assert "--system-site-packages" in build.steps[run_index(build, "python -m venv")][1]
        assert "torch-constraint" in build.steps[run_index(build, "pip install -c")][1]


def test_no_redis_and_no_whole_context_copy(
    dockerfile: tuple[str, dict[str, str], list[Stage]],
) -> None:
    _, _, stages = dockerfile
    for stage in stages:
        for run in stage.args("RUN"):
            assert "redis-server" not in run
        for copy in stage.args("COPY"):
            assert not copy.startswith(". "), "COPY . would bring the whole context"


# ---------- .dockerignore ----------


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex += pattern[i : end + 1]
                i = end + 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        rules.append((include, re.compile(regex)))
    return rules


def in_context(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    kept = True
    for include, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            kept = include
    return kept


def test_dockerignore_keeps_what_the_build_copies() -> None:
    rules = dockerignore_rules()
    for path in DOCKERFILES.values():
        for stage in parse(path)[1]:
            for copy in stage.args("COPY"):
                if copy.startswith("--from"):
                    continue
                for source in shlex.split(copy)[:-1]:
                    assert (ROOT / source).exists(), source
                    assert in_context(source.rstrip("/"), rules), source
    assert in_context("services/controller/app.py", rules)
    assert in_context("services/models/tiny/assets/demo_question.wav", rules)
    assert in_context("protos/stepaudio/serving/v1/vad.proto", rules)


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "build/proto/stepaudio/serving/v1/vad_pb2.py",
        "models/tiny/Step-Audio-Chat/config.json",
        "var/demo/reply.wav",
        "tests/conftest.py",
        "charts/stepaudio/values.yaml",
        ".devpack/a/p00",
        "services/__pycache__/x.cpython-311.pyc",
        "services/vad/__pycache__/engine.cpython-311.pyc",
    ],
)
def test_dockerignore_leaves_out(path: str) -> None:
    assert not in_context(path, dockerignore_rules())


def test_makefile_protos_target_takes_the_venv() -> None:
    """The images run `make protos VENV=/opt/venv`: the target and the variable must exist."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^VENV \?=", makefile, re.M)
    assert re.search(r"^protos: ", makefile, re.M)
