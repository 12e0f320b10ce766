"""prepare_stack's wheel handling: which requirements follow a wheel, the slimmed silero-vad,
and the split into the part that travels beside the devpack and the extra call."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from loadtests.gpu.prepare_stack import provided, size_mib, slim, split_wheels, wheel_requirements


def write_wheel(path: Path, files: dict[str, bytes], requires: list[str] = ()) -> Path:
    name = path.name.split("-")[0]
    info = f"{name}-1.0.dist-info"
    metadata = "Metadata-Version: 2.1\nName: x\nVersion: 1.0\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = files | {f"{info}/METADATA": metadata.encode()}
    record = "".join(f"{n},sha256=x,{len(d)}\n" for n, d in files.items()) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in (files | {f"{info}/RECORD": record.encode()}).items():
            archive.writestr(member, data)
    return path


def test_requirements_follow_markers_and_extras_for_the_gpu_python(tmp_path: Path) -> None:
    wheel = write_wheel(tmp_path / "uv-1.0-py3-none-any.whl", {}, [
        "click>=7", 'httptools>=0.6; extra == "standard"', 'async-timeout; python_version < "3.11"',
        'colorama; sys_platform == "win32"', 'typing-extensions; python_version >= "3.11"',
    ])  # fmt: skip
    plain = [r.name for r in wheel_requirements(wheel, set())]
    assert plain == ["click", "typing-extensions"]
    standard = [r.name for r in wheel_requirements(wheel, {"standard"})]
    assert standard == ["click", "httptools", "typing-extensions"]


def test_silero_vad_keeps_only_the_model_the_vad_loads(tmp_path: Path) -> None:
    models = ("silero_vad.onnx", "silero_vad.jit", "silero_vad_half.onnx", "__init__.py")
    data = {f"silero_vad/data/{n}": b"m" * 100 for n in models}
    wheel = write_wheel(tmp_path / "silero_vad-6.2.3-py3-none-any.whl",
                        data | {"silero_vad/__init__.py": b""})  # fmt: skip
    slim(wheel)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        record = archive.read("silero_vad-1.0.dist-info/RECORD").decode()
    assert "silero_vad/data/silero_vad.onnx" in names and "silero_vad/__init__.py" in names
    assert not names & {"silero_vad/data/silero_vad.jit", "silero_vad/data/silero_vad_half.onnx"}
    assert {line.split(",")[0] for line in record.splitlines()} == names
    size = wheel.stat().st_size
    slim(wheel)  # idempotent
    assert wheel.stat().st_size == size


def test_largest_wheels_move_to_the_extra_part_until_the_main_part_fits(tmp_path: Path) -> None:
    dest, extra = tmp_path / ".gpustack", tmp_path / ".gpustack-extra"
    (dest / "wheels").mkdir(parents=True)
    for name, mib in (("av", 3.0), ("grpcio", 1.5), ("redis", 0.2)):
        (dest / "wheels" / f"{name}-1.0-py3-none-any.whl").write_bytes(os.urandom(int(mib * 2**20)))
    moved = split_wheels(dest, extra, max_mib=2.0)
    assert [p.name.split("-")[0] for p in moved] == ["av"]
    assert size_mib(dest) <= 2.0 and (extra / "wheels" / moved[0].name).is_file()
    assert split_wheels(dest, extra, max_mib=2.0) == [] and not extra.exists()


def test_the_image_and_devpack_packages_are_not_carried_but_grpcio_and_protobuf_are() -> None:
    skip = provided()
    assert {"torch", "numpy", "fastapi", "pydantic", "vllm", "onnxruntime"} <= skip
    assert not {"grpcio", "protobuf", "soxr", "silero-vad", "av", "redis"} & skip
