"""Install the system programs the stack and the tests need (run by `make setup`).

Stdlib only: it runs before the virtual environment exists. Each program comes from a Debian
package; as root the missing ones are installed with apt-get (one update first), otherwise the
script stops with the one command to run. Set STEPAUDIO_SKIP_SYSTEM_PACKAGES=1 to skip it
(e.g. in an image that provides the programs some other way).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

# program -> Debian package; who needs it
PROGRAMS = {
    "redis-server": "redis-server",  # the stack's session store (make demo, stepaudio serve)
    "espeak-ng": "espeak-ng",  # speech clips for the tests and load tests
    "chromium": "chromium",  # the browser client tests
    "promtool": "prometheus",  # alert/recording rule checks and the real-Prometheus test
}


def missing_packages() -> list[str]:
    return sorted({package for program, package in PROGRAMS.items() if not shutil.which(program)})


def install_command(packages: list[str], sudo: bool) -> list[str]:
    prefix = ["sudo"] if sudo else []
    return [*prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]


def main() -> int:
    if os.environ.get("STEPAUDIO_SKIP_SYSTEM_PACKAGES") == "1":
        return 0
    packages = missing_packages()
    if not packages:
        return 0
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        command = " ".join(["sudo apt-get update &&", *install_command(packages, sudo=True)])
        print(f"make setup: error: missing system packages {', '.join(packages)}; run: {command}")
        return 1
    print(f"make setup: installing {', '.join(packages)} with apt-get ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for step in (["apt-get", "update", "-q"], install_command(packages, sudo=False)):
        if subprocess.run(step, env=env, check=False).returncode != 0:
            print(f"make setup: error: `{' '.join(step)}` failed (see above)")
            return 1
    still = missing_packages()
    if still:
        print(f"make setup: error: {', '.join(still)} installed but their programs are not on PATH")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
