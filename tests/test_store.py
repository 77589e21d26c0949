"""The label join's state in RocksDB (connectors/store.py) against the one in memory.

* The deadline map on disk gives exactly what :class:`~undertow.label_join.DeadlineMap` gives, on
  a random script with ties, negative deadlines, replacements and horizons per state.
* A join on disk releases exactly what a join in memory releases, step by step, and survives a
  snapshot (pickle) and resume mid-stream, in this process and after a kill -9 of another.
* A snapshot is a checkpoint: its new files hold what changed, not the state; the pickle is a
  handle; checkpoints do not pile up with snapshots or restarts; reading a snapshot changes
  nothing; a checkpoint that is gone is one line.
* A Bytewax dataflow with the store reproduces River's progressive validation exactly, also when
  it is aborted mid-stream and resumed from its recovery store.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from river import metrics

from connectors.kafka import KafkaRecord
from connectors.store import RocksJoinState, StoreError
from operators.decode import decode_events, decode_labels
from operators.learning import serve_and_learn
from tests.test_learning import _model
from tests.test_learning_flow import encoded
from undertow.label_join import EARLY, FINISHED, PENDING, DeadlineMap, LabelJoin
from undertow.learning import LearnerConfig, OnlineLearner
from undertow.schema import EventSchema, FeaturedEvent, FieldRule, Label, LabelSchema

ROOT = Path(__file__).resolve().parents[1]


# -- the deadline map --------------------------------------------------------------------------

def test_deadline_map_on_disk_equals_the_one_in_memory(tmp_path):
    rng = random.Random(3)
    mem = DeadlineMap(3)
    disk = RocksJoinState(tmp_path / "m").deadlines
    ids = [f"id{i}" for i in range(60)] + ["", "é", "id1x", "Z"]
    for step in range(4000):
        r = rng.random()
        if r < 0.45:
            k, st, d = rng.choice(ids), rng.randrange(3), rng.randrange(-50, 50)
            v = rng.choice([None, ("x", d), step])
            mem.put(k, st, d, v)
            disk.put(k, st, d, v)
        elif r < 0.55:
            k = rng.choice(ids)
            assert disk.pop(k) == mem.pop(k)
        elif r < 0.85:
            h = tuple(rng.choice([None, rng.randrange(-60, 60)]) for _ in range(3))
            assert disk.pop_due(h) == mem.pop_due(h), step
        elif r < 0.9:
            st = rng.randrange(3)
            assert disk.pop_oldest(st) == mem.pop_oldest(st)
        else:
            k = rng.choice(ids)
            assert disk.get(k) == mem.get(k)
            assert [disk.count(s) for s in range(3)] == [mem.count(s) for s in range(3)]
            assert all(disk.contains(s, k) == mem.contains(s, k) for s in range(3))
    assert len(disk) == len(mem) > 0
    for st in range(3):
        assert sorted(disk.iter_ids(st)) == sorted(mem.iter_ids(st))
    assert disk.clear(EARLY) == mem.clear(EARLY)  # in the order the ids were first added
    assert disk.pop_due((99, 99, 99)) == mem.pop_due((99, 99, 99))


# -- the join ------------------------------------------------------------------------------------

def script(seed: int, n: int = 1500) -> list[tuple]:
    """Events on two partitions (somewhat out of order, some ids twice) and their labels (some
    early, some twice, some conflicting, some after the TTL, some never)."""
    rng = random.Random(seed)
    steps: list[tuple] = []
    t = 0
    for i in range(n):
        t += rng.randrange(0, 40)
        ts = t - rng.randrange(0, 30)
        eid = f"e{rng.randrange(i + 1) if rng.random() < 0.03 else i}"
        steps.append(("event", rng.randrange(2), eid, ts))
        if rng.random() < 0.9:
            lts = ts + rng.choice([-20, 0, 5, rng.randrange(0, 2500)])
            y = rng.random() < 0.3
            steps.append(("label", Label(eid, "k", lts, y, topic="labels",
                                         partition=rng.randrange(2), offset=i)))
            if rng.random() < 0.05:
                steps.append(("label", Label(eid, "k", lts + 7, rng.random() < 0.5,
                                             topic="labels", partition=0, offset=i)))
    rng.shuffle(steps)  # labels often come before their event, events out of order
    steps.sort(key=lambda s: s[3] if s[0] == "event" else s[1].ts + rng.randrange(-100, 100))
    return steps


def view(r) -> tuple:
    if type(r).__name__ == "Matched":
        return ("learn", r.pending.event_id, r.pending.key, r.pending.features,
                r.pending.scores, r.pending.event_ts, r.label.event_id, r.label.value)
    return (r.reason, r.label.event_id, r.label.value, r.detail)


def play(join: LabelJoin, steps: list[tuple]) -> list[list[tuple]]:
    out = []
    for s in steps:
        due: list = []
        if s[0] == "event":
            _, part, eid, ts = s
            join.advance(part, ts, due)
            if not join.is_served(eid):
                join.serve(eid, "k", {"ts": float(ts), "x": ts / 7}, {"a": ts / 11, "b": [ts]},
                           ts, due)
        else:
            join.on_label(s[1], due)
        out.append([view(r) for r in due])
    return out


def state_of(join: LabelJoin) -> tuple:
    return (sorted(join.pending), sorted(join.finished), sorted(join.early), join.clock,
            join.waiting_labels, join.counts, len(join.pending), len(join.early),
            len(join.finished))


def make(pending=None, max_pending: int = 25) -> LabelJoin:
    return LabelJoin(label_ttl_ms=1500, early_label_ttl_ms=300, max_pending=max_pending,
                     label_partitions=2, event_partitions=2, pending=pending)


def finish(join: LabelJoin) -> list[tuple]:
    due: list = []
    join.on_end(due)
    return [view(r) for r in due]


@pytest.mark.parametrize("seed", [1, 2])
def test_join_on_disk_releases_exactly_what_the_join_in_memory_releases(tmp_path, seed):
    steps = script(seed)
    mem, disk = make(), make(RocksJoinState(tmp_path / "m"))
    got_mem, got_disk = play(mem, steps), play(disk, steps)
    assert got_disk == got_mem
    kinds = {r[0] for rs in got_mem for r in rs}
    assert kinds == {"learn", "expired_event", "unknown_event", "duplicate_label",
                     "conflicting_label"}
    assert mem.counts.pending_expired["capacity"] > 0 and mem.counts.early_expired > 0
    assert state_of(disk) == state_of(mem)
    assert finish(disk) == finish(mem) and state_of(disk) == state_of(mem)


def test_a_snapshot_resumes_exactly_where_it_was_taken(tmp_path):
    steps = script(5)
    half = len(steps) // 2
    whole = make()
    expected = play(whole, steps) + [finish(whole)]
    disk = make(RocksJoinState(tmp_path / "m"))
    first = play(disk, steps[:half])
    snap = pickle.dumps(disk)
    assert len(snap) < 2000  # a handle and the clocks, not the contents
    play(disk, steps[half:half + 200])  # goes on after the snapshot, then is lost
    resumed = pickle.loads(snap)
    resumed.attach()
    assert first + play(resumed, steps[half:]) + [finish(resumed)] == expected


CHILD = """
import os, pickle, signal, sys
from tests.test_store import make, play, script
from connectors.store import RocksJoinState
steps = script(7)
join = make(RocksJoinState(sys.argv[1]))
play(join, steps[:1000])
open(sys.argv[2], "wb").write(pickle.dumps(join))
play(join, steps[1000:1600])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_state_after_a_kill_9_is_the_state_of_the_snapshot(tmp_path):
    snap = tmp_path / "snap.pkl"
    child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "m"), str(snap)],
                           cwd=ROOT, capture_output=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    steps = script(7)
    whole = make()
    expected = play(whole, steps)
    at_snapshot = make()
    play(at_snapshot, steps[:1000])
    resumed = pickle.loads(snap.read_bytes())
    resumed.attach()
    assert state_of(resumed) == state_of(at_snapshot)
    assert play(resumed, steps[1000:]) == expected[1000:]
    assert finish(resumed) == finish(whole)


def files(d: Path) -> dict[str, tuple[int, int]]:
    return {n: (os.stat(d / n).st_ino, os.stat(d / n).st_size) for n in os.listdir(d)}


def test_a_snapshot_writes_what_changed_not_the_state(tmp_path):
    store = RocksJoinState(tmp_path / "m")
    join = make(store, max_pending=10**6)
    due: list = []
    for i in range(20_000):
        join.advance(0, i, due)
        join.serve(f"e{i}", "k", {f"f{j}": i / (j + 1) for j in range(20)}, {"m": 0.5}, i, due)
    first = store.checkpoint()
    for i in range(20_000, 20_010):
        join.advance(0, i, due)
        join.serve(f"e{i}", "k", {"f": 1.0}, {"m": 0.5}, i, due)
    assert len(pickle.dumps(join)) < 2000
    second = store._ckpt
    assert second == first + 1
    old = files(tmp_path / "m" / f"ckpt-{first:010d}")
    new = files(tmp_path / "m" / f"ckpt-{second:010d}")
    shared = {n for n in new if n in old and new[n][0] == old[n][0]}
    total = sum(size for _, size in old.values())
    written = sum(size for n, (_, size) in new.items() if n not in shared)
    assert total > 1_000_000 and written < 100_000, (total, written)
    assert store.checkpoint() == second  # nothing changed: no new checkpoint


def test_checkpoints_do_not_grow_with_snapshots_or_restarts(tmp_path):
    steps = script(9, n=400)
    join = make(RocksJoinState(tmp_path / "m", keep=2))
    play(join, steps[:50])
    snap = pickle.dumps(join)
    for restart in range(8):
        join = pickle.loads(snap)
        join.attach()
        lo = 50 + restart * 60
        for part in range(3):  # three snapshots an execution, the last one resumed next
            play(join, steps[lo + part * 20:lo + part * 20 + 20])
            snap = pickle.dumps(join)
        names = sorted(os.listdir(tmp_path / "m"))
        assert len(names) == 3 and sum(n.startswith("ckpt-") for n in names) == 2, names
    expected = make()
    play(expected, steps[:50 + 8 * 60])
    assert state_of(join) == state_of(expected)


def test_reading_a_snapshot_changes_nothing(tmp_path):
    store = RocksJoinState(tmp_path / "m")
    join = make(store)
    play(join, script(4, n=300))
    snap = pickle.dumps(join)
    at = (set(join.pending), set(join.finished))
    ckpt = tmp_path / "m" / f"ckpt-{store._ckpt:010d}"
    before = files(ckpt)
    seen = pickle.loads(snap)  # as a test or a person reads the recovery store: never attached
    assert (set(seen.pending), set(seen.finished)) == at
    play(join, script(6, n=300))  # the live one goes on
    assert (set(join.pending), set(join.finished)) != at
    assert (set(seen.pending), set(seen.finished)) == at and files(ckpt) == before
    assert pickle.dumps(join) and store._ckpt == int(ckpt.name[5:]) + 1


def test_a_checkpoint_that_is_gone_is_one_clear_line(tmp_path):
    join = make(RocksJoinState(tmp_path / "m"))
    play(join, script(4, n=50))
    snap = pickle.dumps(join)
    for name in os.listdir(tmp_path / "m"):
        if name.startswith("ckpt-"):
            (tmp_path / "m" / name).rename(tmp_path / f"moved-{name}")
    with pytest.raises(StoreError) as e:
        pickle.loads(snap).attach()
    assert "\n" not in str(e.value) and "UNDERTOW_STATE_KEEP" in str(e.value)


def test_a_removed_challengers_scores_are_written_back(tmp_path):
    store = RocksJoinState(tmp_path / "m")
    join = make(store)
    play(join, script(4, n=100))
    assert len(store) > 5
    for p in store.values():  # as OnlineLearner.remove does
        p.scores.pop("b", None)
    assert all(set(p.scores) == {"a"} for p in store.values())


# -- through a Bytewax dataflow ------------------------------------------------------------------

def flow_with_store(names, recs, state: Path, *, ordered: bool, recovery: Path | None = None):
    flow = Dataflow("store_flow")
    schema = EventSchema(id_field="event_id", key_field="key", ts_field="ts",
                         fields=tuple(FieldRule(n, "number") for n in names))
    merged = op.input("in", flow, recs)
    split = op.branch("split", merged, lambda r: r.topic == "events")
    evs = decode_events("decode_events", split.trues, schema=schema)
    lbs = decode_labels("decode_labels", split.falses,
                        schema=LabelSchema(key_field="key", value_field="y"))
    featured = op.map("pass_through", evs.oks,
                      lambda e: FeaturedEvent(e, {n: e.fields[n] for n in names}))
    out = serve_and_learn(
        "model", featured, lbs.oks, model_name="m", ordered=ordered,
        gaps=op.merge("gaps", evs.errs, lbs.errs) if ordered else None,
        make_learner=lambda: OnlineLearner(
            "m", _model(), LearnerConfig(label_ttl_ms=10**12, early_label_ttl_ms=0),
            wall_clock=None, pending=RocksJoinState(state / "m")),
    )
    preds: list = []
    summaries: list = []
    op.output("p", out.predictions, TestingSink(preds))
    op.output("s", out.summaries, TestingSink(summaries))
    return flow, preds, summaries


def records(events, labels, *, ordered: bool) -> list:
    if ordered:
        merged = sorted(events + labels, key=lambda r: r[:3])
        return [KafkaRecord(b"k", v, "events" if kind else "labels", 0, i, seq=n)
                for n, (_, kind, i, v) in enumerate(merged)]
    # live delivery: every label before the events, which come in order
    return ([KafkaRecord(b"k", v, "labels", 0, i) for _, _, i, v in labels]
            + [KafkaRecord(b"k", v, "events", 0, i) for _, _, i, v in events])


def assert_oracle(rows, preds, summaries, oracle, oracle_auc, order) -> None:
    got = {p.event_id: p.score for p in preds}
    assert len(got) == len(rows)
    assert [got[f"e{i}"] for i in order] == oracle
    ours = metrics.ROCAUC()
    for i in order:
        ours.update(rows[i][1], got[f"e{i}"])
    assert ours.get() == oracle_auc
    assert summaries[-1].labels_learned == len(rows)


@pytest.mark.parametrize("mode", ["live", "replay"])
def test_dataflow_with_the_store_reproduces_progressive_val_score(tmp_path, mode):
    rows, events, labels, oracle, oracle_auc, order = encoded("phishing", "per_record")
    names = list(rows[0][0])
    recs = records(events, labels, ordered=mode == "replay")
    flow, preds, summaries = flow_with_store(names, TestingSource(recs, batch_size=97),
                                             tmp_path, ordered=mode == "replay")
    run_main(flow)
    assert_oracle(rows, preds, summaries, oracle, oracle_auc, order)


def test_dataflow_aborted_and_resumed_from_its_recovery_store_stays_exact(tmp_path):
    rows, events, labels, oracle, oracle_auc, order = encoded("phishing", "per_record")
    names = list(rows[0][0])
    recs = records(events, labels, ordered=True)
    at = len(recs) * 2 // 3
    source = TestingSource([*recs[:at], TestingSource.ABORT(), *recs[at:]], batch_size=20)
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    flow, preds, summaries = flow_with_store(names, source, tmp_path, ordered=True)
    config = RecoveryConfig(str(recovery))
    run_main(flow, epoch_interval=timedelta(0), recovery_config=config)  # aborted mid-stream
    before = len(preds)
    assert 0 < before < len(rows) and not summaries
    run_main(flow, epoch_interval=timedelta(0), recovery_config=config)
    # Outputs are at-least-once (an event after the resumed snapshot is scored again, with the
    # same score); state is exactly-once: every score is the oracle's and the summary counts
    # every label once, those learned before the abort (in the resumed checkpoint) included.
    assert len({p.event_id for p in preds}) == len(rows) and len(preds) > before
    assert_oracle(rows, preds, summaries, oracle, oracle_auc, order)
    ckpts = [n for n in os.listdir(tmp_path / "m") if n.startswith("ckpt-")]
    assert 1 <= len(ckpts) <= 3


def test_a_backtest_with_the_state_on_disk_writes_the_same_bytes(tmp_path):
    from connectors.replay import EVENT, LABEL, FileInput, ReplaySource
    from dataflows.backtest import run_backtest
    from harness.workload import WorkloadConfig, generate
    from tests.test_backtest import write_jsonl

    w = generate(WorkloadConfig(seed=12, n_events=800, n_cards=60, n_merchants=20))
    events = write_jsonl(tmp_path / "events.jsonl", w.events)
    labels = write_jsonl(tmp_path / "labels.jsonl", w.labels)
    runs = []
    for name, env in (("memory", {}), ("disk", {"UNDERTOW_STATE_DIR": str(tmp_path / "s")})):
        replay = ReplaySource([FileInput(str(events), EVENT, "events")],
                              [FileInput(str(labels), LABEL, "labels")])
        run_backtest(replay, tmp_path / name, models=[("lr", "logreg")],
                     env={"UNDERTOW_LABEL_TTL_S": "3600", **env})
        runs.append({f: (tmp_path / name / f).read_bytes()
                     for f in ("predictions.jsonl", "deadletters.jsonl", "report.json")})
    assert runs[0] == runs[1]
    report = json.loads(runs[0]["report.json"])
    assert report["models"][0]["learned"] > 0 and b"expired_event" in runs[0]["deadletters.jsonl"]
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["fraud.lr"]  # it was on disk


def test_the_pending_cap_is_a_million_in_memory_and_a_billion_on_disk(tmp_path):
    from connectors.settings import load_settings
    from dataflows.stream import make_learner, shipped

    fraud = shipped("fraud")
    caps = [make_learner(load_settings(env), fraud, replay=True).join.max_pending for env in (
        {}, {"UNDERTOW_STATE_DIR": str(tmp_path / "a")},
        {"UNDERTOW_STATE_DIR": str(tmp_path / "b"), "UNDERTOW_MAX_PENDING": "5000"},
        {"UNDERTOW_MAX_PENDING": "7"})]
    assert caps == [1_000_000, 1_000_000_000, 5000, 7]
