"""Kill -9 and restart with Bytewax recovery: the model and its pending predictions survive.

The real dataflow runs under ``python -m bytewax.run dataflows.fraud:flow -r DIR -s 1 -b 0`` on
the embedded broker, three times over one recovery directory:

1. It scores the first half of a workload and learns the labels known by then; once the model
   step's snapshot that a restart would resume from holds every one of those labels (read from
   the recovery database), it is killed with SIGKILL.
2. Restarted, its first prediction (a probe event on a new card) is exactly the score of the
   model in that snapshot, with the snapshot's version and labels learned: it resumed with the
   same model, not a fresh one. Then the second half streams in, labels of first-half events
   among it (their predictions were pending in the snapshot), and it is killed again mid-stream,
   after a snapshot that holds part of the second half.
3. Restarted again, it finishes. Then:

* every event has a prediction; the only duplicates are exactly the events the second process
  scored after the snapshot the third resumed from (at-least-once output, bounded);
* state is exactly-once: a probe scored after every label reports ``labels_learned`` equal to the
  number of labels, which is what an uninterrupted run learns with this TTL (every label in
  time), with no label learned twice and no duplicate or unknown dead letters;
* labels of events scored before the first kill were learned after it.
"""

from __future__ import annotations

import pickle
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from harness.dataflow import start_dataflow
from harness.kafka import EmbeddedKafka, free_port, read_topic
from harness.process import ChildProcess
from harness.workload import WorkloadConfig, generate
from tests.test_kafka_integration import dataflow_env, produce
from tests.test_model_lifecycle_kafka import wait_for
from undertow.features import SpecState, load_spec
from undertow.reference import FRAUD_SPEC

ROOT = Path(__file__).resolve().parents[1]
MODEL_STEP = "undertow_fraud.model.learner"  # the stateful_batch step's id in Bytewax


def start(env: dict[str, str], recovery: Path, log: Path) -> ChildProcess:
    return start_dataflow("dataflows.fraud:flow", "-r", str(recovery), "-s", "1", "-b", "0",
                          env=env, log_path=log, append_log=True)


def kill(proc: ChildProcess) -> None:
    proc.kill()  # SIGKILL to the dataflow's own process group: a crash


def resumable(recovery: Path, step_id: str) -> tuple[int, dict[str, Any]] | None:
    """The epoch a restart would resume at, and the state of each key of ``step_id`` there.

    Bytewax resumes at the least frontier of the workers of the last execution, from each key's
    newest snapshot before it (``snaps``: pickled state per step, key and epoch)."""
    con = sqlite3.connect(recovery / "part-0.sqlite3")
    try:
        (ex,) = con.execute("SELECT max(ex_num) FROM fronts").fetchone()
        if ex is None:
            return None
        (front,) = con.execute("SELECT min(worker_frontier) FROM fronts WHERE ex_num = ?",
                               (ex,)).fetchone()
        rows = con.execute("SELECT state_key, snap_epoch, ser_change FROM snaps "
                           "WHERE step_id = ? AND snap_epoch < ? ORDER BY snap_epoch",
                           (step_id, front)).fetchall()
    finally:
        con.close()
    states = {key: pickle.loads(blob) for key, _, blob in rows if blob is not None}
    return front, states


def resumable_state(recovery: Path) -> tuple[int, Any] | None:
    """The epoch a restart would resume at and the model step's learner there."""
    found = resumable(recovery, MODEL_STEP)
    if found is None or "fraud" not in found[1]:
        return None
    return found[0], found[1]["fraud"].learner


def records_consumed(recovery: Path, topic_step: str) -> int:
    """Records of an input step before its resume offsets (the next offset of each partition;
    the topics are new, so offsets start at 0)."""
    found = resumable(recovery, topic_step)
    assert found is not None
    return sum(max(0, offset) for offset in found[1].values())


def wait_for_snapshot(recovery: Path, what: str, ok, timeout: float = 20.0) -> tuple[int, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = resumable_state(recovery)
        if found is not None and ok(found[1]):
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for a snapshot with {what}")


def resume_epochs(recovery: Path) -> list[int]:
    con = sqlite3.connect(recovery / "part-0.sqlite3")
    try:
        return [e for (e,) in con.execute("SELECT resume_epoch FROM exs ORDER BY ex_num")]
    finally:
        con.close()


def scored_ids(learner: Any) -> set[str]:
    """Events the learner has scored: waiting for a label, or finished."""
    return set(learner.pending) | set(learner.finished)


def test_kill_and_restart_resumes_the_same_model(kafka: EmbeddedKafka, topics, tmp_path):
    names = topics("events", "labels", partitions=3)
    names |= topics("predictions", "deadletter")
    w = generate(WorkloadConfig(seed=21, n_events=3000, n_cards=150, n_merchants=30,
                                delay_median_ms=600_000, drift_at=None))
    half = len(w.events) // 2
    split_ts = w.events[half]["ts"]
    ev1, ev2 = w.events[:half], w.events[half:]
    lb1 = [x for x in w.labels if x["ts"] < split_ts]
    lb2 = [x for x in w.labels if x["ts"] >= split_ts]
    first_ids = {e["event_id"] for e in ev1}
    across = {x["event_id"] for x in lb2 if x["event_id"] in first_ids}
    assert len(across) > 100  # labels whose event is scored before the first kill
    # The second half in 5 chunks, each with the labels known by its end.
    bounds = [ev2[i]["ts"] for i in range(0, len(ev2), 300)][1:] + [max(x["ts"] for x in lb2) + 1]
    chunks = [([e for e in ev2 if lo <= e["ts"] < hi], [x for x in lb2 if lo <= x["ts"] < hi])
              for lo, hi in zip([split_ts, *bounds[:-1]], bounds, strict=True)]
    assert sum(len(c[0]) for c in chunks) == len(ev2) and sum(len(c[1]) for c in chunks) == len(
        lb2)
    last_label = max(x["ts"] for x in w.labels)

    def probe(i: int, ts: int) -> dict[str, Any]:
        return {"event_id": f"probe{i}", "card_id": f"c-probe{i}", "merchant_id": f"m-probe{i}",
                "amount": 250.0, "channel": "online", "ts": ts}

    # probe0 comes at the first half's last time (no label is due by it); probe1 moves the event
    # clock past every label time, so all are due; probe2 reads the final count.
    probes = [probe(0, max(e["ts"] for e in ev1)), probe(1, last_label + 1),
              probe(2, last_label + 2)]

    recovery = tmp_path / "recovery"
    recovery.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True,
                   cwd=ROOT)
    port = free_port()
    env = dataflow_env(kafka, names, names, UNDERTOW_LABEL_TTL_S="10000000",
                       UNDERTOW_EARLY_LABEL_TTL_S="10000000",
                       BYTEWAX_DATAFLOW_API_ENABLED="true", BYTEWAX_DATAFLOW_API_PORT=str(port))
    log = tmp_path / "dataflow.log"

    def rec(items):
        return [(x["card_id"].encode(), orjson.dumps(x), x["ts"]) for x in items]

    def predictions() -> list[dict[str, Any]]:
        return [orjson.loads(r.value()) for r in read_topic(kafka.bootstrap_servers,
                                                            names["predictions"])]

    proc = start(env, recovery, log)
    try:
        # 1. The first half; killed once a resumable snapshot holds all of it.
        produce(kafka.bootstrap_servers, names["events"], rec(ev1))
        produce(kafka.bootstrap_servers, names["labels"], rec(lb1))
        wait_for(port, "the first half", lambda m: m.get(
            'undertow_predictions_total{model="fraud"}') == len(ev1)
            and m.get('undertow_labels_learned_total{model="fraud"}') == len(lb1))
        epoch1, snap1 = wait_for_snapshot(recovery, "every first-half label",
                                          lambda lr: lr.labels_learned == len(lb1))
        kill(proc)
        assert across <= set(snap1.pending)  # their predictions wait in the snapshot
        champion = snap1.slots["fraud"]

        # 2. Restart: the first prediction is the snapshot's model's.
        produce(kafka.bootstrap_servers, names["events"], rec(probes[:1]))
        proc = start(env, recovery, log)
        wait_for(port, "probe0", lambda m: m.get(
            'undertow_predictions_total{model="fraud"}') == 1.0)
        (p0,) = [p for p in predictions() if p["event_id"] == "probe0"]
        x0 = SpecState(load_spec(FRAUD_SPEC)).update(probes[0], probes[0]["ts"])
        assert (p0["score"], p0["model"], p0["model_version"], p0["labels_learned"]) == (
            champion.model.predict_proba_one(x0).get(True, 0.0), "fraud", champion.version,
            len(lb1))
        assert len(lb1) > 0 and resume_epochs(recovery)[-1] == epoch1
        # ... then the second half streams in, and it is killed mid-stream, after a snapshot
        # that holds the first chunk.
        produce(kafka.bootstrap_servers, names["events"], rec(chunks[0][0]))
        produce(kafka.bootstrap_servers, names["labels"], rec(chunks[0][1]))
        first_chunk = {e["event_id"] for e in chunks[0][0]}
        wait_for_snapshot(recovery, "the first chunk", lambda lr: first_chunk <= scored_ids(lr))
        produce(kafka.bootstrap_servers, names["events"], rec(chunks[1][0]))
        produce(kafka.bootstrap_servers, names["labels"], rec(chunks[1][1]))
        wait_for(port, "part of the second chunk", lambda m: m.get(
            'undertow_predictions_total{model="fraud"}', 0) > 1 + len(chunks[0][0]))
        kill(proc)
        before_kill = {p["event_id"] for p in predictions()}
        epoch2, snap2 = resumable_state(recovery)
        events_consumed = records_consumed(recovery, "undertow_fraud.events")
        labels_consumed = records_consumed(recovery, "undertow_fraud.labels")
        assert first_chunk <= scored_ids(snap2) and len(before_kill) < len(w.events)

        # 3. Restart with the rest of the stream; it finishes.
        for evs, lbs in chunks[2:]:
            produce(kafka.bootstrap_servers, names["events"], rec(evs))
            produce(kafka.bootstrap_servers, names["labels"], rec(lbs))
        produce(kafka.bootstrap_servers, names["events"], rec(probes[1:2]))
        proc = start(env, recovery, log)
        wait_for(port, "every label learned, only probe0 and probe1 pending", lambda m: m.get(
            'undertow_pending_predictions{model="fraud"}') == 2.0
            and m.get('undertow_labels_waiting_for_time{model="fraud"}') == 0.0
            and m.get('undertow_early_labels_waiting{model="fraud"}') == 0.0
            and m.get('undertow_model_clock_seconds{model="fraud"}') == probes[1]["ts"] / 1000,
            timeout=60)
        produce(kafka.bootstrap_servers, names["events"], rec(probes[2:]))
        after = wait_for(port, "probe2", lambda m: m.get(
            'undertow_model_clock_seconds{model="fraud"}') == probes[2]["ts"] / 1000)
    finally:
        proc.stop(20)

    assert resume_epochs(recovery) == [1, epoch1, epoch2]
    preds = predictions()
    counts = Counter(p["event_id"] for p in preds)
    assert set(counts) == {e["event_id"] for e in w.events} | {p["event_id"] for p in probes}
    # At-least-once output: exactly the events scored after the resumed snapshot were scored
    # again, and nothing else.
    assert {i for i, n in counts.items() if n > 1} == before_kill - scored_ids(snap2)
    assert max(counts.values()) <= 2
    # Exactly-once state: every label learned once, none lost, none twice; as an uninterrupted
    # run with this TTL learns them all.
    (p2,) = [p for p in preds if p["event_id"] == "probe2"]
    assert (p2["labels_learned"], p2["model_version"]) == (len(w.labels), champion.version)
    # The last process learned only the labels its snapshot had not, and read only the records
    # after the snapshot's offsets, not from the start.
    assert after['undertow_labels_learned_total{model="fraud"}'] == (
        len(w.labels) - snap2.labels_learned)
    assert 0 < labels_consumed < len(w.labels) and 0 < events_consumed < len(w.events)
    assert after['undertow_records_read_total{stream="labels"}'] == len(w.labels) - labels_consumed
    assert after['undertow_records_read_total{stream="events"}'] == (
        len(w.events) + len(probes) - events_consumed)
    dead = read_topic(kafka.bootstrap_servers, names["deadletter"])
    assert [dict(d.headers())["undertow.error.reason"] for d in dead] == []
