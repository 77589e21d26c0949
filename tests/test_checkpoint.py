"""Versioned checkpoints: the store, the policy, and a dataflow that writes them and starts from
one."""

from __future__ import annotations

import json
import os
import time

import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from prometheus_client import REGISTRY
from river import linear_model

from connectors.checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointPolicy,
    ModelStore,
    load_checkpoint,
)
from connectors.kafka import KafkaRecord
from connectors.settings import ConfigError, load_settings
from dataflows.stream import build_flow, shipped

FRAUD = shipped("fraud")
from harness.workload import WorkloadConfig, generate
from undertow.learning import LearnerConfig, OnlineLearner
from undertow.models import make_model
from undertow.reference import run_reference
from undertow.schema import Event, FeaturedEvent, Label

PROBES = [{"x": 0.3, "y": -1.0}, {"x": 2.0, "y": 0.5}]


def trained(n: int = 50) -> OnlineLearner:
    lr = OnlineLearner("m", make_model("logreg"), LearnerConfig(label_ttl_ms=10**9,
                       early_label_ttl_ms=0), wall_clock=None,
                       challengers={"c": linear_model.LogisticRegression()})
    out: list = []
    for i in range(n):
        lr.on_event(FeaturedEvent(Event(f"e{i}", "k", i * 10, {}), PROBES[i % 2]), out)
        lr.on_label(Label(f"e{i}", "k", i * 10, bool(i % 2)), out)
    return lr


def test_write_load_round_trip_retention_and_corruption(tmp_path):
    store = ModelStore(tmp_path, keep=2)
    lr = trained()
    paths = [store.write("m", lr.model, version=v, labels_learned=10 * v, quality={"roc_auc": 1.0},
                         clock_ms=123) for v in (1, 2, 3)]
    assert store.list("m") == paths[1:]  # the oldest is pruned
    assert store.latest("m") == paths[2] == store.resolve("latest", "m")
    model, meta = store.load(paths[2])
    assert [model.predict_proba_one(x) for x in PROBES] == [
        lr.model.predict_proba_one(x) for x in PROBES]
    assert {k: meta[k] for k in ("name", "version", "labels_learned", "quality", "clock_ms")} == {
        "name": "m", "version": 3, "labels_learned": 30, "quality": {"roc_auc": 1.0},
        "clock_ms": 123}
    assert meta["model_class"] == "river.compose.pipeline.Pipeline"
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".tmp")]

    blob = paths[2] / "model.pkl"
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")
    with pytest.raises(CheckpointError, match="is corrupt"):
        load_checkpoint(paths[2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "nope")
    meta_path = paths[1] / "meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "format": 99}))
    with pytest.raises(CheckpointError, match="has format 99"):
        load_checkpoint(paths[1])
    with pytest.raises(CheckpointError, match="no checkpoint of model 'other'"):
        store.resolve("latest", "other")
    with pytest.raises(ValueError, match="cannot name a directory"):
        store.write("../x", lr.model, version=1, labels_learned=0)


def test_latest_is_the_last_written_not_the_highest_version(tmp_path):
    """After a rollback the step serves version 6 again: its new checkpoints are the latest, and
    retention prunes in write order."""
    store = ModelStore(tmp_path, keep=3)
    model = make_model("logreg")
    v7 = store.write("m", model, version=7, labels_learned=100, feature_spec="fraud")
    v6 = [store.write("m", model, version=6, labels_learned=n) for n in (110, 120)]
    assert store.list("m") == [v7, *v6] and store.latest("m") == v6[-1]
    v6.append(store.write("m", model, version=6, labels_learned=130))
    assert store.list("m") == v6  # v7, the oldest written, is pruned
    assert not v7.exists() and [load_checkpoint(p)[1]["seq"] for p in v6] == [2, 3, 4]
    # Metadata: the spec, the undertow version (pyproject.toml), the write sequence.
    _, meta = load_checkpoint(v6[-1])
    assert (meta["undertow_version"], meta["feature_spec"]) == ("0.1.0", None)
    other = store.write("o", model, version=1, labels_learned=0, feature_spec="fraud")
    assert store.resolve("o/latest", "m") == other
    assert load_checkpoint(other)[1]["feature_spec"] == "fraud"


def test_rewriting_the_same_checkpoint_replaces_it_whole(tmp_path):
    store = ModelStore(tmp_path, keep=2)
    lr = trained()
    first = store.write("m", make_model("logreg"), version=1, labels_learned=50)
    again = store.write("m", lr.model, version=1, labels_learned=50)
    assert again == first and store.list("m") == [first]
    model, meta = load_checkpoint(first)
    assert meta["seq"] == 2
    assert [model.predict_proba_one(x) for x in PROBES] == [
        lr.model.predict_proba_one(x) for x in PROBES]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [first.name]


def test_policy_counts_labels_and_seconds():
    now = [0.0]
    by_labels = CheckpointPolicy(100, None, clock=lambda: now[0])
    assert [by_labels.due(n) for n in (0, 99, 100)] == [False, False, True]
    by_labels.done(100)
    assert [by_labels.due(n) for n in (150, 199, 200)] == [False, False, True]
    by_time = CheckpointPolicy(None, 30.0, clock=lambda: now[0])
    now[0] = 29.0
    assert not by_time.due(5)
    now[0] = 30.0
    assert by_time.due(5) and not by_time.due(0)  # nothing new learned: nothing to write
    by_time.done(5)
    now[0] = 70.0
    assert not by_time.due(5) and by_time.due(6)


def test_checkpointer_writes_every_model_with_its_quality(tmp_path):
    lr = trained(40)
    ck = Checkpointer(ModelStore(tmp_path), CheckpointPolicy(40, None))
    ck(lr)
    for name in ("m", "c"):
        (path,) = ModelStore(tmp_path).list(name)
        model, meta = load_checkpoint(path)
        slot = lr.slots[name]
        assert (meta["version"], meta["labels_learned"], meta["clock_ms"]) == (1, 40, 390)
        assert meta["quality"] == lr.quality(name)
        assert [model.predict_proba_one(x) for x in PROBES] == [
            slot.model.predict_proba_one(x) for x in PROBES]
    ck(lr)  # not due again: no new labels
    assert len(ModelStore(tmp_path).list("m")) == 1


def sample(name, model):
    return REGISTRY.get_sample_value(name, {"model": model})


def test_checkpointer_metrics_and_a_promotion_does_not_stop_it(tmp_path):
    lr = trained(40)
    ck = Checkpointer(ModelStore(tmp_path), CheckpointPolicy(10, None), feature_spec="fraud")
    written = sample("undertow_checkpoints_written_total", "m") or 0.0
    before = time.time()
    ck(lr)
    assert sample("undertow_checkpoints_written_total", "m") == written + 1
    assert (sample("undertow_checkpoint_version", "m"),
            sample("undertow_checkpoint_labels_learned", "m")) == (1.0, 40.0)
    _, meta = load_checkpoint(ModelStore(tmp_path).latest("m"))
    assert sample("undertow_checkpoint_last_written_timestamp_seconds", "m") == meta[
        "written_at"] >= before
    assert meta["feature_spec"] == "fraud"
    # A challenger swapped in late becomes the champion: the champion's count drops to 0, but
    # the step's learned labels only grow, so checkpoints go on every 10 labels.
    lr.swap("late", make_model("logreg"), version=9)
    lr.promote("late")
    assert lr.labels_learned == 0
    out: list = []
    for i in range(40, 50):
        lr.on_event(FeaturedEvent(Event(f"e{i}", "k", i * 10, {}), PROBES[i % 2]), out)
        lr.on_label(Label(f"e{i}", "k", i * 10, bool(i % 2)), out)
    ck(lr)
    assert [p.name for p in ModelStore(tmp_path).list("late")] == ["v000009-n000000000010"]
    assert [p.name for p in ModelStore(tmp_path).list("m")][-1] == "v000001-n000000000050"


def test_a_failed_write_is_counted_and_does_not_stop_the_step(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    lr = trained(10)
    ck = Checkpointer(ModelStore(blocker), CheckpointPolicy(5, None))
    failed = sample("undertow_checkpoint_failures_total", "c") or 0.0
    ck(lr)
    assert sample("undertow_checkpoint_failures_total", "c") == failed + 1
    assert not ck.policy.due(10)  # tried again at the next interval, not on every batch


def records(items, topic):
    return [KafkaRecord(b"k", orjson.dumps(x), topic, 0, i) for i, x in enumerate(items)]


def run(settings, events, labels):
    preds: list = []
    flow = build_flow(settings, FRAUD, sources={
        "events": TestingSource(records(events, "events"), batch_size=50),
        "labels": TestingSource(records(labels, "labels"), batch_size=max(1, len(labels))),
    }, sinks={"predictions": TestingSink(preds), "deadletter": TestingSink([])})
    run_main(flow)
    return preds


def test_a_dataflow_checkpoints_and_another_starts_from_the_latest(tmp_path):
    w = generate(WorkloadConfig(seed=3, n_events=2000, n_cards=100, n_merchants=20))
    half = len(w.events) // 2
    first = {e["event_id"] for e in w.events[:half]}
    ev1, ev2 = w.events[:half], w.events[half:]
    lb1 = [x for x in w.labels if x["event_id"] in first]
    lb2 = [x for x in w.labels if x["event_id"] not in first]
    s1 = load_settings({}, model_dir=str(tmp_path), checkpoint_every_labels=1, checkpoint_keep=3,
                       model_name="ck")
    run(s1, ev1, lb1)
    store = ModelStore(tmp_path)
    latest = store.latest("ck")
    model, meta = load_checkpoint(latest)
    assert len(store.list("ck")) == 3 and meta["labels_learned"] == len(lb1)
    assert meta["feature_spec"] == "fraud"  # the spec the model was served, for bulk scoring
    # The last checkpoint is the model the plain loop ends with after the same events and labels.
    ref_model = make_model("logreg")
    run_reference(ev1, lb1, ref_model)
    probe = {"amount": 3.0, "card_count_10m": 2, "merchant_count_10m": 1, "channel_pos": 1.0}
    assert model.predict_proba_one(probe) == ref_model.predict_proba_one(probe)

    # A new dataflow starts from it: it serves what the plain loop serves from that model.
    s2 = load_settings({}, model_dir=str(tmp_path), start_checkpoint="latest", model_name="ck")
    preds = run(s2, ev2, lb2)
    ref = run_reference(ev2, lb2, load_checkpoint(latest)[0])
    assert {p.event_id: p.score for p in preds} == ref.scores
    first_pred = min(preds, key=lambda p: (p.event_ts, p.event_id))
    assert (first_pred.model_version, first_pred.labels_learned) == (1, len(lb1))


def test_bad_checkpoint_settings_stop_start_up_with_one_line(tmp_path):
    with pytest.raises(ConfigError, match="^UNDERTOW_MODEL_DIR: must be set"):
        build_flow(load_settings({}, checkpoint_every_labels=10), FRAUD, sources={"events": [],
                                                                         "labels": []})
    with pytest.raises(ConfigError, match="^UNDERTOW_START_CHECKPOINT: no checkpoint of model"):
        build_flow(load_settings({}, model_dir=str(tmp_path), start_checkpoint="latest"), FRAUD)
    os.makedirs(tmp_path / "x")
    with pytest.raises(ConfigError, match="^UNDERTOW_START_CHECKPOINT: cannot read checkpoint"):
        build_flow(load_settings({}, model_dir=str(tmp_path), start_checkpoint=str(tmp_path / "x")),
                   FRAUD)
