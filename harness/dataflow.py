"""A dataflow run the way a user runs it, ``python -m bytewax.run MODULE:flow``, as a child.

For the tests, the demo and the benchmarks that need the real command line (its settings read
from the environment, its metrics port, its exit status): :func:`start_dataflow` starts one
from the repository root as a :class:`harness.process.ChildProcess` and returns it running.

>>> bytewax_run("dataflows.fraud:flow", "-w", "2")[1:]
['-m', 'bytewax.run', 'dataflows.fraud:flow', '-w', '2']
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from harness.process import ChildProcess

__all__ = ["ROOT", "bytewax_run", "start_dataflow"]

#: The repository root: the working directory the dataflow modules are imported from.
ROOT = Path(__file__).resolve().parents[1]

#: Seconds a dataflow gets after SIGTERM before SIGKILL.
STOP_TIMEOUT = 20.0


def bytewax_run(flow: str, *args: str) -> list[str]:
    """The command line running ``flow`` (``"dataflows.fraud:flow"``) with Bytewax's ``args``."""
    return [sys.executable, "-m", "bytewax.run", flow, *args]


def start_dataflow(
    flow: str,
    *args: str,
    env: Mapping[str, str],
    log_path: str | os.PathLike[str] | None = None,
    append_log: bool = False,
    inherit_output: bool = False,
    stop_timeout: float = STOP_TIMEOUT,
) -> ChildProcess:
    """Start ``python -m bytewax.run FLOW ARGS`` in its own session; the running child.

    ``env`` is its whole environment. Its output goes to ``log_path`` (appended to with
    ``append_log``, e.g. across restarts), to our terminal with ``inherit_output``, or else to
    a temporary log that :meth:`~harness.process.ChildProcess.stop` removes.
    """
    return ChildProcess(
        bytewax_run(flow, *args), env=env, cwd=ROOT, log_path=log_path, append_log=append_log,
        inherit_output=inherit_output, stop_timeout=stop_timeout, name=f"bytewax.run {flow}",
    ).start()
