"""A real Prometheus server for the tests and for watching a running demo.

Debian's ``prometheus`` package installs ``/usr/bin/prometheus`` and ``/usr/bin/promtool``;
:func:`ensure_installed` installs it with ``apt-get`` when it is missing (only as root).
:class:`PrometheusServer` runs one Prometheus of our own, in its own session, on a loopback port,
with its storage in a temporary directory, and stops it by its own PID; it never touches a
``prometheus`` service or any other process.

    with PrometheusServer("dashboards/prometheus.yml", targets=["127.0.0.1:3030"]) as prom:
        prom.query('sum(rate(undertow_events_total[1m]))')

From a shell::

    python -m harness.prometheus --ensure-installed     # quiet and idempotent (scripts/test.sh)
    python -m harness.prometheus --config dashboards/prometheus.yml --port 9090
    # serves until Ctrl-C (scripts/prometheus.sh does this)

The configuration is used as written, except that :func:`with_targets` can replace the one
``- targets: [...]`` line of a ``static_configs`` block (the shipped ``dashboards/prometheus.yml``
has exactly one), and every rule file it names is copied beside it, so relative paths keep
working.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from harness import debian, process
from harness.process import ChildExited, ChildProcess, NotReady, file_tail
from undertow.errors import UndertowError

__all__ = [
    "PrometheusError",
    "PrometheusServer",
    "ensure_installed",
    "find_binary",
    "promtool_check_config",
    "promtool_check_rules",
    "with_targets",
]

LOOPBACK = "127.0.0.1"
DEBIAN_PACKAGE = "prometheus"
#: Seconds :meth:`PrometheusServer.start` waits for ``/-/ready``.
STARTUP_TIMEOUT = 30.0
#: Seconds :meth:`PrometheusServer.stop` waits after SIGTERM before SIGKILL.
STOP_TIMEOUT = 10.0

_TARGETS_LINE = re.compile(r"^(?P<indent>\s*-\s*targets:\s*)\[[^\]\n]*\](?P<rest>[^\n]*)$", re.M)
_RULE_FILES = re.compile(r"^rule_files:\s*\n((?:[ \t]+-[^\n]*\n?)+)", re.M)


class PrometheusError(UndertowError, RuntimeError):
    """Prometheus or promtool is missing, would not start, or rejected something."""


# -- binaries -------------------------------------------------------------------------------------
def find_binary(name: str) -> str | None:
    """Path of ``prometheus`` or ``promtool``: on PATH, else Debian's ``/usr/bin``; or None."""
    return debian.find_binary(name)


def ensure_installed(*, quiet: bool = True) -> tuple[str, str]:
    """Paths of ``prometheus`` and ``promtool``, installing Debian's package if either is missing
    (:func:`harness.debian.apt_install`: root only; otherwise it says what to run)."""
    prom, tool = find_binary("prometheus"), find_binary("promtool")
    if prom and tool:
        return prom, tool
    try:
        debian.apt_install(DEBIAN_PACKAGE, quiet=quiet)
    except debian.InstallError as ex:
        raise PrometheusError(str(ex)) from None
    prom, tool = find_binary("prometheus"), find_binary("promtool")
    if not (prom and tool):
        raise PrometheusError(f"the {DEBIAN_PACKAGE} package did not provide prometheus/promtool")
    return prom, tool


def _promtool(*args: str) -> str:
    tool = find_binary("promtool")
    if tool is None:
        raise PrometheusError("promtool is not installed (python -m harness.prometheus "
                              "--ensure-installed)")
    r = process.run([tool, *args], timeout=60, name="promtool")
    output = (r.stdout + r.stderr).decode(errors="replace").strip()
    if r.returncode != 0:
        raise PrometheusError(f"promtool {' '.join(args)} failed:\n{output}")
    return output


def promtool_check_config(path: str | os.PathLike[str]) -> str:
    """``promtool check config PATH`` (which also checks the rule files it names); its output."""
    return _promtool("check", "config", str(path))


def promtool_check_rules(path: str | os.PathLike[str]) -> str:
    """``promtool check rules PATH``; its output. Raises :class:`PrometheusError` on failure."""
    return _promtool("check", "rules", str(path))


def promtool_test_rules(path: str | os.PathLike[str]) -> str:
    """``promtool test rules PATH`` (rule unit tests); its output. Raises on a failed test."""
    return _promtool("test", "rules", str(path))


# -- configuration --------------------------------------------------------------------------------
def with_targets(config_text: str, targets: Sequence[str]) -> str:
    """``config_text`` with its one ``- targets: [...]`` line listing ``targets`` instead.

    >>> with_targets("  - targets: ['127.0.0.1:3030']  # x\\n", ["127.0.0.1:4000"])
    '  - targets: ["127.0.0.1:4000"]  # x\\n'
    """
    found = _TARGETS_LINE.findall(config_text)
    if len(found) != 1:
        raise PrometheusError(
            f"expected exactly one '- targets: [...]' line in the config, found {len(found)}"
        )
    listed = json.dumps(list(targets))
    return _TARGETS_LINE.sub(lambda m: f"{m['indent']}{listed}{m['rest']}", config_text)


def rule_files(config_text: str) -> list[str]:
    """The paths listed under the top-level ``rule_files:`` (block list form)."""
    m = _RULE_FILES.search(config_text)
    if m is None:
        return []
    out = []
    for line in m.group(1).splitlines():
        item = line.strip()[1:].split(" #")[0].strip().strip("'\"")
        if item:
            out.append(item)
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


# -- server ---------------------------------------------------------------------------------------
class PrometheusServer:
    """One Prometheus process of our own, with storage and config in a temporary directory.

    ``config`` is a Prometheus configuration file; ``targets`` (optional) replaces the targets of
    its one static scrape config; the rule files it names (relative to the config's directory)
    are copied beside the written config. ``port`` 0 picks a free loopback port.
    """

    def __init__(
        self,
        config: str | os.PathLike[str],
        *,
        targets: Sequence[str] | None = None,
        port: int = 0,
        retention: str = "1d",
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.config_source = Path(config)
        self.targets = list(targets) if targets is not None else None
        self.requested_port = port
        self.retention = retention
        self.log_path = Path(log_path) if log_path is not None else None
        self.port: int | None = None
        self.child: ChildProcess | None = None
        self.workdir: Path | None = None
        self.config_path: Path | None = None
        self._log_path: Path | None = None

    # lifecycle --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise PrometheusError("Prometheus is not started")
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    def start(self, timeout: float = STARTUP_TIMEOUT) -> Self:
        binary = find_binary("prometheus")
        if binary is None:
            raise PrometheusError("prometheus is not installed (python -m harness.prometheus "
                                  "--ensure-installed)")
        self.workdir = Path(tempfile.mkdtemp(prefix="undertow-prometheus-"))
        text = self.config_source.read_text()
        if self.targets is not None:
            text = with_targets(text, self.targets)
        for rel in rule_files(text):
            src = (self.config_source.parent / rel)
            if "*" in rel or Path(rel).is_absolute():
                continue  # globs and absolute paths are read where they are
            dst = self.workdir / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        self.config_path = self.workdir / "prometheus.yml"
        self.config_path.write_text(text)
        log_path = self.log_path or (self.workdir / "prometheus.log")
        self._log_path = log_path
        attempts = 1 if self.requested_port else 3
        for attempt in range(attempts):
            self.port = self.requested_port or free_port()
            cmd = [
                binary,
                f"--config.file={self.config_path}",
                f"--web.listen-address={LOOPBACK}:{self.port}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--storage.tsdb.retention.time={self.retention}",
                "--log.level=warn",
            ]
            self.child = ChildProcess(cmd, cwd=self.workdir, log_path=log_path, append_log=True,
                                      stop_timeout=STOP_TIMEOUT, name="prometheus").start()
            try:
                self.child.wait_ready(self._ready, timeout=timeout, interval=0.1, what="ready")
                return self
            except ChildExited as ex:
                self._stop_process()
                if attempt == attempts - 1:
                    self._cleanup()
                    raise PrometheusError(
                        f"prometheus exited with status {ex.returncode}: {ex.log_tail}"
                    ) from None
            except NotReady as ex:
                self._stop_process()
                self._cleanup()
                raise PrometheusError(
                    f"prometheus not ready after {timeout:.0f} s: {ex.log_tail}"
                ) from None
            except BaseException:
                self._stop_process()
                self._cleanup()
                raise
        raise AssertionError("unreachable")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def log_tail(self, n: int = 2000) -> str:
        if self._log_path is None:
            return ""
        return file_tail(self._log_path, n)

    def _stop_process(self) -> None:
        if self.child is not None:
            self.child.stop()
        self.child = None

    def _cleanup(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def stop(self) -> None:
        """SIGTERM our own Prometheus (SIGKILL after a timeout) and remove its directory."""
        self._stop_process()
        self._cleanup()

    def __enter__(self) -> Self:
        return self.start() if self.child is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # HTTP API ---------------------------------------------------------------------------------
    def api(self, path: str, params: Iterable[tuple[str, str]] | dict[str, str] = (),
            timeout: float = 10.0) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of a successful answer, else PrometheusError."""
        query = urllib.parse.urlencode(list(params.items()) if isinstance(params, dict)
                                       else list(params))
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as ex:  # 400/422: a bad query; the body says why
            try:
                body = json.loads(ex.read())
            except ValueError:
                raise PrometheusError(f"GET {url}: HTTP {ex.code}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')} (GET {url})")
        return body["data"]

    def query(self, expr: str, time: float | None = None) -> list[dict[str, Any]]:
        """Instant query; the ``result`` list (vector samples, or a scalar as one-element list)."""
        params = {"query": expr}
        if time is not None:
            params["time"] = f"{time:.3f}"
        data = self.api("query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def wait_for(self, expr: str, ok: Callable[[list[dict[str, Any]]], bool], timeout: float,
                 what: str) -> list[dict[str, Any]]:
        """Query ``expr`` every 0.5 s until ``ok(result)``; its result, or an AssertionError
        naming ``what`` after ``timeout`` seconds (for tests)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = self.query(expr)
            if ok(last):
                return last
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}: {expr} = {last}")

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """Range query; a list of ``{"metric": {...}, "values": [[t, "v"], ...]}``."""
        data = self.api("query_range", {"query": expr, "start": f"{start:.3f}",
                                        "end": f"{end:.3f}", "step": f"{step:g}"})
        return data["result"]

    def alerts(self) -> list[dict[str, Any]]:
        """Active (pending or firing) alerts: GET /api/v1/alerts."""
        return self.api("alerts")["alerts"]

    def rules(self) -> list[dict[str, Any]]:
        """Loaded rule groups with each rule's parsed query and state: GET /api/v1/rules."""
        return self.api("rules")["groups"]

    def targets_health(self) -> list[dict[str, Any]]:
        """Active scrape targets with their health: GET /api/v1/targets."""
        return self.api("targets")["activeTargets"]


# -- command line ---------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m harness.prometheus",
        description="Install Prometheus (Debian package), or run one with a config until Ctrl-C.",
    )
    ap.add_argument("--ensure-installed", action="store_true",
                    help="install Debian's prometheus package if missing, then exit")
    ap.add_argument("--config", type=Path, help="Prometheus config to serve with")
    ap.add_argument("--port", type=int, default=9090, help="listen port (0 = a free one; "
                    "if the port is taken a free one is used)")
    ap.add_argument("--targets", default="",
                    help="comma-separated host:port list replacing the config's static targets")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    try:
        ensure_installed(quiet=not args.verbose)
    except PrometheusError as ex:
        print(f"undertow: {ex}", file=sys.stderr)
        return 1
    if args.ensure_installed and args.config is None:
        return 0
    if args.config is None:
        ap.error("--config is required unless --ensure-installed is given alone")
    port = args.port
    if port and not _port_free(port):
        print(f"port {port} is taken; using a free port", file=sys.stderr)
        port = 0
    targets = [t.strip() for t in args.targets.split(",") if t.strip()] or None
    server = PrometheusServer(args.config, targets=targets, port=port)
    stop = {"now": False}

    def on_signal(signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        server.start()
        print(f"prometheus: {server.url}  (pid {server.pid}; Ctrl-C stops it)\n"
              f"  targets: {server.url}/targets   alerts: {server.url}/alerts   "
              f"rules: {server.url}/rules", flush=True)
        while not stop["now"]:
            if server.child is None or not server.child.running:
                print(f"prometheus exited: {server.log_tail()}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    except PrometheusError as ex:
        print(f"undertow: {ex}", file=sys.stderr)
        return 1
    finally:
        server.stop()
    print("prometheus stopped", flush=True)
    return 0


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
