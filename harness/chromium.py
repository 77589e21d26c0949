"""Headless Chromium (Debian's ``chromium``): renders a backtest's HTML report to check it.

    python -m harness.chromium --ensure-installed       # quiet and idempotent (scripts/test.sh)
    python -m harness.chromium report.html report.png   # a screenshot of a page

Chromium runs with a new empty profile and without its background network traffic (this
machine's network is closed), as root without the sandbox, in its own session
(:func:`harness.process.run`): what it leaves behind in its process group is killed when it ends.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import debian, process

DEBIAN_PACKAGE = "chromium"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
)


def ensure_installed(*, quiet: bool = True) -> str:
    path = debian.find_binary("chromium")
    if path:
        return path
    debian.apt_install(DEBIAN_PACKAGE, quiet=quiet)
    path = debian.find_binary("chromium")
    if not path:
        raise debian.InstallError("the chromium package did not provide chromium")
    return path


def _run(page: Path, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[bytes]:
    binary = debian.find_binary("chromium")
    if binary is None:
        raise debian.InstallError("chromium is not installed (python -m harness.chromium "
                                  "--ensure-installed)")
    with tempfile.TemporaryDirectory(prefix="undertow-chromium-") as profile:
        return process.run(
            [binary, *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
            timeout=timeout, name="chromium",
        )


def screenshot(page: str | Path, png: str | Path, *, width: int = 1200,
               height: int = 2400) -> Path:
    """Render ``page`` (a local HTML file) to a PNG of ``width`` x ``height``."""
    out = Path(png).resolve()
    r = _run(Path(page), f"--screenshot={out}", f"--window-size={width},{height}")
    if r.returncode != 0 or not out.is_file():
        raise RuntimeError(f"chromium could not render {page}: {r.stderr.decode()[-1500:]}")
    return out


def dump_dom(page: str | Path) -> str:
    """The page's DOM after Chromium loaded and laid it out."""
    r = _run(Path(page), "--dump-dom")
    if r.returncode != 0:
        raise RuntimeError(f"chromium could not load {page}: {r.stderr.decode()[-1500:]}")
    return r.stdout.decode()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.chromium", description=__doc__)
    ap.add_argument("--ensure-installed", action="store_true")
    ap.add_argument("page", nargs="?")
    ap.add_argument("png", nargs="?")
    a = ap.parse_args(argv)
    if a.ensure_installed:
        try:
            ensure_installed()
        except debian.InstallError as ex:
            print(f"undertow: {ex}", file=sys.stderr)
            return 2
    if a.page:
        print(screenshot(a.page, a.png or Path(a.page).with_suffix(".png")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
