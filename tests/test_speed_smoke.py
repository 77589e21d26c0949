"""benchmarks/speed.py keeps working: a small run of every row, and the memory children.

The full benchmark takes 10-20 minutes; this runs each row once on 1,000 events (one model) and
checks what the benchmark itself checks and prints: one prediction per event from every child
row (the benchmark fails otherwise), every label learned where the run says so, the table's rows,
and that the feature and label-join states of ``--memory`` hold what they were given.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.speed import ROWS, memory_child

ROOT = Path(__file__).resolve().parents[1]
N = 1000


def test_every_row_scores_every_event(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    r = subprocess.run(
        [sys.executable, "benchmarks/speed.py", "--events", str(N), "--reps", "1",
         "--models", "logreg", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    d = json.loads(out.read_text())
    assert d["events"] == N and d["labels"] == N
    rows = d["runs"]["logreg"][0]
    assert list(rows) == list(ROWS)
    for name, row in rows.items():
        assert row["events"] == N
        if name != "plain loop":
            assert row["predictions"] == N, name
            assert row["seconds"] > 0 and row["p50_ms"] is not None, name
        # The naive Bytewax dataflow prints no counts; every other row says it learned all.
        assert row["learned"] == (None if name == "naive Bytewax" else N), name
    assert rows["plain loop"]["ratio"] == 1.0
    for name in ROWS:
        assert f"| {name} |" in r.stdout
    assert "2 processes / 1 process" in r.stdout


def test_memory_children_hold_what_they_were_given() -> None:
    join = memory_child("join", 2000, 2000)
    assert join["entities"] == 2000
    spec = memory_child("spec", 3000, 300)
    assert (spec["records"], spec["entities"]) == (3000, 300)
    card = memory_child("card", 3000, 3000)
    assert (card["records"], card["entities"]) == (3000, 3000)
