"""Everything the one-GPU stack needs on the device machine beyond its image and the vLLM devpack.

    python -m loadtests.gpu.prepare_stack [--repo .] [--max-mib 27]

Run here (network: PyPI and Debian), in the checkout the device tool sends. Writes the ignored
folder ``REPO/.gpustack/`` (and adds it to ``.git/info/exclude``):

    wheels/        the project's runtime dependencies the GPU image (KINDS.md's package list)
                   and the devpack (../shared/gpu/make-devpack.sh) lack, with everything they
                   need, as cp312 manylinux wheels at the versions installed here; grpcio and
                   protobuf always (the generated stubs need grpcio >= 1.76 and protobuf >= 6.31,
                   the image's versions are not on record)
    redis.tar.xz   Debian bookworm's redis-server (the redis-tools binary) and the libraries it
                   links, from ``apt-get download`` + ``dpkg -x``; ``bin/redis-server`` sets
                   LD_LIBRARY_PATH for redis alone and runs the binary under that name
    clips/         the load generator's speech clips (espeak-ng is not on the image)
    proto/         the generated gRPC stubs (build/proto is ignored, so it does not travel)
    COMMIT         the checkout's commit (the device gets no .git)

and, when the wheels would push ``.gpustack`` over ``--max-mib``, ``REPO/.gpustack-extra/wheels``
with the largest of them (PyAV: 34 MiB), carried alone in a call of its own.

``loadtests/gpu/capacity.sh`` installs them on the device (each part into a folder of its own).
Rerun after a merge (the stubs and the commit follow the checkout; wheels already downloaded
are kept).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement

# On the GPU image (KINDS.md, "Python packages already there") or in the devpack: not carried.
IMAGE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
certifi charset-normalizer click cloudpickle cmake colorama contourpy cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython einops filelock flatbuffers fonttools
frozenlist fsspec h11 h5py hf-xet httpcore httpx huggingface-hub idna jinja2 joblib kiwisolver
markdown markdown-it-py markupsafe matplotlib mdurl ml-dtypes mpmath msgpack multidict
networkx ninja numba numpy onnx onnxruntime opencv-python-headless packaging pandas pillow pip
platformdirs prometheus-client propcache protobuf psutil pyarrow pygments pyparsing
python-dateutil pyyaml regex requests rich safetensors scipy sentencepiece setuptools six
sympy tiktoken tokenizers torch torchaudio torchvision tqdm transformers triton typing-extensions
typing-inspect urllib3 uvloop werkzeug wheel wrapt xxhash yarl zipp grpcio""".split()
DEVPACK = """vllm cbor2 msgspec pyzmq openai-harmony pybase64 cachetools openai httpx2 sniffio
llguidance xgrammar apache-tvm-ffi fastapi starlette opentelemetry-api opentelemetry-sdk
opentelemetry-semantic-conventions importlib-metadata partial-json-parser blake3 depyf astor
dill setproctitle pydantic pydantic-core annotated-types typing-inspection jiter distro lark
outlines-core compressed-tensors lm-format-enforcer interegular gguf python-json-logger ijson
watchfiles prometheus-fastapi-instrumentator""".split()
# the capacity run's own tools: py-spy dumps every service's stacks mid-point (proc_profile.py)
PROFILING = ("py-spy==0.4.3",)
EXTRA_MAX_MIB = 60.0  # .gpustack-extra travels alone, beside the ~2 MiB tree
# carried even though the image has them: the stubs' minimum versions
ALWAYS = ("grpcio", "protobuf")
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)]
PLATFORMS += ["manylinux2014_x86_64", "manylinux1_x86_64"]
TARGET_ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
# data files left out of a wheel: name -> predicate on the archive member's path
SLIM = {
    "silero-vad": lambda n: (
        n.startswith("silero_vad/data/")
        and n.rsplit("/", 1)[1] not in ("silero_vad.onnx", "__init__.py")
    ),
}
# redis-server's binary and every library it links beyond glibc (ldd on bookworm)
REDIS_DEBS = """redis-tools libjemalloc2 liblzf1 libatomic1 libssl3 libsystemd0 libcap2
libgcrypt20 liblzma5 libzstd1 liblz4-1 libgpg-error0 libstdc++6 libgcc-s1""".split()
REDIS_WRAPPER = """#!/usr/bin/env bash
# bookworm's redis-server with its own libraries; the binary picks server mode by its name
here=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec -a redis-server "$here/libexec/redis-check-rdb" "$@"
"""


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def provided() -> set[str]:
    return {normalize(n) for n in IMAGE + DEVPACK} - set(ALWAYS)


def runtime_requirements(repo: Path) -> list[Requirement]:
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    return [Requirement(spec) for spec in [*project["dependencies"], *PROFILING]]


def pin(name: str) -> str:
    """name==the version installed here (tested here), else name (the newest)."""
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return name


def download(spec: str, dest: Path) -> Path:
    before = set(dest.glob("*.whl"))
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dest),
               "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
               spec]  # fmt: skip
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command, check=True)
    name = normalize(Requirement(spec).name)
    matches = [p for p in dest.glob("*.whl") if normalize(p.name.split("-")[0]) == name]
    if not matches:
        raise RuntimeError(
            f"pip saved no wheel for {spec} (new: {set(dest.glob('*.whl')) - before})"
        )
    return max(matches, key=lambda p: p.stat().st_mtime)


def slim(wheel: Path) -> None:
    """Drop package data the stack never loads (silero-vad: every model but silero_vad.onnx,
    8 of its 11 MiB); RECORD loses the dropped files' lines, so the wheel stays consistent."""
    drop = SLIM.get(normalize(wheel.name.split("-")[0]))
    if drop is None:
        return
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        keep = [n for n in names if not drop(n)]
        if len(keep) == len(names):
            return
        contents = {n: archive.read(n) for n in keep}
    record = next(n for n in keep if n.endswith(".dist-info/RECORD"))
    lines = contents[record].decode().splitlines()
    contents[record] = "".join(
        f"{line}\n" for line in lines if line.split(",")[0] in contents
    ).encode()
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in contents.items():
            archive.writestr(name, data)


def wheel_requirements(wheel: Path, extras: set[str]) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode()
    needs = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = Requirement(line.split(":", 1)[1].strip())
        marker: Marker | None = requirement.marker
        if marker is None or any(
            marker.evaluate(TARGET_ENV | {"extra": extra}) for extra in extras | {""}
        ):
            needs.append(requirement)
    return needs


def gather_wheels(repo: Path, dest: Path) -> list[Path]:
    """The runtime dependencies not on the image, and what they need, transitively."""
    dest.mkdir(parents=True, exist_ok=True)
    skip = provided()
    queue = [r for r in runtime_requirements(repo) if normalize(r.name) not in skip]
    seen: set[str] = set()
    wheels = []
    while queue:
        requirement = queue.pop(0)
        name = normalize(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        wheel = next(
            (p for p in dest.glob("*.whl") if normalize(p.name.split("-")[0]) == name), None
        )
        wheel = wheel or download(pin(requirement.name), dest)
        slim(wheel)
        wheels.append(wheel)
        for need in wheel_requirements(wheel, set(requirement.extras)):
            if normalize(need.name) not in skip | seen:
                queue.append(need)
    for stale in set(dest.glob("*.whl")) - set(wheels):
        stale.unlink()  # one version of each: two stop the whole install there
    return sorted(wheels)


def build_redis(dest: Path) -> Path:
    """bin/redis-server (wrapper), libexec/redis-check-rdb, lib/*.so* — as redis.tar.xz."""
    archive = dest / "redis.tar.xz"
    if archive.is_file():
        return archive
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        subprocess.run(["apt-get", "download", *REDIS_DEBS], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        root = tmp / "root"
        for deb in sorted(tmp.glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        tree = tmp / "redis"
        (tree / "bin").mkdir(parents=True)
        (tree / "libexec").mkdir()
        (tree / "lib").mkdir()
        shutil.copy2(root / "usr/bin/redis-check-rdb", tree / "libexec")
        for folder in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"):
            for lib in (root / folder).glob("*.so*"):
                shutil.copy2(lib, tree / "lib", follow_symlinks=False)
        wrapper = tree / "bin" / "redis-server"
        wrapper.write_text(REDIS_WRAPPER)
        wrapper.chmod(0o755)
        with tarfile.open(archive, "w:xz") as tar:
            tar.add(tree, arcname="redis")
    return archive


def render_clips(dest: Path) -> None:
    if dest.is_dir() and any(dest.glob("*.wav")):
        return
    from loadtests.realtime_load import LoadOptions, render_all

    render_all(dest, LoadOptions.pause_s)


def copy_stubs(repo: Path, dest: Path) -> None:
    source = repo / "build" / "proto"
    if not any(source.rglob("*_pb2.py")):
        raise RuntimeError(f"no generated stubs in {source}: run `make protos` there first")
    built = min(s.stat().st_mtime for s in source.rglob("*_pb2.py"))
    stale = [p for p in (repo / "protos").rglob("*.proto") if p.stat().st_mtime > built]
    if stale:
        raise RuntimeError(f"stubs older than {stale[0]}: run `make protos` in {repo} first")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))


def exclude(repo: Path, entry: str) -> None:
    path = subprocess.run(["git", "-C", str(repo), "rev-parse", "--git-path", "info/exclude"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    exclude_file = Path(path) if Path(path).is_absolute() else repo / path
    lines = exclude_file.read_text().splitlines() if exclude_file.is_file() else []
    if entry not in lines:
        exclude_file.parent.mkdir(parents=True, exist_ok=True)
        exclude_file.write_text("\n".join([*lines, entry]) + "\n")


def size_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def split_wheels(dest: Path, extra: Path, max_mib: float) -> list[Path]:
    """Move the largest wheels to ``extra`` (its own device call) until ``dest`` fits."""
    shutil.rmtree(extra, ignore_errors=True)
    moved = []
    for wheel in sorted((dest / "wheels").glob("*.whl"), key=lambda p: -p.stat().st_size):
        if size_mib(dest) <= max_mib:
            break
        (extra / "wheels").mkdir(parents=True, exist_ok=True)
        moved.append(Path(shutil.move(wheel, extra / "wheels" / wheel.name)))
    return moved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("."), help="the checkout that travels")
    parser.add_argument("--max-mib", type=float, default=27.0,
                        help="the largest wheels move to .gpustack-extra above this (64 MiB a "
                        "call less the devpack's part b and the tree)")  # fmt: skip
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    dest, extra = repo / ".gpustack", repo / ".gpustack-extra"
    exclude(repo, "/.gpustack/")
    exclude(repo, "/.gpustack-extra/")
    for wheel in (extra / "wheels").glob("*.whl"):  # a previous split: gather from one place
        (dest / "wheels").mkdir(parents=True, exist_ok=True)
        shutil.move(wheel, dest / "wheels" / wheel.name)
    wheels = gather_wheels(repo, dest / "wheels")
    build_redis(dest)
    render_clips(dest / "clips")
    copy_stubs(repo, dest / "proto")
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (dest / "COMMIT").write_text(commit + "\n")
    moved = split_wheels(dest, extra, args.max_mib)
    for wheel in sorted(dest.glob("wheels/*.whl")) + moved:
        print(f"  {wheel.relative_to(repo)} ({wheel.stat().st_size / 2**20:.1f} MiB)")
    total = size_mib(dest)
    print(f"wrote {dest}: {len(wheels)} wheels, redis, clips, stubs, commit {commit}; "
          f"{total:.1f} MiB")  # fmt: skip
    if moved:
        print(f"and {extra}: {len(moved)} wheels, {size_mib(extra):.1f} MiB — carry it alone "
              "in its own call (docs/gpu-results.md)")  # fmt: skip
    if total > args.max_mib or (moved and size_mib(extra) > EXTRA_MAX_MIB):
        print("error: over the size a device call can carry", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
