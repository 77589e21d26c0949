"""Predictions after a crash: each written once with ``UNDERTOW_DELIVERY=exactly_once``.

* A lane of :class:`connectors.transactional.ResumableSink`, driven by hand on the embedded
  broker through two crashes (one during the replay of the other): the partition holds each
  prediction once, in order, and the lane's state is the exact offset and the ids still awaited.
* Its lanes place a key on the partition librdkafka's default partitioner gives it.
* The real dataflow (``python -m bytewax.run dataflows.fraud:flow -r DIR -s 1 -b 0``) on a
  backlog, killed with SIGKILL at random points and restarted on the same recovery directory:
  no event without a prediction, no prediction twice, every label learned once (as an
  uninterrupted run learns), each key on its partition, and a recovery directory that does not
  grow with the restarts. :func:`kill_and_count` is also what ``benchmarks/kills.py`` runs.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from connectors.kafka import PREDICTION_ID_HEADER, encode_prediction, prediction_id
from connectors.settings import load_settings
from connectors.transactional import ResumableSink, key_partition, lane_name
from harness.dataflow import start_dataflow
from harness.kafka import EmbeddedKafka, free_port, read_topic
from harness.workload import WorkloadConfig, generate
from tests.test_kafka_integration import dataflow_env, produce
from tests.test_model_lifecycle_kafka import scrape
from tests.test_recovery import MODEL_STEP, resumable_state
from undertow.schema import Prediction

ROOT = Path(__file__).resolve().parents[1]


def pred(i: int, key: str = "c1", model: str = "lr") -> Prediction:
    return Prediction(event_id=f"e{i}", key=key, score=0.25, predicted=False, model=model,
                      model_version=1, labels_learned=i, event_ts=1_000 + i, processed_at=0.0)


def partition_ids(kafka: EmbeddedKafka, topic: str, partition: int) -> list[bytes]:
    return [dict(m.headers())[PREDICTION_ID_HEADER]
            for m in read_topic(kafka.bootstrap_servers, topic) if m.partition() == partition]


def test_a_lane_resumes_without_writing_twice(kafka: EmbeddedKafka, topics, tmp_path):
    topic = topics("predictions", partitions=2)["predictions"]
    s = load_settings({"UNDERTOW_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                       "UNDERTOW_PREDICTIONS_TOPIC": topic})
    sink = ResumableSink(s, topic, encode_prediction, prediction_id)
    assert sink.list_parts() == ["p00000", "p00001"]
    ids = [prediction_id(pred(i)) for i in range(13)]

    first = sink.build_part("flow.predictions_out", "p00001", None)
    first.write_batch([pred(i) for i in range(0, 3)])
    first.write_batch([pred(i) for i in range(3, 5)])
    state = first.snapshot()
    assert state == (5, ())
    # A run that writes e5..e8 after that snapshot and dies before the next one.
    dead = sink.build_part("flow.predictions_out", "p00001", state)
    dead.write_batch([pred(i) for i in range(5, 9)])
    assert partition_ids(kafka, topic, 1) == ids[:9]

    # Restarted from the snapshot, it scores e5.. again: e5 and e6 come back and are dropped,
    # e9 is new; then it dies again before e7 and e8 came back.
    second = sink.build_part("flow.predictions_out", "p00001", state)
    second.write_batch([pred(5), pred(6), pred(9)])
    assert second.skipped == 2
    state2 = second.snapshot()
    assert state2 == (10, (ids[7], ids[8]))
    # Resumed from that snapshot: e7 and e8, still awaited, are dropped when they come.
    third = sink.build_part("flow.predictions_out", "p00001", state2)
    third.write_batch([pred(7), pred(8), pred(10), pred(11)])
    third.write_batch([pred(12)])
    assert third.skipped == 2 and third.snapshot() == (13, ())
    third.close()
    assert partition_ids(kafka, topic, 1) == ids  # each once, in order
    assert partition_ids(kafka, topic, 0) == []


def test_lanes_place_keys_as_the_default_partitioner(kafka: EmbeddedKafka, topics):
    names = topics("plain", "lanes", partitions=3)
    keys = [f"card-{i}" for i in range(60)]
    p = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for k in keys:
        p.produce(names["plain"], b"x", k.encode())
    assert p.flush(10) == 0
    placed = {m.key().decode(): m.partition() for m in read_topic(kafka.bootstrap_servers,
                                                                  names["plain"])}
    assert placed == {k: key_partition(k, 3) for k in keys}
    assert len(set(placed.values())) == 3
    s = load_settings({"UNDERTOW_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers})
    sink = ResumableSink(s, names["lanes"], encode_prediction, prediction_id)
    parts = sink.list_parts()
    # Bytewax's routing: part_fn(key) indexes the ordered keys of the lanes.
    assert parts == sorted(parts) == [lane_name(i) for i in range(3)]
    assert {k: int(parts[sink.part_fn(k) % 3][1:]) for k in keys} == placed


def test_a_missing_topic_is_one_line(kafka: EmbeddedKafka):
    env = {"UNDERTOW_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "UNDERTOW_PREDICTIONS_TOPIC": "no-such-topic-delivery"}
    code = ("from connectors.settings import load_settings\n"
            "from connectors.kafka import install_fault_hook\n"
            "from connectors.transactional import resumable_prediction_sink\n"
            "install_fault_hook()\n"
            f"resumable_prediction_sink(load_settings({env!r})).list_parts()\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode, done.stderr.strip()) == (2, (
        "undertow: bad setting: UNDERTOW_PREDICTIONS_TOPIC: the topic 'no-such-topic-delivery' "
        "does not exist on the broker; UNDERTOW_DELIVERY=exactly_once writes one lane per "
        "partition, so create the topic first"))


# -- the real dataflow, killed ------------------------------------------------------------------

SINK_STEP = "undertow_fraud.predictions_out"


@dataclass
class KillReport:
    """What :func:`kill_and_count` saw."""

    events: int
    labels: int
    event_ids: set[str] = field(default_factory=set, repr=False)
    #: Predictions written by each process, as undertow_predictions_total counted them.
    scored_per_run: list[int] = field(default_factory=list)
    #: Predictions on the topic, by event id.
    counts: Counter[str] = field(default_factory=Counter, repr=False)
    #: Predictions on the topic after each kill (before the restart).
    on_topic_at_kill: list[int] = field(default_factory=list)
    #: Duplicate predictions on the topic at each kill (those of kill k are written by run k+1).
    duplicates_at_kill: list[int] = field(default_factory=list)
    #: The most snapshots any one key of any step has in the recovery database, after each run.
    snapshots_per_key: list[int] = field(default_factory=list)
    #: The recovery directory's files and their sizes in bytes after each process.
    recovery_files: list[dict[str, int]] = field(default_factory=list)
    #: The largest labels_learned of a prediction, and the model step's in the final snapshot.
    labels_learned: int = 0
    labels_learned_state: int = 0
    dead_letters: list[str] = field(default_factory=list)
    wrong_partition: int = 0
    seconds: float = 0.0

    @property
    def missing(self) -> int:
        return len(self.event_ids - set(self.counts))

    @property
    def duplicates_per_kill(self) -> list[int]:
        at = [*self.duplicates_at_kill, self.duplicates]
        return [b - a for a, b in zip(at, at[1:], strict=False)]

    @property
    def recovery_bytes(self) -> list[int]:
        return [sum(files.values()) for files in self.recovery_files]

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.counts.values())


def most_snapshots(recovery: Path) -> int:
    """The most snapshots (epochs) the recovery database holds for one key of one step."""
    con = sqlite3.connect(recovery / "part-0.sqlite3")
    try:
        (n,) = con.execute("SELECT max(c) FROM (SELECT count(*) AS c FROM snaps "
                           "GROUP BY step_id, state_key)").fetchone()
        return int(n or 0)
    finally:
        con.close()


def on_topic(kafka: EmbeddedKafka, topic: str) -> int:
    """About how many records ``topic`` holds (Tansu's watermark lags a batch: a trigger only)."""
    c = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "undertow-kills"})
    try:
        n = len(c.list_topics(topic, timeout=5).topics[topic].partitions)
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
                   for p in range(n))
    finally:
        c.close()


def snapshots(recovery: Path, step_id: str) -> int:
    """Snapshots of ``step_id`` in the recovery database."""
    con = sqlite3.connect(recovery / "part-0.sqlite3")
    try:
        (n,) = con.execute("SELECT count(*) FROM snaps WHERE step_id = ?",
                           (step_id,)).fetchone()
        return int(n)
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        con.close()


def kill_and_count(kafka: EmbeddedKafka, names: dict[str, str], tmp: Path, *, delivery: str,
                   kills: int, n_events: int, seed: int, snapshot_s: int = 1,
                   log: Path | None = None) -> KillReport:
    """Load a backlog of ``n_events`` (and their labels), run the fraud dataflow on it with
    recovery, SIGKILL it ``kills`` times at random points (after a random number of the
    process's own predictions, once its predictions sink has a snapshot), restart it on the
    same recovery directory each time, let the last run finish (``UNDERTOW_TAIL=false``) and
    count what is on the topics."""
    rng = random.Random(seed)
    w = generate(WorkloadConfig(seed=seed, n_events=n_events, n_cards=300, n_merchants=40,
                                delay_median_ms=30_000, drift_at=None))
    report = KillReport(events=len(w.events), labels=len(w.labels),
                        event_ids={e["event_id"] for e in w.events})
    for topic, items in (("events", w.events), ("labels", w.labels)):
        produce(kafka.bootstrap_servers, names[topic],
                [(x["card_id"].encode(), orjson.dumps(x), x["ts"]) for x in items])
    recovery = tmp / "recovery"
    recovery.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True,
                   cwd=ROOT)
    port = free_port()
    env = dataflow_env(kafka, names, names, UNDERTOW_DELIVERY=delivery, UNDERTOW_TAIL="false",
                       UNDERTOW_LABEL_TTL_S="10000000", UNDERTOW_EARLY_LABEL_TTL_S="10000000",
                       BYTEWAX_DATAFLOW_API_ENABLED="true", BYTEWAX_DATAFLOW_API_PORT=str(port))
    log = log or tmp / "dataflow.log"
    # Where to kill: after this many predictions on the topic (a random point of the backlog
    # each), and, for the first run, once a snapshot of the sink exists (docs/lifecycle.md).
    # (at_least_once has no sink snapshots: the model step's then)
    first_snapshot = SINK_STEP if delivery == "exactly_once" else MODEL_STEP
    points = sorted(rng.sample(range(report.events // 10, report.events * 8 // 10), kills))
    started = time.monotonic()
    for k in range(kills + 1):
        proc = start_dataflow("dataflows.fraud:flow", "-r", str(recovery), "-s", str(snapshot_s),
                              "-b", "0", env=env, log_path=log, append_log=True)
        scored = 0.0
        try:
            if k == kills:
                assert proc.wait(120) == 0, log.read_text()[-3000:]
                scored = float(report.events)  # not scraped: the process has ended
            else:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    assert proc.returncode is None, log.read_text()[-3000:]
                    try:
                        scored = scrape(port).get('undertow_predictions_total{model="fraud"}', 0)
                    except OSError:
                        scored = 0.0
                    if (on_topic(kafka, names["predictions"]) >= points[k]
                            and (k > 0 or snapshots(recovery, first_snapshot) > 0)):
                        break
                    time.sleep(0.02)
                else:
                    raise AssertionError(f"run {k} did not reach {points[k]} predictions")
                proc.kill()  # SIGKILL to the dataflow's process group: a crash
                proc.wait(10)
                written = read_topic(kafka.bootstrap_servers, names["predictions"])
                report.on_topic_at_kill.append(len(written))
                report.duplicates_at_kill.append(len(written) - len(
                    {orjson.loads(m.value())["event_id"] for m in written}))
        finally:
            proc.stop(20)
        report.recovery_files.append({f.name: f.stat().st_size for f in recovery.iterdir()})
        report.snapshots_per_key.append(most_snapshots(recovery))
        report.scored_per_run.append(int(scored))
    report.seconds = time.monotonic() - started
    preds = read_topic(kafka.bootstrap_servers, names["predictions"])
    parts = len({m.partition() for m in preds} | {0})
    report.counts = Counter(orjson.loads(m.value())["event_id"] for m in preds)
    report.wrong_partition = sum(m.partition() != key_partition(m.key().decode(), 3)
                                 for m in preds) if parts > 1 else 0
    report.labels_learned = max(orjson.loads(m.value())["labels_learned"] for m in preds)
    final = resumable_state(recovery)
    report.labels_learned_state = final[1].labels_learned if final is not None else -1
    report.dead_letters = [dict(d.headers())["undertow.error.reason"].decode()
                           for d in read_topic(kafka.bootstrap_servers, names["deadletter"])]
    return report


def test_kills_leave_every_event_predicted_once(kafka: EmbeddedKafka, topics, tmp_path):
    names = topics("events", "labels", "predictions", partitions=3) | topics("deadletter")
    r = kill_and_count(kafka, names, tmp_path, delivery="exactly_once", kills=3, n_events=12_000,
                       seed=int(os.environ.get("UNDERTOW_KILL_SEED", "7")))
    print(r)
    assert len(r.on_topic_at_kill) == 3
    assert r.on_topic_at_kill == sorted(r.on_topic_at_kill) and r.on_topic_at_kill[-1] < r.events
    assert (r.missing, r.duplicates, r.wrong_partition) == (0, 0, 0)
    assert set(r.counts) == r.event_ids
    assert r.dead_letters == []
    # Exactly-once state: every label learned once (a label learned twice would count twice or
    # be a duplicate_label dead letter), as an uninterrupted run learns them all with this TTL.
    assert r.labels_learned_state == r.labels
    assert r.labels_learned <= r.labels
    # The recovery directory does not grow with the kills: whatever the restarts, the database
    # keeps at most 2 snapshots of a key (-b 0: the one a restart resumes from and a newer one),
    # and the write-ahead log a kill leaves behind (a clean end checkpoints and removes it)
    # stays under SQLite's auto-checkpoint (1000 pages of 4 KiB) plus one epoch's write (at
    # most the database).
    assert max(r.snapshots_per_key) <= 2, r.snapshots_per_key
    for files in r.recovery_files:
        assert files.get("part-0.sqlite3-wal", 0) <= 1000 * 4096 + files["part-0.sqlite3"], (
            r.recovery_files)
    assert "part-0.sqlite3-wal" not in r.recovery_files[-1]
