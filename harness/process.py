"""One child process of our own: start it, wait until it is ready, stop it by its PID, its log.

Every program the harness runs beside the tests (the embedded broker, Prometheus, headless
Chromium, ``python -m bytewax.run`` dataflows) is a :class:`ChildProcess`:

    with ChildProcess(["prometheus", "--config.file=p.yml"], log_path=tmp / "p.log") as child:
        child.wait_ready(lambda: port_open(9090), timeout=30, what="listening")
        ...
    # left the block: SIGTERM, SIGKILL after the grace period, reaped

Rules it keeps:

* The child runs in its own session (``new_session=True``, the default), so a Ctrl-C in the
  terminal reaches the owner only, and the owner stops the child in order.
* Only the child is ever signalled: by its PID, and, when it leads its own session, its process
  group (which holds the child and what it started, nothing else). Signals are sent only while
  the child is not yet reaped: its PID (and so its group id) cannot have been reused by then.
  Nothing is ever looked up or signalled by name.
* :meth:`ChildProcess.stop` sends SIGTERM, waits ``stop_timeout`` seconds, sends SIGKILL, then
  kills whatever is left in the group and reaps the child; it is idempotent.
* A readiness wait fails with the tail of the child's log in the message, both when the child
  exits first (:class:`ChildExited`) and when the deadline passes (:class:`NotReady`).

>>> import sys
>>> code = "print('hello', flush=True); import time; time.sleep(60)"
>>> child = ChildProcess([sys.executable, "-c", code]).start()
>>> child.wait_ready(lambda: "hello" in child.log_tail(), timeout=30, what="greeting")
>>> child.running, child.stop() == -15, child.running
(True, True, False)
>>> child.stop() == -15  # idempotent: nothing is signalled twice
True
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from undertow.errors import UndertowError

__all__ = [
    "ChildExited", "ChildProcess", "NotReady", "ProcessError", "file_tail", "run", "stop_all",
]

#: Seconds :meth:`ChildProcess.stop` waits after SIGTERM before it sends SIGKILL.
DEFAULT_STOP_TIMEOUT = 10.0

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def file_tail(path: str | os.PathLike[str], max_bytes: int = 4000) -> str:
    """The last ``max_bytes`` of a log file, decoded, without colour codes, stripped."""
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - max_bytes))
            text = log.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(log unreadable: {exc})"
    return _ANSI_ESCAPE.sub("", text).strip() or "(log empty)"


class ProcessError(UndertowError, RuntimeError):
    """A child process could not be started, or did not become ready.

    ``reason`` is the message without the log tail; ``log_tail`` the end of the child's log;
    ``returncode`` its exit status if it has exited (negative: killed by that signal).
    """

    def __init__(self, reason: str, *, name: str, log_tail: str,
                 returncode: int | None = None) -> None:
        super().__init__(f"{name}: {reason}\n--- log tail ---\n{log_tail}")
        self.reason = reason
        self.name = name
        self.log_tail = log_tail
        self.returncode = returncode


class ChildExited(ProcessError):
    """The child exited before it was ready."""


class NotReady(ProcessError):
    """The child was still running but not ready when the deadline passed."""


class ChildProcess:
    """One command run as a child process, owned by this object (see the module docstring).

    ``argv``: the command. ``env``: its whole environment (``None``: ours). ``cwd``: its working
    directory. Output: with ``inherit_output`` it writes to our stdout and stderr; otherwise
    stdout and stderr go to ``log_path`` (truncated, or appended to with ``append_log``), or,
    without ``log_path``, to a temporary log file that :meth:`stop` removes. ``stdout_path``
    sends stdout to its own file (``log_path`` then gets stderr only). ``name`` appears in error
    messages (default: the program's file name).
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        append_log: bool = False,
        stdout_path: str | os.PathLike[str] | None = None,
        inherit_output: bool = False,
        new_session: bool = True,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        name: str | None = None,
    ) -> None:
        if inherit_output and (log_path is not None or stdout_path is not None):
            raise ValueError("inherit_output excludes log_path and stdout_path")
        self.argv = [os.fspath(a) for a in argv]
        if not self.argv:
            raise ValueError("ChildProcess needs a command")
        self.env = dict(env) if env is not None else None
        self.cwd = Path(cwd) if cwd is not None else None
        self.name = name or Path(self.argv[0]).name
        self.new_session = new_session
        self.stop_timeout = stop_timeout
        self.inherit_output = inherit_output
        self._append_log = append_log
        self._requested_log = Path(log_path) if log_path is not None else None
        self._stdout_path = Path(stdout_path) if stdout_path is not None else None
        self._log_path: Path | None = None
        self._tmp_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._reaped = False
        self._terminated = False

    # ------------------------------------------------------------------------------ state
    @property
    def pid(self) -> int:
        """The child's PID (also its process group id when it leads its own session)."""
        if self._proc is None:
            raise ProcessError("not started", name=self.name, log_tail=self.log_tail())
        return self._proc.pid

    @property
    def started(self) -> bool:
        return self._proc is not None

    @property
    def running(self) -> bool:
        """True from :meth:`start` until the child exits (a zombie counts as exited)."""
        return self._proc is not None and self._exit_status() is None

    @property
    def returncode(self) -> int | None:
        """The exit status once the child has exited (negative: the signal), else None."""
        return None if self._proc is None else self._exit_status()

    @property
    def log_path(self) -> Path | None:
        """Where the child's output goes (stderr only when ``stdout_path`` is given)."""
        return self._log_path

    @property
    def stdout_path(self) -> Path | None:
        return self._stdout_path

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The last ``max_bytes`` of the log, without colour codes."""
        if self._log_path is None:
            return "(output not captured)" if self.inherit_output else "(no log)"
        return file_tail(self._log_path, max_bytes)

    def __repr__(self) -> str:
        if self._proc is None:
            return f"ChildProcess({self.name!r}, not started)"
        code = self.returncode
        state = "running" if code is None else f"exited {code}"
        return f"ChildProcess({self.name!r}, {state}, pid={self._proc.pid})"

    # -------------------------------------------------------------------------- lifecycle
    def start(self) -> Self:
        """Launch the command. Raises :class:`ProcessError` if it cannot be executed."""
        if self._proc is not None:
            raise ProcessError(f"already started (pid {self._proc.pid})", name=self.name,
                               log_tail=self.log_tail())
        opened: list[IO[bytes]] = []
        stdout: int | IO[bytes] | None = None
        stderr: int | IO[bytes] | None = None
        if not self.inherit_output:
            if self._requested_log is not None:
                self._requested_log.parent.mkdir(parents=True, exist_ok=True)
                self._log_path = self._requested_log
            else:
                slug = re.sub(r"[^A-Za-z0-9._-]+", "-", self.name).strip("-")[:40]
                self._tmp_dir = Path(tempfile.mkdtemp(prefix=f"undertow-{slug}-"))
                self._log_path = self._tmp_dir / "child.log"
            log = open(self._log_path, "ab" if self._append_log else "wb")  # noqa: SIM115
            opened.append(log)
            stdout = stderr = log
            if self._stdout_path is not None:
                self._stdout_path.parent.mkdir(parents=True, exist_ok=True)
                stdout = open(self._stdout_path, "wb")  # noqa: SIM115
                opened.append(stdout)
        try:
            self._proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                env=self.env, cwd=self.cwd, start_new_session=self.new_session, close_fds=True,
            )
        except OSError as exc:
            self._remove_tmp()
            raise ProcessError(f"cannot execute {self.argv[0]!r}: {exc}", name=self.name,
                               log_tail="(not started)") from exc
        finally:
            for f in opened:  # the child keeps its own descriptors
                f.close()
        self._reaped = False
        self._terminated = False
        return self

    def wait_ready(
        self,
        ready: Callable[[], bool],
        *,
        timeout: float,
        interval: float = 0.05,
        what: str = "ready",
    ) -> None:
        """Call ``ready()`` every ``interval`` s until it returns True.

        Raises :class:`ChildExited` as soon as the child exits, :class:`NotReady` once
        ``timeout`` seconds have passed; both carry the log tail. An exception raised by
        ``ready`` propagates (the child is left running: the caller stops it).
        """
        deadline = time.monotonic() + timeout
        while True:
            self._raise_if_exited(what)
            if ready():
                return
            self._raise_if_exited(what)
            if time.monotonic() >= deadline:
                raise NotReady(f"not {what} after {timeout:g} s", name=self.name,
                               log_tail=self.log_tail())
            time.sleep(interval)

    def wait(self, timeout: float | None = None) -> int:
        """Wait until the child exits; its exit status. ``subprocess.TimeoutExpired`` on timeout.

        The child is not reaped here (so :meth:`stop` can still clear its process group)."""
        self._require_started()
        if not self._wait_exit(timeout):
            raise subprocess.TimeoutExpired(self.argv, timeout or 0.0)
        code = self._exit_status()
        assert code is not None
        return code

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, SIGKILL after ``timeout`` (default ``stop_timeout``) s, reap; the exit status.

        Idempotent; ``None`` if the child was never started."""
        if self._proc is None:
            return None
        if not self._reaped:
            if self._exit_status() is None:
                if not self._terminated:  # terminate() may have sent it already
                    self._signal(signal.SIGTERM)
                grace = self.stop_timeout if timeout is None else timeout
                if not self._wait_exit(grace):
                    self._signal(signal.SIGKILL)
                    self._wait_exit(None)
            self._reap()
        self._remove_tmp()
        return self._proc.returncode

    def terminate(self) -> None:
        """Send SIGTERM now and return (:meth:`stop` waits and escalates; :func:`stop_all`)."""
        self._require_started()
        if not self._reaped and self._exit_status() is None:
            self._signal(signal.SIGTERM)
            self._terminated = True

    def kill(self) -> int:
        """SIGKILL now (a crash, as the recovery tests need), wait and reap; the exit status."""
        self._require_started()
        assert self._proc is not None
        if not self._reaped:
            if self._exit_status() is None:
                self._signal(signal.SIGKILL)
                self._wait_exit(None)
            self._reap()
        return self._proc.returncode

    def __enter__(self) -> Self:
        return self if self._proc is not None else self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---------------------------------------------------------------------------- helpers
    def _require_started(self) -> None:
        if self._proc is None:
            raise ProcessError("not started", name=self.name, log_tail=self.log_tail())

    def _raise_if_exited(self, what: str) -> None:
        code = self._exit_status()
        if code is not None:
            raise ChildExited(f"exited with status {code} before it was {what}", name=self.name,
                              log_tail=self.log_tail(), returncode=code)

    def _exit_status(self) -> int | None:
        """The exit status if the child has exited, without reaping it (``waitid`` WNOWAIT)."""
        proc = self._proc
        assert proc is not None
        if self._reaped or proc.returncode is not None:
            return proc.returncode
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped behind our back: Popen.wait will say 0
            self._reap()
            return proc.returncode
        if info is None or info.si_pid == 0:
            return None
        if info.si_code == os.CLD_EXITED:
            return info.si_status
        return -info.si_status  # CLD_KILLED / CLD_DUMPED: the signal, as Popen reports it

    def _wait_exit(self, timeout: float | None) -> bool:
        """Wait (without reaping) until the child exits; False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while self._exit_status() is None:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                delay = min(delay, remaining)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return True

    def _signal(self, sig: signal.Signals) -> None:
        """Signal the child (and its group, if it leads one); only while it is not reaped."""
        proc = self._proc
        assert proc is not None
        if self._reaped:
            return
        try:
            if self.new_session:
                os.killpg(proc.pid, sig)
            else:
                os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass

    def _reap(self) -> None:
        proc = self._proc
        assert proc is not None
        if self._reaped:
            return
        if self.new_session:
            # The exited leader (a zombie) still holds the group id: clear what is left of it.
            self._signal(signal.SIGKILL)
        proc.wait()
        self._reaped = True

    def _remove_tmp(self) -> None:
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None
            self._log_path = None


def stop_all(children: Sequence[ChildProcess], timeout: float | None = None) -> list[int | None]:
    """Stop several children at once: SIGTERM to all, one shared grace period, SIGKILL to the
    rest, reap all; their exit statuses (peers of one cluster then shut down together)."""
    started = [c for c in children if c.started]
    for c in started:
        c.terminate()
    grace = max((c.stop_timeout for c in started), default=0.0) if timeout is None else timeout
    deadline = time.monotonic() + grace
    for c in started:
        c.stop(max(0.0, deadline - time.monotonic()))
    return [c.stop() for c in children]


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    name: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command to its end as a :class:`ChildProcess`; its status, stdout and stderr.

    Unlike :func:`subprocess.run`, whatever the command started in its process group is cleared
    when it ends, and a timeout stops the whole group (SIGTERM, then SIGKILL) before
    ``subprocess.TimeoutExpired`` is raised with the output so far.

    >>> import sys
    >>> r = run([sys.executable, "-c", "import sys; print('out'); sys.exit('err')"], timeout=30)
    >>> r.returncode, r.stdout, r.stderr
    (1, b'out\\n', b'err\\n')
    """
    with tempfile.TemporaryDirectory(prefix="undertow-run-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        child = ChildProcess(argv, env=env, cwd=cwd, log_path=err, stdout_path=out, name=name,
                             stop_timeout=5.0).start()
        try:
            code = child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.stop()
            raise subprocess.TimeoutExpired(child.argv, timeout, output=out.read_bytes(),
                                            stderr=err.read_bytes()) from None
        finally:
            child.stop()
        return subprocess.CompletedProcess(child.argv, code, out.read_bytes(), err.read_bytes())
