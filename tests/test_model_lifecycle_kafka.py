"""The model step live on the embedded broker: a wall-clock label TTL, a challenger, and commands
from the control topic, under ``python -m bytewax.run`` as a user runs it."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import orjson
from river import linear_model

from connectors.checkpoint import ModelStore
from harness.dataflow import start_dataflow
from harness.kafka import EmbeddedKafka, free_port, read_topic
from tests.test_kafka_integration import dataflow_env, produce

ROOT = Path(__file__).resolve().parents[1]


def scrape(port: int) -> dict[str, float]:
    """The dataflow's ``undertow_*`` samples, by their exposition-format name and labels."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("undertow_"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def wait_for(port: int, what: str, ok, timeout: float = 60.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    last: dict[str, float] = {}
    while time.monotonic() < deadline:
        try:
            last = scrape(port)
            if ok(last):
                return last
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}: {last}")


def event(i: int, ts: int) -> tuple[bytes, bytes, int]:
    e = {"event_id": f"w{i}", "card_id": f"c{i % 7}", "merchant_id": "m1",
         "amount": 10.0 + i, "channel": "pos", "ts": ts}
    return (e["card_id"].encode(), orjson.dumps(e), ts)


def test_wall_clock_ttl_and_control_commands_live(kafka: EmbeddedKafka, topics, tmp_path):
    names = topics("events", "labels", "control", "predictions", "deadletter", "shadow",
                   "features")
    port = free_port()
    # A checkpoint to swap in: an untrained logistic regression (it scores 0.5), as version 7.
    fresh = ModelStore(tmp_path).write("fresh", linear_model.LogisticRegression(), version=7,
                                       labels_learned=0)
    env = dataflow_env(
        kafka, names, names, UNDERTOW_MODEL_DIR=str(tmp_path),
        UNDERTOW_LABEL_TTL_CLOCK="wall", UNDERTOW_LABEL_TTL_S="2",
        UNDERTOW_MODEL_NAME="champ", UNDERTOW_CHALLENGERS="bayes=nb",
        UNDERTOW_CONTROL_TOPIC=names["control"], UNDERTOW_SHADOW_TOPIC=names["shadow"],
        UNDERTOW_FEATURES_TOPIC=names["features"],
        BYTEWAX_DATAFLOW_API_ENABLED="true", BYTEWAX_DATAFLOW_API_PORT=str(port),
    )
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"undertow-lifecycle-{port}.log"
    proc = start_dataflow("dataflows.fraud:flow", env=env, log_path=log)
    try:
        t0 = 1_700_000_000_000
        produce(kafka.bootstrap_servers, names["events"], [event(i, t0 + i) for i in range(50)])
        # No label ever comes, and no more events: only the wall clock can end these 50.
        m = wait_for(port, "50 predictions, then 50 wall-clock expiries",
                     lambda m: m.get('undertow_pending_expired_total{model="champ",reason="ttl"}')
                     == 50.0)
        assert m['undertow_predictions_total{model="champ"}'] == 50.0
        assert m['undertow_predictions_total{model="bayes"}'] == 50.0
        assert m['undertow_pending_predictions{model="champ"}'] == 0.0
        assert m['undertow_model_champion{model="champ"}'] == 1.0

        # Commands: promote the challenger, then a bad command, then more events.
        produce(kafka.bootstrap_servers, names["control"], [
            (None, b'{"command":"promote","model":"bayes"}', t0),
            (None, b'{"command":"rollback","model":"nobody"}', t0),
            (None, b'{"command":"fly"}', t0),
        ])
        wait_for(port, "the promotion", lambda m: m.get(
            'undertow_model_champion{model="bayes"}') == 1.0)
        produce(kafka.bootstrap_servers, names["events"],
                [event(i, t0 + 1000 + i) for i in range(50, 60)])
        m = wait_for(port, "10 more predictions", lambda m: m.get(
            'undertow_predictions_total{model="bayes"}') == 60.0)
        assert m['undertow_model_promotions_total{model="champ"}'] == 1.0
        assert m['undertow_control_commands_total{command="promote",result="ok"}'] == 1.0
        assert m['undertow_control_commands_total{command="rollback",result="error"}'] == 1.0

        # Swap the champion's model for the checkpoint, score, roll back, score.
        produce(kafka.bootstrap_servers, names["control"], [
            (None, orjson.dumps({"command": "swap", "model": "bayes",
                                 "checkpoint": str(fresh.relative_to(tmp_path))}), t0)])
        wait_for(port, "the swap", lambda m: m.get('undertow_model_version{model="bayes"}') == 7.0)
        produce(kafka.bootstrap_servers, names["events"],
                [event(i, t0 + 2000 + i) for i in range(60, 65)])
        wait_for(port, "5 more predictions", lambda m: m.get(
            'undertow_predictions_total{model="bayes"}') == 65.0)
        produce(kafka.bootstrap_servers, names["control"], [
            (None, b'{"command":"rollback","model":"bayes"}', t0)])
        wait_for(port, "the rollback", lambda m: m.get(
            'undertow_model_version{model="bayes"}') == 1.0)
        produce(kafka.bootstrap_servers, names["events"],
                [event(i, t0 + 3000 + i) for i in range(65, 70)])
        wait_for(port, "5 more predictions", lambda m: m.get(
            'undertow_predictions_total{model="bayes"}') == 70.0)
        # An event two hours later moves the watermark past the hour of the first 70: the
        # merchant's hourly window closes and goes to the features topic.
        produce(kafka.bootstrap_servers, names["events"], [event(70, t0 + 2 * 3_600_000)])
        wait_for(port, "the window to close", lambda m: m.get(
            'undertow_feature_windows_closed_total{step="undertow_fraud.features.merchant_id_'
            'features"}') == 1.0)
        assert proc.running
    finally:
        proc.stop(20)
    served = [orjson.loads(r.value()) for r in read_topic(kafka.bootstrap_servers,
                                                           names["predictions"])]
    shadow = [orjson.loads(r.value()) for r in read_topic(kafka.bootstrap_servers,
                                                           names["shadow"])]
    by_id = {p["event_id"]: p for p in served}
    assert len(by_id) == 71 and all(p["served"] for p in served)
    assert {by_id[f"w{i}"]["model"] for i in range(50)} == {"champ"}
    assert {by_id[f"w{i}"]["model"] for i in range(50, 71)} == {"bayes"}
    # Every prediction names the model and version that made it.
    assert {(by_id[f"w{i}"]["model_version"], by_id[f"w{i}"]["score"])
            for i in range(60, 65)} == {(7, 0.5)}
    assert {by_id[f"w{i}"]["model_version"] for i in range(65, 70)} == {1}
    assert {by_id[f"w{i}"]["score"] for i in range(65, 70)} != {0.5}
    assert {p["event_id"]: p["model"] for p in shadow} == {
        f"w{i}": "bayes" if i < 50 else "champ" for i in range(71)}
    dead = read_topic(kafka.bootstrap_servers, names["deadletter"])
    got = sorted((dict(d.headers())["undertow.error.reason"], d.value()) for d in dead)
    assert got == [(b"bad_control", b'{"command":"fly"}'),
                   (b"bad_control", b'{"command":"rollback","model":"nobody"}')]
    (window,) = [orjson.loads(r.value()) for r in read_topic(kafka.bootstrap_servers,
                                                              names["features"])]
    hour = t0 // 3_600_000 * 3_600_000
    assert window == {"spec": "fraud", "feature": "merchant_amount_sum_1h", "key": "m1",
                      "start": hour, "end": hour + 3_600_000,
                      "value": sum(10.0 + i for i in range(70)), "count": 70}
    log.unlink()
