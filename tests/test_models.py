"""Several models in one model step: shadow scoring, promotion, commands, wall-clock TTL, and the
ordered (replay) mode of the operator."""

from __future__ import annotations

import random

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from river import linear_model, metrics, preprocessing, tree

from operators.learning import serve_and_learn
from undertow.learning import LearnerConfig, OnlineLearner, PromotionRule
from undertow.schema import (
    Control,
    DeadLetter,
    Event,
    FeaturedEvent,
    Label,
    ModelSummary,
    Outcome,
    Prediction,
)


def lr_model():
    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


def hat_model():
    return tree.HoeffdingAdaptiveTreeClassifier(seed=7)


def make(model, *, challengers=None, wall_clock=None, **kw) -> OnlineLearner:
    kw.setdefault("label_ttl_ms", 10_000_000)
    kw.setdefault("early_label_ttl_ms", 0)
    return OnlineLearner("champ", model, LearnerConfig(**kw), challengers=challengers,
                         wall_clock=wall_clock)


def stream(n: int, *, seed: int = 1, delay: int = 5000, flip_at: int | None = None) -> list:
    """Events every 1 s with two features; the label is x1 > x2 (reversed after ``flip_at``),
    known ``delay`` ms after its event. Records are merged in time order, labels first on ties."""
    rng = random.Random(seed)
    recs = []
    for i in range(n):
        x = {"x1": rng.random(), "x2": rng.random()}
        y = x["x1"] > x["x2"]
        if flip_at is not None and i >= flip_at:
            y = not y
        ts = i * 1000
        recs.append((ts, 1, i, FeaturedEvent(Event(f"e{i}", "k", ts, {}), x)))
        recs.append((ts + delay, 0, i, Label(f"e{i}", "k", ts + delay, y, raw=b"l",
                                             topic="labels", partition=0, offset=i)))
    return [r for *_, r in sorted(recs, key=lambda r: r[:3])]


def feed(learner: OnlineLearner, records: list) -> list:
    out: list = []
    for r in records:
        if type(r) is FeaturedEvent:
            learner.on_event(r, out)
        else:
            learner.on_label(r, out)
    learner.on_end(out)
    return out


def scores(out: list, model: str) -> list[tuple[str, float, int]]:
    return [(p.event_id, p.score, p.model_version) for p in out
            if type(p) is Prediction and p.model == model]


def test_challengers_score_exactly_what_they_would_score_alone():
    recs = stream(600)
    both = feed(make(lr_model(), challengers={"tree": hat_model()}), recs)
    config = LearnerConfig(label_ttl_ms=10_000_000, early_label_ttl_ms=0)
    alone_lr = feed(OnlineLearner("champ", lr_model(), config, wall_clock=None), recs)
    alone_tree = feed(OnlineLearner("tree", hat_model(), config, wall_clock=None), recs)
    assert scores(both, "champ") == scores(alone_lr, "champ")
    assert scores(both, "tree") == scores(alone_tree, "tree")
    served = {p.model: p.served for p in both if type(p) is Prediction}
    assert served == {"champ": True, "tree": False}
    # The stamps come from event time: the output is reproducible.
    assert {p.processed_at for p in both if type(p) is Prediction and p.event_id == "e7"} == {7.0}


def test_outcomes_are_the_served_scores_of_each_learned_label():
    recs = stream(50)
    out = feed(make(lr_model(), challengers={"tree": hat_model()}, emit_outcomes=True), recs)
    served = {(p.model, p.event_id): p.score for p in out if type(p) is Prediction}
    outcomes = [o for o in out if type(o) is Outcome]
    assert len(outcomes) == 100
    for o in outcomes:
        assert o.score == served[(o.model, o.event_id)]
        assert o.label_ts == o.event_ts + 5000 and o.predicted == (o.score > 0.5)  # strictly above: the cold-start rule


class Constant:
    """A model that always answers the same probability (AUC 0.5)."""

    def predict_proba_one(self, x):
        return {True: 0.4, False: 0.6}

    def learn_one(self, x, y):
        pass


def test_a_better_challenger_is_promoted_when_it_beats_the_champion_by_the_margin():
    rule = PromotionRule("roc_auc", margin=0.2, min_labels=100, every=50)
    learner = make(Constant(), challengers={"lr": lr_model()}, promotion=rule,
                   quality_window=100, emit_outcomes=True)
    out = feed(learner, stream(400))
    assert learner.champion == "lr"
    (promo,) = learner.promotions
    # Oracle: the first check (every 50 labels, both windows full) where the challenger's rolling
    # ROC AUC over the last 100 of its outcomes beats the constant champion's by 0.2.
    ours = [o for o in out if type(o) is Outcome and o.model == "lr"]
    expected = None
    auc, const = metrics.RollingROCAUC(window_size=100), metrics.RollingROCAUC(window_size=100)
    for k, o in enumerate(ours, 1):
        auc.update(o.label, o.score)
        const.update(o.label, 0.4)
        if k >= 100 and k % 50 == 0 and auc.get() - const.get() > 0.2:
            expected = o
            break
    assert expected is not None
    assert (promo.old, promo.new, promo.reason.split()[0]) == ("champ", "lr", "roc_auc")
    # Promoted while learning that label, released by the event at the label's own time.
    assert promo.ts == expected.label_ts
    assert promo.new_value - promo.old_value > 0.2
    after = [p for p in out if type(p) is Prediction and p.event_ts >= promo.ts]
    assert after and all(p.served == (p.model == "lr") for p in after)
    before = [p for p in out if type(p) is Prediction and p.event_ts < promo.ts]
    assert all(p.served == (p.model == "champ") for p in before)


def test_no_promotion_without_the_margin():
    rule = PromotionRule("roc_auc", margin=0.9, min_labels=100, every=50)
    learner = make(Constant(), challengers={"lr": lr_model()}, promotion=rule, quality_window=100)
    feed(learner, stream(400))
    assert learner.champion == "champ" and not learner.promotions


def test_swap_and_rollback_version_the_model_and_predictions_name_it():
    learner = make(lr_model())
    out: list = []
    recs = stream(40)
    for r in recs[:40]:
        (learner.on_event if type(r) is FeaturedEvent else learner.on_label)(r, out)
    trained = learner.model
    new = Constant()
    assert learner.swap("champ", new) == "swapped model 'champ' to version 2"
    for r in recs[40:]:
        (learner.on_event if type(r) is FeaturedEvent else learner.on_label)(r, out)
    after = [p for p in out if type(p) is Prediction][-5:]
    assert {(p.score, p.model_version) for p in after} == {(0.4, 2)}
    assert learner.rollback("champ") == "rolled model 'champ' back to version 1"
    assert learner.model is trained and learner.version == 1
    with pytest.raises(ValueError, match="no previous version"):
        learner.rollback("champ")
    with pytest.raises(ValueError, match="no model named 'x'"):
        learner.promote("x")
    assert learner.swap("new", Constant(), 5) == "added challenger 'new'"
    with pytest.raises(ValueError, match="is the champion"):
        learner.remove("champ")
    assert learner.remove("new") == "removed challenger 'new'"


def test_wall_clock_ttl_expires_pending_events_whose_labels_never_come():
    now = [100.0]
    learner = make(lr_model(), label_ttl_ms=2000, ttl_clock="wall", wall_clock=lambda: now[0])
    out: list = []
    learner.on_event(FeaturedEvent(Event("e1", "k", 5, {}), {"x": 1.0}), out)
    learner.on_event(FeaturedEvent(Event("e2", "k", 6, {}), {"x": 1.0}), out)
    now[0] = 101.5
    learner.on_wall_clock(out)
    assert set(learner.pending) == {"e1", "e2"}  # event time has not moved; wall time rules
    now[0] = 102.001
    learner.on_wall_clock(out)
    assert not learner.pending and learner.counts.pending_expired["ttl"] == 2
    late = Label("e1", "k", 7, True, raw=b"late", topic="labels", partition=0, offset=3)
    learner.on_label(late, out)
    learner.on_event(FeaturedEvent(Event("e3", "k", 8, {}), {"x": 1.0}), out)
    dead = [d for d in out if type(d) is DeadLetter]
    assert [(d.reason, d.raw, d.offset) for d in dead] == [("expired_event", b"late", 3)]


# -- the operator ---------------------------------------------------------------------------------

def with_seq(records: list) -> list:
    out = []
    for i, r in enumerate(records):
        if type(r) is FeaturedEvent:
            out.append(FeaturedEvent(r.event._replace(seq=i), r.features))
        else:
            out.append(r._replace(seq=i))
    return out


def run_ordered(events, labels, gaps, *, batch_sizes=(7, 100, 3), challengers=None):
    flow = Dataflow("ordered")
    evs = op.input("evs", flow, TestingSource(events, batch_size=batch_sizes[0]))
    lbs = op.input("lbs", flow, TestingSource(labels, batch_size=batch_sizes[1]))
    gps = op.input("gaps", flow, TestingSource(gaps, batch_size=batch_sizes[2]))
    out = serve_and_learn(
        "model", evs, lbs, model_name="champ", ordered=True, gaps=gps,
        make_learner=lambda: make(lr_model(), challengers=challengers, emit_outcomes=True),
    )
    preds: list = []
    summaries: list = []
    op.output("p", out.predictions, TestingSink(preds))
    op.output("s", out.summaries, TestingSink(summaries))
    run_main(flow)
    return preds, summaries


def test_ordered_mode_processes_in_seq_order_whatever_the_batching():
    recs = with_seq(stream(300, delay=3500))
    # Drop a few records to stand for decode dead letters: their seqs come in as gaps.
    dropped = {5, 77, 300}
    kept = [r for i, r in enumerate(recs) if i not in dropped]
    gaps = [DeadLetter("bad_json", "", b"x", seq=i) for i in sorted(dropped)]
    events = [r for r in kept if type(r) is FeaturedEvent]
    labels = [r for r in kept if type(r) is Label]
    alone = make(lr_model())
    oracle = feed(alone, kept)
    want = [(p.event_id, p.score, p.labels_learned) for p in oracle if type(p) is Prediction]
    assert alone.labels_learned == 297  # two labels lost their event (seq 5 and 77 were events)
    for sizes in [(7, 100, 3), (1, 1, 1), (300, 2, 10)]:
        preds, summaries = run_ordered(events, labels, gaps, batch_sizes=sizes)
        assert [(p.event_id, p.score, p.labels_learned) for p in preds] == want
        assert summaries == alone.summaries()
        assert type(summaries[0]) is ModelSummary


def test_controls_reach_the_model_step_and_a_bad_one_is_dead_lettered():
    flow = Dataflow("controls")
    recs = stream(10)
    evs = op.input("evs", flow, TestingSource([r for r in recs if type(r) is FeaturedEvent]))
    lbs = op.input("lbs", flow, TestingSource([]))
    cmds = [Control("swap", "champ", "ckpt-a", b"swap"),
            Control("rollback", "nobody", None, b"rb", "control", 0, 1)]
    ctl = op.input("ctl", flow, TestingSource(cmds))
    models = {"ckpt-a": (Constant(), 9)}
    out = serve_and_learn("model", evs, lbs, model_name="champ", controls=ctl,
                          make_learner=lambda: make(lr_model()), load_model=models.__getitem__)
    preds: list = []
    errs: list = []
    op.output("p", out.predictions, TestingSink(preds))
    op.output("e", out.errs, TestingSink(errs))
    run_main(flow)
    # Commands apply before the records of the batch they come with.
    assert {(p.model_version, p.score) for p in preds} == {(9, 0.4)}
    assert [(e.reason, e.raw, e.offset) for e in errs] == [("bad_control", b"rb", 1)]
    assert "no model named 'nobody'" in errs[0].detail


# -- the fraud dataflow with a challenger ---------------------------------------------------------

def test_fraud_flow_with_a_challenger_serves_the_champion_and_exports_per_model_metrics():
    import orjson
    from prometheus_client import REGISTRY

    from connectors.kafka import KafkaRecord
    from connectors.settings import load_settings
    from dataflows.stream import build_flow, shipped
    from undertow.models import make_model
    from undertow.reference import run_reference
    from harness.workload import WorkloadConfig, generate

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    w = generate(WorkloadConfig(seed=5, n_events=1500, n_cards=100, n_merchants=20))
    events = [KafkaRecord(b"k", orjson.dumps(e), "events", 0, i) for i, e in enumerate(w.events)]
    labels = [KafkaRecord(b"k", orjson.dumps(lb), "labels", 0, i)
              for i, lb in enumerate(w.labels)]
    settings = load_settings({}, model_name="cc_champ", challengers="cc_tree=hat")
    before = {m: (sample("undertow_predictions_total", model=m),
                  sample("undertow_labels_learned_total", model=m))
              for m in ("cc_champ", "cc_tree")}
    served: list = []
    shadow: list = []
    summaries: list = []
    flow = build_flow(settings, shipped("fraud"), sources={
        "events": TestingSource(events, batch_size=50),
        "labels": TestingSource(labels, batch_size=len(labels)),
    }, sinks={"predictions": TestingSink(served), "shadow": TestingSink(shadow),
              "deadletter": TestingSink([]), "summaries": TestingSink(summaries)})
    run_main(flow)
    # The champion's scores are what the plain loop serves; the tree is scored in shadow and
    # equals the plain loop with the tree alone.
    ref = run_reference(w.events, w.labels, make_model("logreg"))
    assert {p.event_id: p.score for p in served} == ref.scores
    ref_tree = run_reference(w.events, w.labels, make_model("hat"))
    assert {p.event_id: p.score for p in shadow} == ref_tree.scores
    assert {(p.model, p.served) for p in served + shadow} == {("cc_champ", True),
                                                               ("cc_tree", False)}
    # Per-model metrics: counts and the quality gauges of each model's final summary.
    by_model = {s.model: s for s in summaries}
    assert set(by_model) == {"cc_champ", "cc_tree"} and by_model["cc_champ"].champion
    for m, s in by_model.items():
        preds0, learned0 = before[m]
        assert sample("undertow_predictions_total", model=m) - preds0 == len(w.events)
        assert sample("undertow_labels_learned_total", model=m) - learned0 == len(w.labels)
        assert sample("undertow_model_roc_auc_ratio", model=m) == s.quality["roc_auc"]
        assert sample("undertow_model_log_loss", model=m) == s.quality["log_loss"]
        assert sample("undertow_model_champion", model=m) == (1.0 if m == "cc_champ" else 0.0)
    assert by_model["cc_champ"].quality != by_model["cc_tree"].quality


@pytest.mark.parametrize(("threshold", "decided"), [(0.5, False), (0.4, True)])
def test_the_cold_start_decides_nothing_positive_at_the_default_threshold(threshold, decided):
    """A fresh binary model scores exactly 0.5: strictly above the threshold decides, so a cold
    start at 0.5 flags no event (``>=`` would flag every one)."""
    from undertow.schema import Event, FeaturedEvent

    learner = OnlineLearner(
        "m", preprocessing.StandardScaler() | linear_model.LogisticRegression(),
        LearnerConfig(label_ttl_ms=10_000, early_label_ttl_ms=0, threshold=threshold),
        wall_clock=None)
    out: list = []
    for i in range(3):
        learner.on_event(FeaturedEvent(Event(f"e{i}", "k", i, {}), {"x": float(i)}), out)
    assert [(p.score, p.predicted) for p in out] == [(0.5, decided)] * 3
