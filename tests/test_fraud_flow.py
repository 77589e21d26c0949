"""The fraud dataflow end to end on Bytewax's testing connectors (no broker)."""

from __future__ import annotations

import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from prometheus_client import REGISTRY

from connectors.kafka import KafkaRecord
from connectors.settings import load_settings
from dataflows.stream import build_flow, shipped
from harness.workload import WorkloadConfig, generate, malformed_records
from undertow.models import make_model
from undertow.reference import run_reference
from undertow.schema import DeadLetter, Prediction

FRAUD = shipped("fraud")


def msgs(values: list[bytes], topic: str) -> list[KafkaRecord]:
    return [
        KafkaRecord(b"k", v, topic, 0, i)
        for i, v in enumerate(values)
    ]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def run_flow(events: list[bytes], labels: list[bytes], stream=FRAUD, **overrides):
    settings = load_settings({}, **overrides)
    preds: list[Prediction] = []
    dead: list[DeadLetter] = []
    flow = build_flow(
        settings, stream,
        sources={
            # All labels come in one batch, before their time: the learner must hold them.
            "events": TestingSource(msgs(events, "events"), batch_size=50),
            "labels": TestingSource(msgs(labels, "labels"), batch_size=max(1, len(labels))),
        },
        sinks={"predictions": TestingSink(preds), "deadletter": TestingSink(dead)},
    )
    run_main(flow)
    return preds, dead


@pytest.fixture(scope="module")
def workload():
    return generate(WorkloadConfig(seed=11, n_events=3000, n_cards=200, n_merchants=40))


def test_every_event_scored_once_and_every_bad_record_dead_lettered(workload):
    bad = malformed_records(3, 20)
    events = [orjson.dumps(e) for e in workload.events]
    # mix the malformed payloads in at fixed places
    mixed = list(events)
    positions = [100 * i + 7 for i in range(len(bad))]
    for pos, (raw, _) in zip(positions, bad, strict=False):
        mixed.insert(pos, raw)
    labels = [orjson.dumps(lb) for lb in workload.labels] + [b"not json", b'{"event_id": 1}']
    learned_before = sample("undertow_labels_learned_total", model="fraud")
    step = "undertow_fraud.decode_events"
    dead_before = sample("undertow_dead_letters_total", step=step, reason="bad_json")
    preds, dead = run_flow(mixed, labels)

    assert sorted(p.event_id for p in preds) == sorted(e["event_id"] for e in workload.events)
    assert {p.model for p in preds} == {"fraud"}
    assert all(0.0 <= p.score <= 1.0 and p.predicted == (p.score > 0.5) for p in preds)

    by_raw = {(d.raw, d.reason) for d in dead}
    assert {(raw, reason) for raw, reason in bad} <= by_raw
    assert (b"not json", "bad_json") in by_raw and (b'{"event_id": 1}', "wrong_type") in by_raw
    assert len(dead) == len(bad) + 2
    ev_dead = [d for d in dead if d.topic == "events"]
    assert sorted(d.offset for d in ev_dead) == positions
    # every label was learned exactly once
    learned = sample("undertow_labels_learned_total", model="fraud") - learned_before
    assert learned == len(workload.labels)
    # every dead letter is counted once, by its step and reason (one tap before the sink)
    bad_json = sum(1 for d in ev_dead if d.reason == "bad_json")
    counted = sample("undertow_dead_letters_total", step=step, reason="bad_json") - dead_before
    assert counted == bad_json


def test_a_late_event_is_dead_lettered_with_its_own_bytes_and_coordinates():
    ev = {"event_id": "e1", "card_id": "c1", "merchant_id": "m1", "amount": 5.0,
          "channel": "pos", "ts": 1_767_225_600_000}
    late = {**ev, "event_id": "late", "ts": ev["ts"] - 3_600_000}
    raws = [orjson.dumps(ev), b'{"event_id": "late",  "card_id":"c1","merchant_id":"m1",'
            b'"amount":1,"channel":"pos","ts":%d}' % late["ts"]]
    records = [KafkaRecord(b"c1", raws[0], "events", 2, 40),
               KafkaRecord(b"c1", raws[1], "events", 2, 41)]
    preds: list[Prediction] = []
    dead: list[DeadLetter] = []
    run_main(build_flow(load_settings({}), FRAUD, sources={
        "events": TestingSource(records), "labels": TestingSource([])},
        sinks={"predictions": TestingSink(preds), "deadletter": TestingSink(dead)}))
    assert [p.event_id for p in preds] == ["e1"]
    (d,) = dead
    # The record exactly as it was read (not re-encoded), where it was read from.
    assert (d.reason, d.raw, d.key, d.topic, d.partition, d.offset) == (
        "late_event", raws[1], b"c1", "events", 2, 41)
    assert d.step == "undertow_fraud.features.card_id_features"


def test_dead_letters_name_the_rule_on_every_stream():
    """A negative clicks price breaks its declared minimum: below_min, as a negative fraud
    amount does (not wrong_type, as when the rule was a fraud special case)."""
    click = {"event_id": "k1", "user_id": "u1", "page": "cart", "device": "mobile",
             "dwell_s": 3.0, "price": -1.0, "ts": 1_767_225_600_000}
    bad = [orjson.dumps(click), orjson.dumps({**click, "event_id": "k2", "price": 1.0,
                                             "page": "faq"}),
           orjson.dumps({**click, "event_id": "k3", "price": 1.0, "dwell_s": "long"})]
    _, dead = run_flow(bad, [], stream=shipped("clicks"))
    assert [(d.offset, d.reason, d.detail) for d in sorted(dead, key=lambda d: d.offset)] == [
        (0, "below_min", "field 'price' must be >= 0, got -1.0"),
        (1, "unknown_category", "field 'page' has unknown value 'faq'"),
        (2, "wrong_type", "field 'dwell_s' must be a number, got str"),
    ]


def test_predictions_equal_the_plain_river_loop(workload):
    """With labels held until their time, the dataflow serves what the in-memory loop serves."""
    events = [orjson.dumps(e) for e in workload.events]
    labels = [orjson.dumps(lb) for lb in workload.labels]
    preds, dead = run_flow(events, labels)
    assert dead == []
    ref = run_reference(workload.events, workload.labels, make_model("logreg"))
    got = {p.event_id: p.score for p in preds}
    assert got == ref.scores
    assert ref.learned == len(workload.labels)


def test_hoeffding_tree_is_selectable(workload):
    events = [orjson.dumps(e) for e in workload.events[:500]]
    labels = [orjson.dumps(lb) for lb in workload.labels if int(lb["event_id"][1:]) < 500]
    preds, _ = run_flow(events, labels, model="hat")
    ref = run_reference(workload.events[:500],
                        [orjson.loads(x) for x in labels], make_model("hat"))
    assert {p.event_id: p.score for p in preds} == ref.scores
