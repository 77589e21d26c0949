"""Bulk scoring with a checkpoint: the same scores as the model one by one, no learning, bad
lines dead-lettered, and clear errors."""

from __future__ import annotations

import base64
import math
import pickle
import subprocess
import sys
from pathlib import Path

import orjson
import pandas as pd
import pytest

from connectors.checkpoint import ModelStore, load_checkpoint
from dataflows.score import main, score_batch_fn
from harness.workload import WorkloadConfig, generate
from undertow.features import SpecState, load_spec
from undertow.models import make_model
from undertow.reference import FRAUD_SPEC, run_reference
from undertow.schema import Event, FeaturedEvent

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("score")
    w = generate(WorkloadConfig(seed=9, n_events=1200, n_cards=80, n_merchants=15))
    # Train on the first 800 events' labels, checkpoint, then score the last 400.
    train = {e["event_id"] for e in w.events[:800]}
    models = {}
    for kind in ("logreg", "hat", "nb", "arf"):
        m = make_model(kind)
        run_reference(w.events[:800], [x for x in w.labels if x["event_id"] in train], m)
        models[kind] = ModelStore(tmp / "models").write(kind, m, version=4, labels_learned=800)
    events = tmp / "events.jsonl"
    lines = [orjson.dumps(e) for e in w.events[800:]]
    lines.insert(10, b"{not json")
    lines.insert(20, b'{"event_id": "x", "card_id": "c", "merchant_id": "m", "amount": -1, '
                     b'"channel": "pos", "ts": 5}')
    events.write_bytes(b"\n".join(lines) + b"\n")
    return tmp, w, models, events


def expected_features(w) -> dict[str, dict[str, float]]:
    """The features of the scored events, as of each one, from the spec in one process."""
    state = SpecState(load_spec(FRAUD_SPEC))
    return {rec["event_id"]: state.update(rec, rec["ts"]) for rec in w.events[800:]}


@pytest.mark.parametrize("kind", ["logreg", "hat", "nb", "arf"])
def test_bulk_scores_equal_one_by_one_and_nothing_learns(setup, kind):
    tmp, w, models, events = setup
    out = tmp / f"scores-{kind}.jsonl"
    before = (models[kind] / "model.pkl").read_bytes()
    assert main(["--checkpoint", str(models[kind]), "--input", str(events), "--output", str(out),
                 "--batch-size", "64"]) == 0
    preds = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    model, _ = load_checkpoint(models[kind])
    feats = expected_features(w)
    # Every valid event once (the sharded feature steps do not keep the input's order).
    assert sorted(p["event_id"] for p in preds) == sorted(e["event_id"] for e in w.events[800:])
    got = {p["event_id"]: p["score"] for p in preds}
    want = {eid: model.predict_proba_one(x).get(True, 0.0) for eid, x in feats.items()}
    # predict_proba_many (logreg, nb) computes in numpy over the frame: a vectorised dot product
    # (logreg: measured relative gap <= 1e-15) or log-likelihoods normalised with numpy's exp
    # (nb, whose fraud scores are 1e-40..1e-4: measured relative gap 3.6e-14). Trees have no
    # batch method, score one by one and agree exactly.
    rel = 1e-12 if kind in ("logreg", "nb") else 0.0
    assert all(abs(got[k] - want[k]) <= rel * abs(want[k]) for k in want)
    if rel:  # ... and the batch method did run: one by one, every score would be identical
        assert any(got[k] != want[k] for k in want)
    assert {(p["model"], p["model_version"], p["labels_learned"]) for p in preds} == {
        (kind, 4, 800)}
    # Nothing learned: the model after scoring equals the checkpoint.
    assert pickle.dumps(model) == pickle.dumps(pickle.loads(before))
    dead = [orjson.loads(line) for line in
            Path(str(out).removesuffix(".jsonl") + ".deadletters.jsonl").read_bytes().splitlines()]
    assert [(d["reason"], d["offset"], base64.b64decode(d["raw_b64"])[:10]) for d in dead] == [
        ("bad_json", 10, b"{not json"), ("below_min", 20, b'{"event_id')]


def test_batch_size_does_not_change_the_scores(setup):
    tmp, _, models, events = setup
    outs = []
    for bs in (1, 1000):
        out = tmp / f"bs{bs}.jsonl"
        assert main(["--checkpoint", str(models["logreg"]), "--input", str(events),
                     "--output", str(out), "--batch-size", str(bs)]) == 0
        outs.append(sorted((p["event_id"], p["score"]) for p in map(orjson.loads,
                                                                    out.read_bytes().splitlines())))
    assert max(abs(a[1] - b[1]) for a, b in zip(*outs, strict=True)) <= 1e-12


def test_scores_a_topic(setup, kafka, topics):
    tmp, w, models, _ = setup
    names = topics("events")
    from tests.test_kafka_integration import produce

    produce(kafka.bootstrap_servers, names["events"],
            [(e["card_id"].encode(), orjson.dumps(e), e["ts"]) for e in w.events[800:]])
    out = tmp / "topic.jsonl"
    assert main(["--checkpoint", str(models["hat"]), "--topic", names["events"],
                 "--brokers", kafka.bootstrap_servers, "--output", str(out)]) == 0
    file_out = tmp / "file.jsonl"
    src = tmp / "clean.jsonl"
    src.write_bytes(b"\n".join(orjson.dumps(e) for e in w.events[800:]))
    assert main(["--checkpoint", str(models["hat"]), "--input", str(src),
                 "--output", str(file_out)]) == 0
    by_id = {p["event_id"]: p["score"] for p in map(orjson.loads, out.read_bytes().splitlines())}
    assert by_id == {p["event_id"]: p["score"]
                     for p in map(orjson.loads, file_out.read_bytes().splitlines())}


def test_errors_are_one_line_and_exit_2(setup, tmp_path, kafka):
    _, _, models, events = setup
    cases = [
        (["--checkpoint", str(tmp_path / "none"), "--input", str(events)],
         "undertow score: cannot read checkpoint"),
        (["--checkpoint", str(models["logreg"]), "--input", str(tmp_path / "missing.jsonl")],
         f"undertow score: cannot read {tmp_path / 'missing.jsonl'}: No such file or "
         "directory"),
        (["--checkpoint", str(models["logreg"]), "--topic", "no-such-topic-xyz",
          "--brokers", kafka.bootstrap_servers],
         "undertow score: --topic: topic 'no-such-topic-xyz' does not exist"),
    ]
    for args, line in cases:
        r = subprocess.run([sys.executable, "-m", "dataflows.score", *args, "--output",
                            str(tmp_path / "o.jsonl")], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and r.stderr.startswith(line), r.stderr


def test_refuses_a_checkpoint_served_another_spec_and_unreachable_brokers(setup, tmp_path,
                                                                            capfd):
    _, _, _, events = setup
    other = ModelStore(tmp_path).write("clicks", make_model("logreg"), version=2,
                                       labels_learned=0, feature_spec="clicks")
    assert main(["--checkpoint", str(other), "--input", str(events),
                 "--output", str(tmp_path / "o.jsonl")]) == 2
    assert capfd.readouterr().err == (
        "undertow score: --checkpoint: the checkpoint was served the features of 'clicks', "
        "this run computes 'fraud'\n")
    same = ModelStore(tmp_path).write("fraud", make_model("logreg"), version=1,
                                      labels_learned=0, feature_spec="fraud")
    assert main(["--checkpoint", str(same), "--topic", "events", "--brokers", "127.0.0.1:1",
                 "--output", str(tmp_path / "o.jsonl")]) == 2
    # One line: librdkafka's connection log is kept off the terminal.
    assert capfd.readouterr().err == (
        "undertow score: --brokers: cannot reach 127.0.0.1:1: Failed to get metadata: Local: "
        "Broker transport failure\n")


def test_a_chunk_with_other_feature_names_is_scored_row_by_row():
    """A NaN column in the frame would not score like a missing key in predict_proba_one."""
    model = make_model("logreg")
    for i in range(50):
        model.learn_one({"x": float(i % 7), "y": float(i % 3)}, i % 2 == 0)
    rows = [{"x": 1.0, "y": 2.0}, {"x": 3.0}, {"y": 1.0}]
    chunk = [FeaturedEvent(Event(f"e{i}", "k", i, {}), x) for i, x in enumerate(rows)]
    score = score_batch_fn(model, name="m", version=1, labels_learned=50, threshold=0.5,
                           batch_size=10, clock=lambda: 7.0)
    assert [p.score for p in score(chunk)] == [model.predict_proba_one(x)[True] for x in rows]
    frame = model.predict_proba_many(pd.DataFrame(rows))[True].tolist()
    assert math.isnan(frame[1]) and math.isnan(frame[2])  # what the fallback avoids
