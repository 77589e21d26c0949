"""The serve-then-learn logic against River's own progressive validation, and its state rules."""

from __future__ import annotations

import pickle
import random

import pytest
from river import datasets, evaluate, linear_model, metrics, preprocessing, stream
from river.datasets import synth

from undertow.learning import LearnerConfig, OnlineLearner
from undertow.schema import DeadLetter, Event, FeaturedEvent, Label, Prediction


def fixed_clock() -> float:
    return 0.0


def learner(model=None, *, ttl=10_000_000, early=0, challengers=None, **kw) -> OnlineLearner:
    return OnlineLearner(
        "m",
        model if model is not None else linear_model.LogisticRegression(),
        LearnerConfig(label_ttl_ms=ttl, early_label_ttl_ms=early, **kw),
        challengers=challengers,
        wall_clock=fixed_clock,
    )


def ev(i: int | str, ts: int, x: dict | None = None) -> FeaturedEvent:
    return FeaturedEvent(Event(f"e{i}", "k", ts, {}), x if x is not None else {"x": 1.0})


def lb(i: int | str, ts: int, y: bool = True) -> Label:
    return Label(f"e{i}", "k", ts, y, raw=f"label-{i}".encode(), topic="labels", partition=0,
                 offset=0)


def run(lr: OnlineLearner, records: list, *, end: bool = True) -> list:
    out: list = []
    for r in records:
        if isinstance(r, FeaturedEvent):
            lr.on_event(r, out)
        else:
            lr.on_label(r, out)
    if end:
        lr.on_end(out)
    return out


class Recorder:
    """A River-shaped classifier that records what it was asked (the oracle of what was served)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.n = 0

    def predict_proba_one(self, x):
        self.calls.append(("predict", dict(x)))
        p = self.n / (self.n + 1)
        return {True: p, False: 1 - p}

    def learn_one(self, x, y):
        self.calls.append(("learn", dict(x), y))
        self.n += 1


# -- the invariants, one test each ----------------------------------------------------------------

def test_event_is_scored_before_its_own_label_is_learned():
    rec = Recorder()
    out = run(learner(rec), [ev(1, 1000, {"a": 1.0}), lb(1, 1000)])
    assert rec.calls == [("predict", {"a": 1.0}), ("learn", {"a": 1.0}, True)]
    assert [(p.event_id, p.score, p.labels_learned) for p in out] == [("e1", 0.0, 0)]


def test_learns_on_exactly_the_served_features():
    seen = []

    class Identity(Recorder):
        def predict_proba_one(self, x):
            seen.append(x)
            return super().predict_proba_one(x)

        def learn_one(self, x, y):
            seen.append(x)
            super().learn_one(x, y)

    served = {"a": 1.0, "b": 2.0}
    lr = learner(Identity())
    run(lr, [ev(1, 1000, served), ev(2, 3000, {"a": 5.0}), lb(1, 2000)], end=False)
    assert lr.labels_learned == 1
    # The very vector that was scored is the one learned: nothing is recomputed later.
    assert seen[0] is served and seen[2] is served


def test_label_waits_until_the_clock_reaches_its_time():
    rec = Recorder()
    lr = learner(rec)
    # Label e1 arrives right after e1 but is only true at t=5000.
    run(lr, [ev(1, 1000, {"i": 1.0}), lb(1, 5000), ev(2, 4999, {"i": 2.0})], end=False)
    assert [c[0] for c in rec.calls] == ["predict", "predict"]
    assert lr.waiting_labels == 1
    # Tie rule of simulate_qa: a label with ts <= the event's ts is learned before it is scored.
    run(lr, [ev(3, 5000, {"i": 3.0})], end=False)
    assert [c[0] for c in rec.calls] == ["predict", "predict", "learn", "predict"]
    assert lr.labels_learned == 1


def test_pending_expires_once_both_clocks_pass_the_ttl_and_late_label_is_dead_lettered():
    lr = learner(ttl=1000)
    run(lr, [ev(1, 0), ev(2, 1000)], end=False)
    assert len(lr.pending) == 2  # deadline 1000 is not passed at clock 1000
    run(lr, [ev(3, 1001)], end=False)
    assert len(lr.pending) == 3  # no label has been seen yet: the label stream may lag
    run(lr, [lb(2, 1001)], end=False)  # the label watermark passes e1's deadline
    assert set(lr.pending) == {"e3"}
    assert lr.counts.pending_expired["ttl"] == 1 and lr.labels_learned == 1
    out = run(lr, [lb(1, 1001)], end=False)
    assert [(d.reason, d.raw, d.topic) for d in out] == [("expired_event", b"label-1", "labels")]
    assert lr.labels_learned == 1


def test_a_lagging_label_stream_never_expires_what_it_will_still_label():
    lr = learner(ttl=1000)
    run(lr, [ev(1, 0)] + [ev(i, i * 1000) for i in range(2, 50)], end=False)
    assert "e1" in lr.pending  # the events are 48 s ahead, but no label time has passed
    run(lr, [lb(1, 900)], end=False)
    assert lr.labels_learned == 1 and lr.counts.pending_expired["ttl"] == 0


def test_label_watermark_is_the_slowest_label_partition():
    lr = learner(ttl=1000)
    run(lr, [ev(1, 0), ev(2, 5000)], end=False)
    fast = Label("e2", "k", 5000, True, topic="labels", partition=0)
    slow = Label("x", "k", 500, True, topic="labels", partition=1)
    run(lr, [slow, fast], end=False)
    assert lr.label_wm.value == 500 and "e1" in lr.pending
    run(lr, [Label("y", "k", 1500, True, topic="labels", partition=1)], end=False)
    assert lr.label_wm.value == 1500 and "e1" not in lr.pending


def test_label_after_ttl_for_a_still_pending_event_expires_it():
    lr2 = learner(ttl=1000)
    out = run(lr2, [ev(1, 0), lb(1, 1500), ev(2, 1500)], end=False)  # label itself is past TTL
    assert [type(o).__name__ for o in out] == ["Prediction", "DeadLetter", "Prediction"]
    assert out[1].reason == "expired_event"
    assert lr2.counts.pending_expired["ttl"] == 1 and lr2.labels_learned == 0


def test_early_label_waits_for_its_event_then_is_learned_after_scoring():
    rec = Recorder()
    lr = learner(rec, early=10_000)
    out = run(lr, [ev(0, 1000, {"i": 0.0}), lb(1, 1000), ev(1, 1000, {"i": 1.0})], end=False)
    assert [c[0] for c in rec.calls] == ["predict", "predict", "learn"]
    assert rec.calls[2] == ("learn", {"i": 1.0}, True)
    assert lr.counts.early_labels == 1 and not lr.early
    assert [p.event_id for p in out] == ["e0", "e1"]


def test_early_label_whose_event_never_comes_expires_to_dead_letters():
    lr = learner(early=1000)
    out = run(lr, [ev(0, 1000), lb(9, 1000), ev(2, 2000)], end=False)
    assert not [o for o in out if isinstance(o, DeadLetter)]
    out = run(lr, [ev(3, 2001)], end=False)
    assert [(d.reason, d.raw) for d in out if isinstance(d, DeadLetter)] == [
        ("unknown_event", b"label-9")
    ]
    assert lr.counts.early_expired == 1 and not lr.early


def test_duplicate_and_conflicting_labels_are_learned_once():
    rec = Recorder()
    lr = learner(rec)
    out = run(lr, [ev(1, 0), lb(1, 10, True), lb(1, 20, True), lb(1, 30, False), ev(2, 40)])
    assert sum(1 for c in rec.calls if c[0] == "learn") == 1
    assert [d.reason for d in out if isinstance(d, DeadLetter)] == [
        "duplicate_label", "conflicting_label"
    ]


def test_duplicate_event_is_dead_lettered_not_scored_twice():
    lr = learner()
    out = run(lr, [ev(1, 0), ev(1, 5)])
    assert [type(o).__name__ for o in out] == ["Prediction", "DeadLetter"]
    assert out[1].reason == "duplicate_event"


def test_capacity_bound_expires_the_oldest_pending():
    lr = learner(max_pending=2)
    run(lr, [ev(1, 0), ev(2, 1), ev(3, 2)], end=False)
    assert set(lr.pending) == {"e2", "e3"}
    assert lr.counts.pending_expired["capacity"] == 1


def test_finished_ids_are_forgotten_after_the_ttl():
    lr = learner(ttl=100)
    run(lr, [ev(1, 0), lb(1, 50), ev(2, 60)], end=False)
    assert "e1" in lr.finished
    run(lr, [ev(2, 151)], end=False)
    assert "e1" not in lr.finished


def test_learner_survives_a_pickle_round_trip_mid_stream():
    records = [ev(1, 0, {"x": 1.0}), ev(2, 10, {"x": -1.0}), lb(1, 20, True), ev(3, 30, {"x": 0.5})]
    whole = run(learner(preprocessing.StandardScaler() | linear_model.LogisticRegression()), records)
    lr = learner(preprocessing.StandardScaler() | linear_model.LogisticRegression())
    first = run(lr, records[:2], end=False)
    lr = pickle.loads(pickle.dumps(lr))
    rest = run(lr, records[2:])
    assert first + rest == whole


# -- oracle: river.evaluate.progressive_val_score ----------------------------------------------

def _as_bool(ds):
    for x, y in ds:
        yield x, bool(y)


STREAMS = {
    "phishing": lambda: list(datasets.Phishing()),
    "agrawal_drift": lambda: list(
        _as_bool(
            synth.ConceptDriftStream(
                stream=synth.Agrawal(classification_function=0, seed=7),
                drift_stream=synth.Agrawal(classification_function=4, seed=7),
                position=1500, width=200, seed=7,
            ).take(3000)
        )
    ),
    "sea_drift": lambda: list(
        _as_bool(
            synth.ConceptDriftStream(
                stream=synth.SEA(variant=0, seed=3), drift_stream=synth.SEA(variant=2, seed=3),
                position=1500, width=50, seed=3,
            ).take(3000)
        )
    ),
}

DELAYS = {
    "constant": lambda: 25_000,  # 25 events at one event per second
    "per_record": lambda: (lambda rng: lambda x, y: rng.randrange(0, 120_000))(random.Random(5)),
}


def _model():
    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


@pytest.mark.parametrize("delay_name", sorted(DELAYS))
@pytest.mark.parametrize("stream_name", sorted(STREAMS))
def test_reproduces_progressive_val_score(stream_name, delay_name):
    data = STREAMS[stream_name]()
    rows = [({**x, "t": i * 1000}, y) for i, (x, y) in enumerate(data)]
    delay_fn = DELAYS[delay_name]()
    # Per-record delays must be drawn identically for River and for our label timestamps.
    delays = (
        [delay_fn] * len(rows)
        if isinstance(delay_fn, int)
        else [delay_fn(x, y) for x, y in rows]
    )
    it = iter(delays)
    river_delay = delay_fn if isinstance(delay_fn, int) else (lambda x, y: next(it))
    # pass-through features: the record's own fields, its time included
    features = [x for x, _ in rows]

    oracle_metric = metrics.ROCAUC()
    oracle = [
        r["Prediction"]
        for r in evaluate.iter_progressive_val_score(
            rows, _model(), oracle_metric, moment="t", delay=river_delay,
            yield_predictions=True,
        )
    ]
    it = iter(delays)
    order = [
        i for i, x, y in stream.simulate_qa(rows, moment="t", delay=river_delay) if y is not None
    ]

    # The dataflow's worst case: every label is delivered right after its own event, long before
    # its time. The learner must hold it until the clock reaches it.
    records = []
    for i, ((x, y), d) in enumerate(zip(rows, delays, strict=False)):
        records.append(ev(i, x["t"], features[i]))
        records.append(lb(i, x["t"] + d, y))
    lr = learner(_model())
    out = run(lr, records)
    preds = {p.event_id: p.score for p in out if isinstance(p, Prediction)}
    assert len(preds) == len(rows)
    assert [preds[f"e{i}"] for i in order] == [p.get(True, 0.0) for p in oracle]

    ours = metrics.ROCAUC()
    for i in order:
        ours.update(rows[i][1], preds[f"e{i}"])
    assert ours.get() == oracle_metric.get()
    assert lr.labels_learned == len(rows)


def test_no_label_watermark_until_every_label_partition_has_spoken():
    lr = learner(ttl=1000, label_partitions=2)
    run(lr, [ev(1, 0), ev(2, 9000)], end=False)
    run(lr, [Label("e2", "k", 9000, True, topic="labels", partition=0)], end=False)
    assert lr.label_wm.value is None and "e1" in lr.pending  # partition 1 may still hold e1's
    run(lr, [Label("e1", "k", 900, True, topic="labels", partition=1)], end=False)
    assert lr.labels_learned == 2 and lr.counts.pending_expired["ttl"] == 0


def test_early_labels_wait_for_the_slowest_event_partition():
    lr = learner(early=1000, event_partitions=2)
    fast = [FeaturedEvent(Event(f"f{i}", "k", i * 1000, {}, 0.0, 0), {"x": 1.0}) for i in range(10)]
    run(lr, fast + [lb("slow", 500)], end=False)  # partition 0 is 9 s ahead; e"slow" is on 1
    run(lr, [FeaturedEvent(Event("eslow", "k", 400, {}, 0.0, 1), {"x": 1.0})], end=False)
    assert lr.labels_learned == 1 and lr.counts.early_expired == 0


# -- the report the operator exports ---------------------------------------------------------------

def test_report_holds_what_happened_since_the_previous_one():
    lr = learner(Recorder(), ttl=1000, early=0, max_pending=2)
    run(lr, [ev(1, 0), ev(2, 100), lb(1, 100), lb(1, 100, False), ev(2, 200), ev(3, 300),
             ev(4, 400), lb("x", 400), ev(5, 2000), lb("y", 2000)], end=False)
    r = lr.take_report()
    assert (r.model, r.events, r.labels, r.learned, r.duplicate_events) == ("m", 6, 4, 1, 1)
    # Over capacity: e2 at e4, e3 at e5; e4 by the TTL once both clocks pass 1400 ("y").
    assert r.pending_expired == {"ttl": 1, "capacity": 2}
    assert (r.early_labels, r.early_expired) == (2, 1)  # "x" expired at e5, "y" waits
    assert r.label_dead_letters == {"conflicting_label": 1, "unknown_event": 1}
    assert r.label_delays_s == [0.1] and r.event_lags_s == [0.0, -0.1, -0.3, -0.4, -2.0]
    assert (r.pending, r.early_waiting, r.labels_waiting, r.clock) == (1, 1, 0, 2000)
    (slot,) = r.slots
    assert (slot.name, slot.version, slot.champion, slot.predictions, slot.labels_learned) == (
        "m", 1, True, 5, 1)
    assert slot.quality == lr.quality("m") and slot.last_learn_at == 0.0
    assert set(slot.drift_detections) == {
        (stream, det, direction) for stream in ("error", "score")
        for det, direction in (("adwin", "up"), ("adwin", "down"), ("page_hinkley", "up"))}
    assert set(slot.drift_estimates) == {"error", "score"}
    assert r.champion == "m" and r.promotions == [] and r.feature_refreshes == 0
    # Nothing new: every count is 0, the observations are new lists, the gauges are the same.
    r2 = lr.take_report()
    assert (r2.events, r2.labels, r2.learned, r2.duplicate_events, r2.early_labels,
            r2.early_expired) == (0, 0, 0, 0, 0, 0)
    assert r2.pending_expired == {"ttl": 0, "capacity": 0} and r2.label_dead_letters == {}
    assert r2.label_delays_s == [] and r2.event_lags_s == [] and r.label_delays_s == [0.1]
    assert (r2.pending, r2.early_waiting, r2.clock) == (1, 1, 2000)
    assert (r2.slots[0].predictions, r2.slots[0].labels_learned) == (0, 0)
    assert set(r2.slots[0].drift_detections.values()) == {0}
    assert pickle.loads(pickle.dumps(r2)) == r2


def test_report_counts_a_removed_and_re_added_model_from_zero_and_each_promotion_once():
    lr = learner(Recorder(), challengers={"c": Recorder()})
    run(lr, [ev(1, 0), lb(1, 0), ev(2, 10)], end=False)
    assert [(s.name, s.predictions, s.labels_learned) for s in lr.take_report().slots] == [
        ("m", 2, 1), ("c", 2, 1)]
    lr.promote("c")
    lr.promote("m")
    lr.remove("c")
    lr.swap("c", Recorder())
    run(lr, [ev(3, 20)], end=False)
    r = lr.take_report()
    assert [(s.name, s.predictions, s.labels_learned, s.champion) for s in r.slots] == [
        ("m", 1, 0, True), ("c", 1, 0, False)]
    assert [(p.old, p.new, p.ts) for p in r.promotions] == [("m", "c", 10), ("c", "m", 10)]
    assert lr.take_report().promotions == []
    # Past the 100 promotions the learner keeps, each new one is still reported once.
    for _ in range(60):
        lr.promote("c")
        lr.promote("m")
    assert len(lr.take_report().promotions) == 100
    lr.promote("c")
    assert [(p.old, p.new) for p in lr.take_report().promotions] == [("m", "c")]


def test_learner_config_refuses_bad_options():
    with pytest.raises(ValueError, match="ttl_clock must be 'event' or 'wall', got 'sun'"):
        LearnerConfig(label_ttl_ms=1, early_label_ttl_ms=0, ttl_clock="sun")
    with pytest.raises(ValueError, match="max_pending must be > 0, got 0"):
        LearnerConfig(label_ttl_ms=1, early_label_ttl_ms=0, max_pending=0)
    with pytest.raises(ValueError, match="early_label_ttl_ms must be >= 0, got -1"):
        LearnerConfig(label_ttl_ms=1, early_label_ttl_ms=-1)
    with pytest.raises(ValueError, match="ttl_clock='wall' needs a wall_clock"):
        OnlineLearner("m", Recorder(), LearnerConfig(label_ttl_ms=1, early_label_ttl_ms=0,
                                                     ttl_clock="wall"), wall_clock=None)
