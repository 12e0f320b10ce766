"""Every `stepaudio` failure a user can fix is one `stepaudio: error: …` line, no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import system_packages


def stepaudio(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str]:
    """Run the real entry point in a child process; return (exit code, stderr)."""
    run = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    return run.returncode, run.stderr


def assert_one_line_error(code: int, stderr: str, *fragments: str) -> None:
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stepaudio: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_names_a_missing_model_folder(tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere"
    code, err = stepaudio("serve", "--model-dir", str(nowhere), "--port", str(free_port()))
    assert_one_line_error(code, err, f"{nowhere} has no Step-Audio-Chat/", "models tiny")


def test_serve_names_a_model_root_that_is_a_file(tmp_path: Path) -> None:
    root = tmp_path / "file"
    root.write_text("not a folder")
    code, err = stepaudio("serve", "--model-dir", str(root), "--port", str(free_port()))
    assert_one_line_error(code, err, f"{root} has no Step-Audio-Chat/")


def test_serve_names_a_port_in_use(tiny_pack: Path, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        args = ("serve", "--model-dir", str(tiny_pack), "--port", str(port))
        code, err = stepaudio(*args, "--workdir", str(tmp_path / "stack"))
    assert_one_line_error(code, err, f"port {port} on 127.0.0.1 is in use", "--port")
    assert not (tmp_path / "stack").exists()  # refused before anything was started


def test_serve_without_redis_server_says_how_to_get_it(tiny_pack: Path, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {"PATH": str(empty)}  # the interpreter is called by its full path; no redis-server
    env_without_redis = {k: v for k, v in os.environ.items() if k != "CONTROLLER_REDIS__URL"}
    run = subprocess.run(
        [sys.executable, "-m", "services.cli", "serve", "--model-dir", str(tiny_pack),
         "--port", str(free_port()), "--workdir", str(tmp_path / "stack")],
        capture_output=True, text=True, timeout=120, env={**env_without_redis, **env},
    )  # fmt: skip
    assert_one_line_error(run.returncode, run.stderr, "redis-server is not installed", "make setup")


def test_demo_names_a_configured_model_root_that_is_missing(tmp_path: Path) -> None:
    missing = tmp_path / "models"
    code, err = stepaudio(
        "demo", "--out", str(tmp_path / "demo"), env={"STEPAUDIO_MODEL_DIR": str(missing)}
    )
    assert_one_line_error(code, err, f"{missing} has no Step-Audio-Chat/", "models tiny")


def test_setup_as_a_user_names_the_command_to_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(system_packages, "PROGRAMS", {"no-such-program-x": "no-such-package-x"})
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert system_packages.main() == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(
        "run: sudo apt-get update && sudo apt-get install -y -q --no-install-recommends "
        "no-such-package-x"
    )


def test_setup_finds_every_program_after_make_setup() -> None:
    """`make setup` ran before the tests (make test depends on it): nothing is missing."""
    assert system_packages.missing_packages() == []
