"""Replicated mode on the embedded broker, two ``bytewax.run`` processes (``-i/-a``): every event
served once by the replica of the process that read it, the trainer's updates published to the
updates topic and swapped in by both processes, the labels learned by the trainer alone; a
missing updates topic stops start-up with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from connectors.updates import decode_update
from harness.generate import KafkaSink
from harness.generate import run as write_workload
from harness.kafka import free_port, read_topic
from harness.workload import WorkloadConfig

ROOT = Path(__file__).resolve().parents[1]
N_EVENTS = 3000


def _env(kafka, names: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNDERTOW_", "BYTEWAX_"))}
    env.update({
        "PYTHONPATH": str(ROOT),
        "UNDERTOW_STREAM": str(ROOT / "streams" / "fraud.toml"),
        "UNDERTOW_MODEL": "logreg",
        "UNDERTOW_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "UNDERTOW_EVENTS_TOPIC": names["events"],
        "UNDERTOW_LABELS_TOPIC": names["labels"],
        "UNDERTOW_PREDICTIONS_TOPIC": names["predictions"],
        "UNDERTOW_DEADLETTER_TOPIC": names["deadletter"],
        "UNDERTOW_MODEL_UPDATES_TOPIC": names["updates"],
        "UNDERTOW_MODEL_MODE": "replicated",
        "UNDERTOW_MODEL_UPDATE_EVERY_LABELS": "200",
        "UNDERTOW_TAIL": "false",
    })
    return env


def _run_cluster(env: dict[str, str], n: int = 2) -> list[tuple[int, str]]:
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(n))
    procs = [subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "dataflows.stream:flow", "-i", str(i), "-a",
         addresses], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True) for i in range(n)]
    results = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        results.append((p.returncode, err.decode()))
    return results


def test_two_processes_serve_every_event_once_with_the_trainers_updates(kafka, topics):
    names = topics("events", "labels", partitions=3)
    names.update(topics("predictions", "deadletter", "updates", partitions=1))
    sink = KafkaSink(kafka.bootstrap_servers, names["events"], names["labels"], 30.0)
    written = write_workload(WorkloadConfig(seed=21, n_events=N_EVENTS), sink)
    assert sink.close() == 0 and written["events"] == written["labels"] == N_EVENTS
    results = _run_cluster(_env(kafka, names))
    for rc, err in results:
        assert rc == 0, err[-3000:]
    preds = [orjson.loads(m.value()) for m in read_topic(kafka.bootstrap_servers,
                                                         names["predictions"], timeout=60)]
    ids = [p["event_id"] for p in preds]
    assert len(ids) == len(set(ids)) == N_EVENTS
    assert all(p["model"] == "fraud" and p["model_version"] == 1 for p in preds)
    assert read_topic(kafka.bootstrap_servers, names["deadletter"], timeout=10) == []
    updates = read_topic(kafka.bootstrap_servers, names["updates"], timeout=60)
    assert len(updates) >= N_EVENTS // 200 // 2  # every 200 labels (or each second)
    # Each process's summary: the trainer (in one of them) learned every label; both served.
    learned = [line for _, err in results for line in err.splitlines()
               if line.strip().startswith("labels learned")]
    assert sorted(line.split()[2] for line in learned) == ["0;", str(N_EVENTS)], learned
    served_by_process = [line for _, err in results for line in err.splitlines()
                         if line.strip().startswith("records read")]
    assert len(served_by_process) == 2
    # The replicas swapped the updates in: most predictions come from a trained copy, and each
    # names the update that made it (its labels learned are those of a published update).
    published = {0}
    for m in updates:
        u = decode_update(m.value())
        assert u is not None and u.champion == "fraud"
        published |= {learned for name, _, learned in u.slots if name == "fraud"}
    assert {p["labels_learned"] for p in preds} <= published
    assert sum(1 for p in preds if p["labels_learned"] > 0) > N_EVENTS // 2


def test_a_missing_updates_topic_stops_start_up_with_one_line(kafka, topics):
    names = topics("events", "labels", "predictions", "deadletter", partitions=1)
    names["updates"] = "no-such-updates-topic"
    env = _env(kafka, names)
    sink = KafkaSink(kafka.bootstrap_servers, names["events"], names["labels"], 30.0)
    write_workload(WorkloadConfig(seed=3, n_events=20), sink)
    assert sink.close() == 0
    r = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.stream:flow"],
                       cwd=ROOT, env=env, capture_output=True, timeout=120)
    err = r.stderr.decode()
    assert r.returncode == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("undertow: bad setting")]
    assert lines == [
        "undertow: bad setting: UNDERTOW_MODEL_UPDATES_TOPIC: cannot read Kafka topic "
        f"'no-such-updates-topic' from {kafka.bootstrap_servers}: it does not exist "
        "(replicated mode: create it, one partition)"], err[-2000:]
