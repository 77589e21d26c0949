"""Kill -9 and restart with Bytewax recovery: the model and its pending predictions survive.

The real dataflow runs under ``python -m bytewax.run -r DIR -s 1`` on the embedded broker. It
scores the first half of a workload and learns the labels known by then; it is killed with
SIGKILL; the rest of the workload (events, and labels of events scored before the kill) is
written; the same command restarts it from the recovery directory. Then:

* the first predictions after the restart carry the model learned before the kill
  (``labels_learned`` continues from where the snapshot was, not from 0);
* labels of events scored before the kill are learned after it: pending predictions survived;
* every event is scored, and state is exactly-once: a probe event scored after every label was
  learned reports ``labels_learned`` equal to the number of labels, with no label learned twice
  and no duplicate or unknown dead letters (outputs are at-least-once: a few predictions made
  after the last snapshot are made again, with the same ids).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from connectors.broker import EmbeddedKafka, free_port, read_topic
from tests.test_kafka_integration import dataflow_env, produce
from tests.test_model_lifecycle_kafka import wait_for
from undertow.workload import WorkloadConfig, generate

ROOT = Path(__file__).resolve().parents[1]


def start(env: dict[str, str], recovery: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "dataflows.fraud:flow",
             "-r", str(recovery), "-s", "1", "-b", "0"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )


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
    assert len([x for x in lb2 if x["event_id"] in first_ids]) > 100  # pending across the kill

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

    proc = start(env, recovery, log)
    try:
        produce(kafka.bootstrap_servers, names["events"], rec(ev1))
        produce(kafka.bootstrap_servers, names["labels"], rec(lb1))
        m = wait_for(port, "the first half", lambda m: m.get(
            'undertow_predictions_total{model="fraud"}') == len(ev1)
            and m.get('undertow_labels_learned_total{model="fraud"}') == len(lb1))
        time.sleep(2.5)  # at least one snapshot (every second) after the first half
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        learned_before_kill = int(m['undertow_labels_learned_total{model="fraud"}'])

        # The first probe moves the event clock past every label time, so all are due.
        last_label = max(x["ts"] for x in w.labels)
        probes = [{"event_id": f"probe{i}", "card_id": "c-probe", "merchant_id": "m-probe",
                   "amount": 1.0, "channel": "pos", "ts": last_label + 1 + i} for i in (1, 2)]
        produce(kafka.bootstrap_servers, names["events"], rec(ev2 + probes[:1]))
        produce(kafka.bootstrap_servers, names["labels"], rec(lb2))
        proc = start(env, recovery, log)
        wait_for(port, "every label learned, only the probe pending", lambda m: m.get(
            'undertow_pending_predictions{model="fraud"}') == 1.0
            and m.get('undertow_labels_waiting_for_time{model="fraud"}') == 0.0
            and m.get('undertow_early_labels_waiting{model="fraud"}') == 0.0
            and m.get('undertow_model_clock_seconds{model="fraud"}') == probes[0]["ts"] / 1000,
            timeout=90)
        produce(kafka.bootstrap_servers, names["events"], rec(probes[1:]))
        after = wait_for(port, "the second probe", lambda m: m.get(
            'undertow_model_clock_seconds{model="fraud"}') == probes[1]["ts"] / 1000)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)

    preds = [orjson.loads(r.value()) for r in read_topic(kafka.bootstrap_servers,
                                                         names["predictions"])]
    by_id: dict[str, list[dict]] = {}
    for p in preds:
        by_id.setdefault(p["event_id"], []).append(p)
    assert set(by_id) == {e["event_id"] for e in w.events} | {"probe1", "probe2"}
    # The restarted process scored the second half with the model learned before the kill.
    second = [by_id[e["event_id"]][-1] for e in ev2]
    assert min(p["labels_learned"] for p in second) >= learned_before_kill > 0
    # Exactly-once state: every label learned once, none lost, none twice.
    (probe_pred,) = by_id["probe2"]
    assert probe_pred["labels_learned"] == len(w.labels)
    # ... of which the restarted process learned only those after the snapshot: the rest came
    # from the snapshot, and it resumed reading at the snapshot's offsets, not at the start.
    relearned = after['undertow_labels_learned_total{model="fraud"}']
    assert 0 < relearned < len(w.labels)
    assert after['undertow_records_read_total{stream="labels"}'] == relearned
    assert after['undertow_records_read_total{stream="events"}'] < len(w.events)
    dead = read_topic(kafka.bootstrap_servers, names["deadletter"])
    assert [dict(d.headers())["undertow.error.reason"] for d in dead] == []
    # At-least-once output: predictions redone after the restart are the same predictions.
    for ps in by_id.values():
        assert len({(p["score"], p["labels_learned"]) for p in ps}) == 1
