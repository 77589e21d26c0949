"""Tests of the child-process helper (harness/process.py) with real child processes."""

from __future__ import annotations

import doctest
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.process import (
    ChildExited,
    ChildProcess,
    NotReady,
    ProcessError,
    file_tail,
    run,
    stop_all,
)

PY = sys.executable


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def gone(pid: int, timeout: float = 5.0) -> bool:
    """True once ``pid`` is dead (a SIGKILL is delivered asynchronously), False after timeout."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def test_start_ready_stop_in_its_own_session_with_a_temporary_log() -> None:
    child = ChildProcess([PY, "-c", "print('up', flush=True); import time; time.sleep(60)"])
    child.start()
    child.wait_ready(lambda: child.log_tail() == "up", timeout=30, what="up")
    assert child.running and child.returncode is None
    assert os.getsid(child.pid) == child.pid and os.getpgid(child.pid) == child.pid
    log = child.log_path
    assert log is not None and log.read_text() == "up\n"
    assert child.stop() == -signal.SIGTERM
    assert not child.running and child.returncode == -signal.SIGTERM
    assert not alive(child.pid)
    assert not log.exists() and not log.parent.exists()  # the temporary log is removed
    assert child.stop() == -signal.SIGTERM  # idempotent


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ignoring', flush=True); time.sleep(60)")
    child = ChildProcess([PY, "-c", code], stop_timeout=0.5).start()
    child.wait_ready(lambda: "ignoring" in child.log_tail(), timeout=30)
    t0 = time.monotonic()
    assert child.stop() == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - t0 < 5


def test_kill_is_sigkill_now() -> None:
    child = ChildProcess([PY, "-c", "import time; time.sleep(60)"], stop_timeout=30).start()
    t0 = time.monotonic()
    assert child.kill() == -signal.SIGKILL
    assert time.monotonic() - t0 < 5 and not alive(child.pid)
    assert child.stop() == -signal.SIGKILL


def test_exit_before_ready_raises_with_the_status_and_the_log_tail() -> None:
    code = "import sys; print('bad config', file=sys.stderr); sys.exit(3)"
    child = ChildProcess([PY, "-c", code], name="tool").start()
    with pytest.raises(ChildExited) as info:
        child.wait_ready(lambda: False, timeout=30, what="listening")
    assert info.value.returncode == 3
    assert info.value.reason == "exited with status 3 before it was listening"
    assert str(info.value) == ("tool: exited with status 3 before it was listening\n"
                               "--- log tail ---\nbad config")
    assert child.stop() == 3


def test_deadline_raises_not_ready_with_the_log_tail_and_leaves_the_child_running() -> None:
    child = ChildProcess([PY, "-c", "print('starting', flush=True); import time; time.sleep(60)"],
                         name="slow").start()
    try:
        t0 = time.monotonic()
        with pytest.raises(NotReady) as info:
            child.wait_ready(lambda: False, timeout=0.5, what="ready")
        assert 0.5 <= time.monotonic() - t0 < 5
        assert info.value.returncode is None
        assert str(info.value).startswith("slow: not ready after 0.5 s\n--- log tail ---\n")
        assert child.running
    finally:
        child.stop()


def test_an_exception_from_the_readiness_check_propagates() -> None:
    with ChildProcess([PY, "-c", "import time; time.sleep(60)"]) as child:
        def wrong() -> bool:
            raise LookupError("another server answers")
        with pytest.raises(LookupError, match="another server"):
            child.wait_ready(wrong, timeout=30)
        assert child.running
    assert not child.running


def test_stop_kills_what_the_child_started_in_its_group_and_nothing_else(tmp_path: Path) -> None:
    # A neighbour of ours, in our own process group: it must survive.
    neighbour = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"])
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time; "
            "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pid_file)!r}, 'w').write(str(g.pid)); time.sleep(60)")
    try:
        child = ChildProcess([PY, "-c", code]).start()
        child.wait_ready(lambda: pid_file.exists() and pid_file.read_text() != "", timeout=30)
        grandchild = int(pid_file.read_text())
        assert os.getpgid(grandchild) == child.pid
        child.stop()
        assert gone(grandchild)
        assert neighbour.poll() is None
    finally:
        neighbour.kill()
        neighbour.wait()


def test_stragglers_of_a_child_that_exited_are_cleared_when_it_is_reaped(tmp_path: Path) -> None:
    pid_file = tmp_path / "straggler.pid"
    code = ("import subprocess, sys; "
            "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pid_file)!r}, 'w').write(str(g.pid))")
    child = ChildProcess([PY, "-c", code]).start()
    assert child.wait(30) == 0
    straggler = int(pid_file.read_text())
    assert alive(straggler)  # wait() does not reap: the group id is still held
    assert child.stop() == 0
    assert gone(straggler)


def test_without_a_new_session_only_the_pid_is_signalled() -> None:
    neighbour = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"])  # our group too
    try:
        child = ChildProcess([PY, "-c", "import time; time.sleep(60)"], new_session=False,
                             stop_timeout=10).start()
        assert os.getpgid(child.pid) == os.getpgrp() == os.getpgid(neighbour.pid)
        assert child.stop() == -signal.SIGTERM
        assert neighbour.poll() is None
    finally:
        neighbour.kill()
        neighbour.wait()


def test_log_file_append_stdout_apart_env_and_cwd(tmp_path: Path) -> None:
    log, out = tmp_path / "logs" / "child.log", tmp_path / "out.txt"
    log.parent.mkdir()
    log.write_text("before\n")
    code = ("import os, sys; print(os.getcwd(), os.environ['WHO']); "
            "print('warn', file=sys.stderr)")
    child = ChildProcess([PY, "-c", code], env={**os.environ, "WHO": "me"}, cwd=tmp_path,
                         log_path=log, append_log=True, stdout_path=out).start()
    assert child.wait(30) == 0 and child.stop() == 0
    assert log.read_text() == "before\nwarn\n"
    assert out.read_text() == f"{tmp_path} me\n"
    assert log.exists()  # a log the caller named is kept
    child2 = ChildProcess([PY, "-c", "print('again')"], log_path=log).start()
    assert child2.wait(30) == 0 and child2.stop() == 0
    assert file_tail(log) == "again"


def test_wait_times_out_without_stopping_the_child() -> None:
    with ChildProcess([PY, "-c", "import time; time.sleep(60)"]) as child:
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(0.2)
        assert child.running


def test_a_missing_program_is_a_process_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-program"
    with pytest.raises(ProcessError, match="cannot execute .*no-such-program"):
        ChildProcess([missing]).start()


def test_file_tail_strips_colour_codes_and_keeps_the_end(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_bytes(b"\x1b[31mred\x1b[0m line\n" + b"y" * 10)
    assert file_tail(log) == "red line\n" + "y" * 10
    assert file_tail(log, max_bytes=4) == "yyyy"
    assert file_tail(tmp_path / "none.log").startswith("(log unreadable: ")
    (tmp_path / "empty.log").write_bytes(b"")
    assert file_tail(tmp_path / "empty.log") == "(log empty)"


def test_run_returns_status_and_output_and_clears_the_group_on_timeout(tmp_path: Path) -> None:
    r = run([PY, "-c", "import sys; print('o'); print('e', file=sys.stderr); sys.exit(4)"],
            timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (4, b"o\n", b"e\n")
    pid_file = tmp_path / "g.pid"
    code = ("import subprocess, sys, time; "
            "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pid_file)!r}, 'w').write(str(g.pid)); print('partial', flush=True); "
            "time.sleep(60)")
    with pytest.raises(subprocess.TimeoutExpired) as info:
        run([PY, "-c", code], timeout=2)
    assert info.value.output == b"partial\n"
    assert gone(int(pid_file.read_text()))


def test_stop_all_shares_one_grace_period() -> None:
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ignoring', flush=True); time.sleep(60)")
    children = [ChildProcess([PY, "-c", code], stop_timeout=1.0).start() for _ in range(2)]
    quitter = ChildProcess([PY, "-c", "import time; time.sleep(60)"]).start()
    for c in children:
        c.wait_ready(lambda c=c: "ignoring" in c.log_tail(), timeout=30)
    t0 = time.monotonic()
    assert stop_all([*children, quitter], timeout=1.0) == [-signal.SIGKILL, -signal.SIGKILL, -signal.SIGTERM]
    assert 1.0 <= time.monotonic() - t0 < 1.8  # one second for all, not one each


@pytest.mark.parametrize("module", ["harness.process", "harness.dataflow"])
def test_doctests(module: str) -> None:
    """harness/ is not among pytest's doctest paths: its examples run here."""
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
