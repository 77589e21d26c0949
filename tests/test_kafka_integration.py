"""The real fraud dataflow on the embedded broker: nothing lost, counts add up exactly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from bytewax.testing import run_main
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from connectors.settings import load_settings
from dataflows.stream import build_flow, shipped

FRAUD = shipped("fraud")
from harness.dataflow import start_dataflow
from harness.kafka import EmbeddedKafka, free_port, read_topic
from harness.process import stop_all
from harness.workload import WorkloadConfig, generate, malformed_records

ROOT = Path(__file__).resolve().parents[1]
TTL_S = 600.0


def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes, int]]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    errors: list = []
    for key, value, ts in records:
        p.produce(topic, value, key, timestamp=ts,
                  on_delivery=lambda err, _m: errors.append(err) if err else None)
        p.poll(0)
    assert p.flush(30) == 0 and not errors


def consume_all(bootstrap: str, topic: str, partitions: int) -> list:
    msgs = read_topic(bootstrap, topic)
    assert len({m.partition() for m in msgs} | set(range(partitions))) == partitions
    return msgs


def dataflow_env(kafka: EmbeddedKafka, names: dict, out: dict, **extra: str) -> dict[str, str]:
    """The environment of a `python -m bytewax.run dataflows.fraud:flow` on these topics."""
    return {
        **os.environ,
        "UNDERTOW_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "UNDERTOW_EVENTS_TOPIC": names["events"],
        "UNDERTOW_LABELS_TOPIC": names["labels"],
        "UNDERTOW_PREDICTIONS_TOPIC": out["predictions"],
        "UNDERTOW_DEADLETTER_TOPIC": out["deadletter"],
        **extra,
    }


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def loaded(kafka: EmbeddedKafka):
    """A workload with delayed labels, a drift, unlabelled events and malformed records."""
    w = generate(WorkloadConfig(seed=5, n_events=6000, n_cards=300, n_merchants=50,
                                label_coverage=0.9))
    suffix = os.urandom(4).hex()
    names = {n: f"{n}-it-{suffix}" for n in ("events", "labels", "predictions", "deadletter")}
    kafka.create_topics([names["events"], names["labels"]], partitions=3)
    kafka.create_topics([names["predictions"], names["deadletter"]], partitions=1)
    bad = malformed_records(9, 25)
    ev = [(e["card_id"].encode(), orjson.dumps(e), e["ts"]) for e in w.events]
    for i, (raw, _) in enumerate(bad):
        ev.insert(200 * i + 3, (None, raw, w.events[200 * i]["ts"]))
    bad_labels = [b'{"event_id":"e1","card_id":"c1","is_fraud":"yes","ts":1}', b"\xff\xfe"]
    lb = [(x["card_id"].encode(), orjson.dumps(x), x["ts"]) for x in w.labels]
    lb += [(b"c1", raw, 1) for raw in bad_labels]
    produce(kafka.bootstrap_servers, names["events"], ev)
    produce(kafka.bootstrap_servers, names["labels"], lb)
    return w, names, bad, bad_labels


def expected_counts(w, label_watermark: int) -> dict[str, int]:
    """What the learner must end with: pending predictions expire once the event clock and the
    label watermark have both passed their deadline, or when their label comes too late."""
    ttl = int(TTL_S * 1000)
    ts_of = {e["event_id"]: e["ts"] for e in w.events}
    last = min(max(ts_of.values()), label_watermark)
    in_ttl = {x["event_id"] for x in w.labels if x["ts"] <= ts_of[x["event_id"]] + ttl}
    late = {x["event_id"] for x in w.labels} - in_ttl
    expired = sum(
        1 for eid, ts in ts_of.items()
        if eid not in in_ttl and (ts + ttl < last or eid in late)
    )
    return {"learned": len(in_ttl), "late_labels": len(late), "expired": expired,
            "still_pending": len(ts_of) - len(in_ttl) - expired}


def test_dataflow_on_kafka_loses_nothing(kafka: EmbeddedKafka, loaded):
    w, names, bad, bad_labels = loaded
    settings = load_settings(
        {},
        kafka_bootstrap_servers=kafka.bootstrap_servers,
        events_topic=names["events"], labels_topic=names["labels"],
        predictions_topic=names["predictions"], deadletter_topic=names["deadletter"],
        tail=False, label_ttl_s=TTL_S, model_name="it",
    )
    before = {k: metric(k, model="it") for k in (
        "undertow_labels_learned_total", "undertow_predictions_total")}
    expired_before = metric("undertow_pending_expired_total", model="it", reason="ttl")
    run_main(build_flow(settings, FRAUD))

    preds = [orjson.loads(m.value()) for m in consume_all(kafka.bootstrap_servers,
                                                          names["predictions"], 1)]
    dead = consume_all(kafka.bootstrap_servers, names["deadletter"], 1)
    # the label watermark at the end: the least, over label partitions, of the newest label time
    newest: dict[int, int] = {}
    for m in consume_all(kafka.bootstrap_servers, names["labels"], 3):
        lb = orjson.loads(m.value()) if m.value() not in bad_labels else None
        if lb is not None and isinstance(lb.get("is_fraud"), bool):
            newest[m.partition()] = max(newest.get(m.partition(), 0), lb["ts"])
    exp = expected_counts(w, min(newest.values()))
    assert exp["late_labels"] > 100 and exp["expired"] > exp["late_labels"]  # both paths exercised

    # every valid event has exactly one prediction
    assert sorted(p["event_id"] for p in preds) == sorted(e["event_id"] for e in w.events)
    assert set(preds[0]) == {"event_id", "key", "score", "predicted", "model", "model_version",
                             "labels_learned", "event_ts", "processed_at", "served"}
    assert {(p["model"], p["served"]) for p in preds} == {("it", True)}
    # every malformed record is in the dead-letter topic with its raw bytes and reason
    def hdr(m, k):
        return dict(m.headers())[f"undertow.error.{k}"].decode()
    got_bad = sorted((m.value() or b"", hdr(m, "reason")) for m in dead
                     if hdr(m, "topic") == names["events"])
    assert got_bad == sorted((raw, reason) for raw, reason in bad)
    label_dead = [(m.value(), hdr(m, "reason")) for m in dead if hdr(m, "topic") == names["labels"]]
    assert sorted(r for v, r in label_dead if v in bad_labels) == ["bad_json", "wrong_type"]
    # labels within the TTL are learned exactly once; later ones are dead-lettered as expired
    assert sum(1 for _, r in label_dead if r == "expired_event") == exp["late_labels"]
    learned = metric("undertow_labels_learned_total", model="it") - before[
        "undertow_labels_learned_total"]
    assert learned == exp["learned"]
    expired = metric("undertow_pending_expired_total", model="it", reason="ttl") - expired_before
    assert expired == exp["expired"]
    # nothing lost: every record is a prediction, a learned label, an expiry or a dead letter
    assert len(preds) + len(got_bad) == len(w.events) + len(bad)
    assert learned + len(label_dead) == len(w.labels) + len(bad_labels)
    assert len(dead) == len(bad) + len(bad_labels) + exp["late_labels"]
    assert metric("undertow_pending_predictions", model="it") == exp["still_pending"]


def test_bytewax_run_serves_metrics_on_the_api_port(kafka: EmbeddedKafka, loaded):
    """`python -m bytewax.run dataflows.fraud:flow`, live, as a user runs it."""
    _, names, _, _ = loaded
    port = free_port()
    out = {k: f"{names[k]}-cli" for k in ("predictions", "deadletter")}
    kafka.create_topics(list(out.values()))
    env = dataflow_env(kafka, names, out, BYTEWAX_DATAFLOW_API_ENABLED="true",
                       BYTEWAX_DATAFLOW_API_PORT=str(port))
    proc = start_dataflow("dataflows.fraud:flow", env=env)
    try:
        text, deadline = "", time.time() + 60
        while time.time() < deadline:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read(
                ).decode()
                if 'undertow_predictions_total{model="fraud"} 6000.0' in text:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert 'undertow_predictions_total{model="fraud"} 6000.0' in text, text[-2000:]
        for family in ("undertow_events_total", "undertow_labels_learned_total",
                       "undertow_dead_letters_total", "undertow_processing_latency_seconds_bucket",
                       "undertow_event_lag_seconds_bucket", "undertow_label_delay_seconds_bucket",
                       "undertow_model_accuracy_ratio", "undertow_model_log_loss",
                       "undertow_model_roc_auc_ratio", "undertow_concept_drift_estimate",
                       "undertow_concept_drift_detections_total", "undertow_feature_drift_psi",
                       "undertow_feature_drift_ks", "undertow_model_last_learn_timestamp_seconds",
                       "undertow_feature_entities", "bytewax_kafka_consumer_lag"):
            assert family in text, family
        assert proc.running  # live mode keeps running
    finally:
        proc.stop(10)


def test_bad_setting_stops_start_up_with_one_line():
    env = {**os.environ, "UNDERTOW_LABEL_TTL_S": "soon"}
    r = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.fraud:flow"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "undertow: bad setting: UNDERTOW_LABEL_TTL_S: Input should be a valid number, "
        "unable to parse string as a number (got 'soon')"
    ]


def test_two_workers_score_every_event_once(kafka: EmbeddedKafka, loaded):
    """Scale-out is Bytewax's: two workers share the feature shards; nothing is lost or doubled."""
    w, names, bad, _ = loaded
    out = {k: f"{names[k]}-w2" for k in ("predictions", "deadletter")}
    kafka.create_topics(list(out.values()))
    env = dataflow_env(kafka, names, out, UNDERTOW_TAIL="false")
    r = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.fraud:flow", "-w", "2"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    preds = [orjson.loads(m.value()) for m in consume_all(kafka.bootstrap_servers,
                                                          out["predictions"], 1)]
    assert sorted(p["event_id"] for p in preds) == sorted(e["event_id"] for e in w.events)
    dead = consume_all(kafka.bootstrap_servers, out["deadletter"], 1)
    assert sum(1 for m in dead if dict(m.headers())["undertow.error.topic"].decode()
               == names["events"]) == len(bad)


def test_two_processes_share_the_work_and_each_serves_its_metrics(kafka: EmbeddedKafka, loaded):
    """`-i/-a` scale-out: each process has its own metrics port; their counters add up."""
    w, names, bad, _ = loaded
    expected_reads = len(w.events) + len(bad)
    out = {k: f"{names[k]}-p2" for k in ("predictions", "deadletter")}
    kafka.create_topics(list(out.values()))
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    ports = [free_port(), free_port()]
    procs = []
    for i in range(2):
        env = dataflow_env(kafka, names, out, BYTEWAX_DATAFLOW_API_ENABLED="true",
                           BYTEWAX_DATAFLOW_API_PORT=str(ports[i]))
        procs.append(start_dataflow("dataflows.fraud:flow", "-i", str(i), "-a", addresses,
                                    env=env))
    try:
        deadline, reads = time.time() + 90, [0.0, 0.0]
        while time.time() < deadline:
            time.sleep(1)
            for i, port in enumerate(ports):
                try:
                    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                                  timeout=2).read().decode()
                except OSError:
                    continue
                reads[i] = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                               if line.startswith('undertow_records_read_total{stream="events"}'))
            if sum(reads) >= expected_reads:
                break
        # the partitions are split between the processes, and together they read every record
        assert all(r > 0 for r in reads), reads
        assert sum(reads) == expected_reads
        preds = read_topic(kafka.bootstrap_servers, out["predictions"])
        deadline = time.time() + 30
        while len(preds) < len(w.events) and time.time() < deadline:
            time.sleep(1)
            preds = read_topic(kafka.bootstrap_servers, out["predictions"])
        ids = sorted(orjson.loads(m.value())["event_id"] for m in preds)
        assert ids == sorted(e["event_id"] for e in w.events)
    finally:
        stop_all(procs, timeout=20)


def test_a_missing_topic_stops_the_dataflow_naming_the_setting(kafka: EmbeddedKafka, loaded):
    _, names, _, _ = loaded
    env = dataflow_env(kafka, {**names, "events": "no-such-topic"},
                       {"predictions": names["predictions"], "deadletter": names["deadletter"]})
    r = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.fraud:flow"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert (f"ConfigError: UNDERTOW_EVENTS_TOPIC: cannot read Kafka topic 'no-such-topic' from "
            f"{kafka.bootstrap_servers}: it does not exist") in r.stderr
