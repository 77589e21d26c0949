"""Installing a Debian package that tests or tools need (Prometheus, Chromium), once, as root.

Installing needs root (``apt-get install -y --no-install-recommends PACKAGE``, after one
``apt-get update`` if the package is not known yet); otherwise this raises with the command to
run. Nothing is started: Debian's maintainer scripts may try to start a service, which does not
happen without systemd and is never relied on here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from undertow.errors import UndertowError


class InstallError(UndertowError, RuntimeError):
    """A package is missing and could not be installed."""


def find_binary(name: str) -> str | None:
    """Path of an executable: on PATH, else Debian's ``/usr/bin``; or None."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path("/usr/bin") / name
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


def apt_install(package: str, *, quiet: bool = True) -> None:
    """``apt-get install`` one package (refreshing the package lists once if needed)."""
    if os.geteuid() != 0:
        raise InstallError(
            f"{package} is not installed and installing it needs root: run "
            f"`sudo apt-get install -y --no-install-recommends {package}`"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    out = subprocess.DEVNULL if quiet else None

    def apt(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["apt-get", *args], env=env, stdout=out, stderr=subprocess.PIPE,
                              text=True, check=False)

    install = ("install", "-y", "-q", "--no-install-recommends", package)
    known = subprocess.run(["apt-cache", "show", package], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False).returncode == 0
    if not known:
        r = apt("update", "-q")
        if r.returncode != 0:
            raise InstallError(f"apt-get update failed: {r.stderr.strip()[-2000:]}")
    r = apt(*install)
    if r.returncode != 0 and known:  # a stale package list: refresh once and retry
        apt("update", "-q")
        r = apt(*install)
    if r.returncode != 0:
        raise InstallError(f"apt-get install {package} failed: {r.stderr.strip()[-2000:]}")
