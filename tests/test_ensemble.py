"""The served ensemble: for each target and method the served value is the combination, computed
here by hand, of the values the components served for the same event; the stacker learns on the
values served (a peeking stacker, learning on values recomputed after the components learned,
serves otherwise); a failing component is a dead letter naming it and the ensemble serves from
the others; the ensemble's checkpoint and the pickled learner score the same; the commands; the
``[ensemble]`` section; and backtests of the shipped streams through the command line, River's
own ensembles included as ordinary models."""

from __future__ import annotations

import itertools
import json
import os
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest
from river import datasets, linear_model, naive_bayes, preprocessing, tree
from river.datasets import synth

from connectors.checkpoint import Checkpointer, CheckpointPolicy, ModelStore
from connectors.settings import ConfigError, load_settings
from dataflows.score import score_batch_fn
from dataflows.stream import make_learner, shipped
from undertow.ensemble import DEFAULT_STACKERS, Ensemble, from_stream, resolve_components
from undertow.errors import StreamError
from undertow.learning import LearnerConfig, OnlineLearner
from undertow.models import make_model
from undertow.schema import MODEL_ERROR, DeadLetter, Event, FeaturedEvent, Label, Prediction
from undertow.stream import EnsembleDecl, load_stream, stream_from_dict
from undertow.targets import Binary, Multiclass, Regression, Target

ROOT = Path(__file__).resolve().parents[1]
N = 300
DELAY = 5  # a label comes 5 events after its event

# -- the data and the components, per target -------------------------------------------------------

DATA = {
    "binary": lambda: itertools.islice(datasets.Phishing(), N),
    "multiclass": lambda: synth.Waveform(seed=3).take(N),
    "regression": lambda: itertools.islice(datasets.TrumpApproval(), N),
}
COMPONENTS = {
    "binary": {
        "lr": lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(),
        "nb": lambda: naive_bayes.GaussianNB(),
        "tree": lambda: tree.HoeffdingTreeClassifier(grace_period=20),
    },
    "multiclass": {
        "tree": lambda: tree.HoeffdingTreeClassifier(grace_period=20),
        "softmax": lambda: preprocessing.StandardScaler() | linear_model.SoftmaxRegression(),
        "nb": lambda: naive_bayes.GaussianNB(),
    },
    "regression": {
        "linear": lambda: preprocessing.StandardScaler() | linear_model.LinearRegression(),
        "tree": lambda: tree.HoeffdingTreeRegressor(grace_period=20, leaf_prediction="mean"),
        "pa": lambda: preprocessing.StandardScaler() | linear_model.PARegressor(),
    },
}
TARGETS = {"binary": Binary, "multiclass": Multiclass, "regression": Regression}
WEIGHTS = (0.5, 0.3, 0.2)
VALUE = {"binary": "score", "multiclass": "proba", "regression": "predicted"}
CASES = [(t, m) for t in TARGETS for m in ("mean", "weighted", "vote", "stack")
         if (t, m) != ("regression", "vote")]


def records(kind: str) -> tuple[list, dict]:
    """Events at 1 s apart, each label half a second before the event DELAY later (so it is
    learned just before that event is scored); and x by event id."""
    out, xs = [], {}
    for i, (x, y) in enumerate(DATA[kind]()):
        eid = f"e{i}"
        xs[eid] = x
        out.append((1000 * i, 1, FeaturedEvent(Event(eid, "k", 1000 * i, {}), x)))
        out.append((1000 * (i + DELAY) - 500, 0,
                    Label(eid, "k", 1000 * (i + DELAY) - 500, y, raw=eid.encode())))
    out.sort(key=lambda r: r[:2])
    return [r for _, _, r in out], xs


def fixed_clock() -> float:
    return 0.0


def ensemble_learner(kind: str, method: str, components: dict | None = None,
                     **kw) -> OnlineLearner:
    comps = components if components is not None else {
        n: make() for n, make in COMPONENTS[kind].items()}
    t: Target = TARGETS[kind]()
    ens = Ensemble("ens", t, method, list(comps),
                   weights=WEIGHTS[:len(comps)] if method == "weighted" else None,
                   stacker=make_model(DEFAULT_STACKERS[kind]) if method == "stack" else None)
    (first, model), *rest = comps.items()
    return OnlineLearner(first, model, LearnerConfig(label_ttl_ms=10**9, early_label_ttl_ms=0,
                                                     target=t, **kw),
                         challengers=dict(rest), wall_clock=fixed_clock, ensemble=ens)


def run(lr: OnlineLearner, recs: list, *, end: bool = True) -> list:
    out: list = []
    for r in recs:
        (lr.on_event if type(r) is FeaturedEvent else lr.on_label)(r, out)
    if end:
        lr.on_end(out)
    return out


def served(out: list, kind: str) -> dict[str, dict[str, object]]:
    """event id -> model -> the served value (as on the wire)."""
    by: dict[str, dict[str, object]] = {}
    for p in out:
        if type(p) is Prediction:
            by.setdefault(p.event_id, {})[p.model] = p.wire()[VALUE[kind]]
    return by


# -- the combination by hand ---------------------------------------------------------------------

def by_hand(kind: str, method: str, values: list) -> object:
    """What the ensemble should serve from the components' values (in component order), written
    out from the rules of the method, not from the module."""
    n = len(values)
    w = WEIGHTS if method == "weighted" else (1.0,) * n
    if kind != "multiclass" and method in ("mean", "weighted"):
        return sum(wi * v for wi, v in zip(w, values)) / sum(w)
    if method in ("mean", "weighted"):
        classes = list(dict.fromkeys(c for p in values for c in p))
        return {c: sum(wi * p.get(c, 0.0) for wi, p in zip(w, values)) / sum(w)
                for c in classes}
    if kind == "binary":  # vote
        votes = [v > 0.5 for v in values]
        yes = votes.count(True)
        winner = votes[0] if yes * 2 == n else yes * 2 > n
        side = [v for v, d in zip(values, votes) if d == winner]
        return sum(side) / len(side)
    decided = [max(p, key=p.get) if p else None for p in values]
    counts = Counter(d for d in decided if d is not None)
    if not counts:
        return {}
    top = max(counts.values())
    tied = [c for c in counts if counts[c] == top]
    mean = by_hand(kind, "mean", values)
    best = max(mean.get(c, 0.0) for c in tied)
    tied = [c for c in tied if mean.get(c, 0.0) == best]
    winner = next(d for d in decided if d in tied)  # the first component's among the tied
    voters = sum(counts.values())
    return {winner: counts[winner] / voters,
            **{c: k / voters for c, k in counts.items() if c != winner}}


def stack_features(kind: str, names: list, values: list) -> dict:
    if kind == "multiclass":
        return {f"{m}:{c}": p for m, v in zip(names, values) for c, p in v.items()}
    return dict(zip(names, values))


def stack_by_hand(kind: str, recs: list, comp: dict, names: list) -> dict:
    """A fresh stacker, learning each label (at its time) on the values the components served
    for its event (``comp``: event id -> model -> value), serving from each event's."""
    t = TARGETS[kind]()
    stacker = make_model(DEFAULT_STACKERS[kind])
    held, out = [], {}
    for r in recs:
        if type(r) is Label:
            held.append(r)
            continue
        for lab in [h for h in held if h.ts <= r.event.ts]:
            stacker.learn_one(stack_features(kind, names, [comp[lab.event_id][n] for n in names]),
                              lab.value)
            held.remove(lab)
        out[r.event.event_id] = t.serve(
            stacker, stack_features(kind, names, [comp[r.event.event_id][n] for n in names]))
    return out


@pytest.mark.parametrize(("kind", "method"), CASES)
def test_the_served_value_is_the_combination_of_the_components_served_values(kind, method):
    recs, _ = records(kind)
    names = list(COMPONENTS[kind])
    out = run(ensemble_learner(kind, method), recs)
    preds = [p for p in out if type(p) is Prediction]
    assert not [d for d in out if type(d) is DeadLetter]
    # The ensemble is served; its components in shadow, scored before it, on every event.
    assert [(p.model, p.served) for p in preds[:4]] == [
        *((n, False) for n in names), ("ens", True)]
    assert Counter(p.model for p in preds) == {n: N for n in [*names, "ens"]}
    by = served(out, kind)
    hand = stack_by_hand(kind, recs, by, names) if method == "stack" else None
    t = TARGETS[kind]()
    differs = 0
    for p in preds:
        if p.model != "ens":
            continue
        values = [by[p.event_id][n] for n in names]
        want = hand[p.event_id] if hand is not None else by_hand(kind, method, values)
        assert by[p.event_id]["ens"] == want, (p.event_id, values)
        assert p.predicted == t.decide(want)
        differs += all(want != v for v in values)
    # Not a component's value passed through: the combination is its own on most events.
    assert differs > N // 2
    ens = [p for p in preds if p.model == "ens"]
    assert [p.labels_learned for p in ens[:DELAY + 1]] == [0] * DELAY + [1]


def test_votes_are_split_and_ties_resolved_in_these_streams():
    """The vote cases above are not unanimous everywhere: some events split the components."""
    for kind in ("binary", "multiclass"):
        recs, _ = records(kind)
        by = served(run(ensemble_learner(kind, "vote"), recs), kind)
        names = list(COMPONENTS[kind])
        decide = TARGETS[kind]().decide
        split = sum(len({decide(v[n]) for n in names}) > 1 for v in by.values())
        assert split > 10, kind


def test_ties_by_the_rules():
    b = Ensemble("e", Binary(), "vote", ("a", "b"))
    assert b.combine({"a": 0.4, "b": 0.9}) == 0.4  # a tie goes to the first model's decision
    assert b.combine({"b": 0.9, "a": 0.4}) == 0.4  # in component order, not the dict's
    assert b.combine({"a": 0.7, "b": 0.9}) == (0.7 + 0.9) / 2
    m = Ensemble("e", Multiclass(), "vote", ("a", "b", "c"))
    # One vote each: the mean probability decides (y: (0.5 + 0.6 + 0.3) / 3 is the highest).
    assert m.combine({"a": {"x": 0.5, "y": 0.5 - 1e-9}, "b": {"y": 0.6, "z": 0.4},
                      "c": {"z": 0.7, "y": 0.3}}) == {"y": 1 / 3, "x": 1 / 3, "z": 1 / 3}
    assert list(m.combine({"a": {"x": 0.5, "y": 0.5 - 1e-9}, "b": {"y": 0.6, "z": 0.4},
                           "c": {"z": 0.7, "y": 0.3}})) == ["y", "x", "z"]  # the winner first
    # Tied on votes and mean too: the first model's class.
    assert m.combine({"a": {"x": 1.0}, "b": {"y": 1.0}}) == {"x": 0.5, "y": 0.5}
    assert list(m.combine({"a": {"x": 1.0}, "b": {"y": 1.0}})) == ["x", "y"]
    assert list(m.combine({"b": {"y": 1.0}, "a": {"x": 1.0}})) == ["x", "y"]
    assert list(m.combine({"a": {"x": 1.0}, "b": {"y": 1.0}, "c": {"y": 0.1}})) == ["y", "x"]
    # A component that knows no class yet abstains; none at all: no decision.
    assert m.combine({"a": {}, "b": {"y": 0.6, "z": 0.4}}) == {"y": 1.0}
    assert m.combine({"a": {}, "b": {}}) == {}
    mean = Ensemble("e", Multiclass(), "mean", ("a", "b"))
    assert mean.combine({"a": {}, "b": {"y": 0.6, "z": 0.4}}) == {"y": 0.3, "z": 0.2}
    with pytest.raises(ValueError, match="regression ensemble cannot vote"):
        Ensemble("e", Regression(), "vote", ("a", "b"))


# -- the stacker does not peek -------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(TARGETS))
def test_the_stacker_learns_on_the_served_values_not_on_values_recomputed_after_learning(kind):
    """A plain loop with the same models reproduces the ensemble exactly when its stacker learns
    on the values kept from serving, and serves otherwise when it learns on the components'
    values recomputed after they have learned the label (peeking)."""
    recs, xs = records(kind)
    names = list(COMPONENTS[kind])
    out = run(ensemble_learner(kind, "stack"), recs)
    by = served(out, kind)
    t = TARGETS[kind]()

    def plain_loop(peek: bool) -> tuple[dict, dict]:
        comps = {n: make() for n, make in COMPONENTS[kind].items()}
        stacker = make_model(DEFAULT_STACKERS[kind])
        kept, held, ens, comp_values = {}, [], {}, {}
        for r in recs:
            if type(r) is Label:
                held.append(r)
                continue
            for lab in [h for h in held if h.ts <= r.event.ts]:
                held.remove(lab)
                x = xs[lab.event_id]
                for m in comps.values():
                    m.learn_one(x, lab.value)
                values = ([t.serve(comps[n], x) for n in names] if peek
                          else kept.pop(lab.event_id))
                stacker.learn_one(stack_features(kind, names, values), lab.value)
            eid = r.event.event_id
            values = [t.serve(comps[n], r.features) for n in names]
            kept[eid] = values
            comp_values[eid] = dict(zip(names, values))
            ens[eid] = t.serve(stacker, stack_features(kind, names, values))
        return comp_values, ens

    comp_values, honest = plain_loop(peek=False)
    peek_comp_values, peeking = plain_loop(peek=True)
    # The same components, serving the same values in both loops and in the learner.
    assert comp_values == peek_comp_values == {e: {n: v[n] for n in names} for e, v in by.items()}
    assert {e: v["ens"] for e, v in by.items()} == honest
    differ = sum(peeking[e] != honest[e] for e in honest)
    assert differ > N // 2, differ


# -- failures --------------------------------------------------------------------------------------

class Raises:
    """A component that fails to score the events numbered ``fail`` (it is asked once per event,
    in order), and otherwise is ``inner``."""

    def __init__(self, inner, fail: set[int]) -> None:
        self.inner, self.fail, self.asked = inner, fail, 0

    def _check(self) -> None:
        self.asked += 1
        if self.asked - 1 in self.fail:
            raise RuntimeError("cannot score this one")

    def predict_proba_one(self, x):
        self._check()
        return self.inner.predict_proba_one(x)

    def predict_one(self, x):
        self._check()
        return self.inner.predict_one(x)

    def learn_one(self, x, y):
        self.inner.learn_one(x, y)


@pytest.mark.parametrize("kind", list(TARGETS))
def test_a_failing_component_is_a_dead_letter_and_the_ensemble_serves_from_the_others(kind):
    recs, _ = records(kind)
    fail_a = set(range(10, N, 7))
    fail_both = set(range(12, N, 50)) - fail_a
    a, b = list(COMPONENTS[kind])[:2]
    comps = {a: Raises(COMPONENTS[kind][a](), fail_a | fail_both),
             b: Raises(COMPONENTS[kind][b](), fail_both)}  # two: with both failing, none left
    fails, both = {f"e{i}" for i in fail_a}, {f"e{i}" for i in fail_both}
    out = run(ensemble_learner(kind, "mean", comps), recs)
    dead = [d for d in out if type(d) is DeadLetter]
    assert {(d.reason, d.step, d.raw) for d in dead} == {(MODEL_ERROR, a, None)}
    wanted = [(e, a) for e in fails | both] + [(e, b) for e in both] + [(e, "ens") for e in both]
    assert sorted(d.detail for d in dead) == sorted(
        f"model {m!r} failed to score {e!r}: "
        + ("NoComponentScored: no component scored the event" if m == "ens"
           else "RuntimeError: cannot score this one")
        for e, m in wanted)
    by = served(out, kind)
    for e in fails:  # served from the other one alone: its value
        assert a not in by[e] and by[e]["ens"] == by[e][b]
    for e in both:  # no ensemble prediction
        assert by.get(e, {}) == {}
    ok = [e for e in (f"e{i}" for i in range(N)) if e not in fails | both]
    assert all(by[e]["ens"] == by_hand(kind, "mean", [by[e][a], by[e][b]]) for e in ok)


def test_a_failing_stacker_is_a_dead_letter_naming_the_ensemble():
    class Broken:
        def predict_proba_one(self, x):
            raise ValueError("no")

        def learn_one(self, x, y):
            raise ValueError("never")

    recs, _ = records("binary")
    lr = ensemble_learner("binary", "stack")
    lr.slots["ens"].model.stacker = Broken()
    out = run(lr, recs[:40])
    events = [r.event.event_id for r in recs[:40] if type(r) is FeaturedEvent]
    labels = [r.event_id for r in recs[:40] if type(r) is Label]
    assert sorted(d.detail for d in out if type(d) is DeadLetter) == sorted(
        [f"model 'ens' failed to score {e!r}: ValueError: no" for e in events]
        + [f"model 'ens' failed to learn {e!r}: ValueError: never" for e in labels])
    assert {p.model for p in out if type(p) is Prediction} == {"lr", "nb", "tree"}
    assert lr.slots["ens"].labels_learned == 0 and lr.slots["lr"].labels_learned == len(labels)


# -- checkpoints and recovery ------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(TARGETS))
def test_the_ensemble_checkpoint_round_trips_and_scores_the_same(kind, tmp_path):
    recs, xs = records(kind)
    lr = ensemble_learner(kind, "stack")
    run(lr, recs[:300], end=False)
    store = ModelStore(tmp_path)
    Checkpointer(store, CheckpointPolicy(1, None), feature_spec="s", stream_digest="d")(lr)
    path = store.latest("ens")
    meta = json.loads((path / "meta.json").read_text())
    assert (meta["model_class"], meta["version"], meta["labels_learned"]) == (
        "undertow.ensemble.Ensemble", 1, lr.slots["ens"].labels_learned)
    assert meta["labels_learned"] > 100
    model, _ = store.load(path)
    assert list(model.models) == list(COMPONENTS[kind])
    # The next events, at the clock's time (no label comes due): served live and scored alone.
    now = lr.clock
    probe = [FeaturedEvent(Event(f"p{i}", "k", now, {}), x)
             for i, (x, _) in enumerate(itertools.islice(DATA[kind](), 50, 80))]
    out: list = []
    for fe in probe:
        lr.on_event(fe, out)
    live = [p for p in out if type(p) is Prediction and p.model == "ens"]
    t = TARGETS[kind]()
    assert [p.wire()[VALUE[kind]] for p in live] == [t.serve(model, fe.features) for fe in probe]
    # Bulk scoring (dataflows.score) with the checkpoint: the same values, the same decisions.
    bulk = score_batch_fn(model, name="ens", version=1, labels_learned=0, threshold=0.5,
                          batch_size=7, clock=lambda: 0.0, target=t)(probe)
    assert [(p.score, p.predicted, p.proba) for p in bulk] == [
        (p.score, p.predicted, p.proba) for p in live]


def test_the_pickled_learner_recovers_the_ensemble_with_its_components():
    recs, _ = records("multiclass")
    lr = ensemble_learner("multiclass", "stack")
    run(lr, recs[:250], end=False)
    back = pickle.loads(pickle.dumps(lr))
    ens = back.slots["ens"].model
    assert all(ens.models[n] is back.slots[n].model for n in COMPONENTS["multiclass"])
    rest = run(lr, recs[250:])
    assert len(rest) > 300 and run(back, recs[250:]) == rest


# -- the commands ---------------------------------------------------------------------------------

def test_commands_with_an_ensemble(tmp_path):
    recs, _ = records("binary")
    lr = ensemble_learner("binary", "mean")
    run(lr, recs[:100], end=False)
    assert (lr.name, lr.champion, list(lr.slots)) == ("lr", "ens", ["lr", "nb", "tree", "ens"])
    with pytest.raises(ValueError, match="model 'ens' is the ensemble: swap in a checkpoint of "
                                         "a binary ensemble, or swap its components"):
        lr.swap("ens", linear_model.LogisticRegression())
    # A component swapped: the ensemble combines the new model (its checkpoint holds it).
    new_nb = naive_bayes.GaussianNB()
    assert lr.swap("nb", new_nb) == "swapped model 'nb' to version 2"
    assert lr.slots["ens"].model.models["nb"] is new_nb
    # A new challenger is scored, but the ensemble is still scored last, of its components.
    lr.swap("extra", linear_model.LogisticRegression())
    assert list(lr.slots)[-1] == "ens" and "extra" not in lr.slots["ens"].model.models
    # An ensemble's checkpoint swapped in: its combiner, bound to the live components.
    other = Ensemble("ens", Binary(), "weighted", ("lr", "nb", "tree"), weights=(1.0, 1.0, 2.0))
    before = lr.slots["ens"].model
    assert lr.swap("ens", other) == "swapped model 'ens' to version 2"
    assert other.models == {n: lr.slots[n].model for n in ("lr", "nb", "tree")}
    out = run(lr, recs[100:102], end=False)
    v = {p.model: p.score for p in out if type(p) is Prediction}
    assert v["ens"] == (v["lr"] + v["nb"] + 2.0 * v["tree"]) / 4.0
    assert lr.rollback("ens") == "rolled model 'ens' back to version 1"
    assert lr.slots["ens"].model is before and before.models["nb"] is new_nb
    # A component promoted over the ensemble: it is served, the ensemble goes on in shadow.
    assert lr.promote("tree") == "promoted 'tree' over 'ens' (command)"
    out = run(lr, recs[102:104], end=False)
    assert {(p.model, p.served) for p in out if type(p) is Prediction} == {
        ("lr", False), ("nb", False), ("tree", True), ("extra", False), ("ens", False)}
    # A component removed: the ensemble combines the others.
    lr.remove("nb")
    out = run(lr, recs[104:106], end=False)
    v = {p.model: p.score for p in out if type(p) is Prediction}
    assert v["ens"] == (v["lr"] + v["tree"]) / 2
    assert list(lr.slots["ens"].model.models) == ["lr", "tree"]


def test_the_ensemble_slot_is_its_own():
    recs, _ = records("regression")
    lr = ensemble_learner("regression", "weighted")
    run(lr, recs)
    report = lr.take_report()
    ens = next(s for s in report.slots if s.name == "ens")
    assert (report.model, report.champion, ens.champion) == ("linear", "ens", True)
    assert (ens.predictions, ens.labels_learned, ens.version) == (N, N, 1)
    assert set(ens.quality) == {"mae", "rmse", "r2"}
    assert ens.quality != next(s for s in report.slots if s.name == "linear").quality
    assert {(stream, det) for stream, det, _ in ens.drift_detections} >= {("error", "adwin")}
    names = [s.model for s in lr.summaries()]
    assert names == ["linear", "tree", "pa", "ens"]


# -- the stream file -------------------------------------------------------------------------------

BASE = {"name": "p", "events": {"fields": {"x": "number"}},
        "labels": {"value": "y"},
        "models": [{"name": "a", "model": "logreg"}, {"name": "b", "model": "nb"}],
        "passthrough": [{"name": "x"}]}


def with_ensemble(ens, **labels) -> dict:
    return {**BASE, "labels": {**BASE["labels"], **labels}, "ensemble": ens}


def test_the_ensemble_section():
    s = stream_from_dict(with_ensemble({"method": "mean"}), "p.toml")
    assert s.ensemble == EnsembleDecl("ensemble", "mean", (), None, None)
    s = stream_from_dict(with_ensemble({"name": "both", "method": "weighted",
                                        "models": ["b", "a"], "weights": [2, 0.5]}), "p.toml")
    assert s.ensemble == EnsembleDecl("both", "weighted", ("b", "a"), (2.0, 0.5), None)
    s = stream_from_dict(with_ensemble({"method": "stack",
                                        "stacker": "linear_model.LogisticRegression()"}), "p")
    assert (s.ensemble.method, s.ensemble.stacker) == ("stack", "linear_model.LogisticRegression()")
    assert stream_from_dict(BASE, "p.toml").ensemble is None
    # What a model was served does not depend on the ensemble: checkpoints stay valid.
    assert s.digest == stream_from_dict(BASE, "p").digest


@pytest.mark.parametrize(("ens", "labels", "message"), [
    ("mean", {}, "[ensemble] must be a table"),
    ({"method": "mean", "kind": "x"}, {},
     "[ensemble] kind: unknown key; expected one of ['name', 'method', 'models', 'weights', "
     "'stacker']"),
    ({}, {}, "[ensemble] method: missing: one of ['mean', 'weighted', 'vote', 'stack']"),
    ({"method": "median"}, {},
     "[ensemble] method: unknown method 'median'; one of ['mean', 'weighted', 'vote', 'stack']"),
    ({"method": "vote"}, {"target": "regression"},
     "[ensemble] method: a regression target cannot vote; use mean, weighted or stack"),
    ({"method": "mean", "name": "a"}, {},
     "[ensemble] name: 'a' is a [[models]] name; the ensemble needs its own"),
    ({"method": "mean", "name": "a b"}, {},
     "[ensemble] name: must be a name of letters, digits, '_', '.', '-', got 'a b'"),
    ({"method": "mean", "models": "a"}, {},
     "[ensemble] models: must be a list of [[models]] names, got 'a'"),
    ({"method": "mean", "models": []}, {},
     "[ensemble] models: must be a list of [[models]] names, got []"),
    ({"method": "mean", "models": ["a", "c"]}, {},
     "[ensemble] models: 'c' is not a [[models]] name; one of ['a', 'b']"),
    ({"method": "mean", "models": ["a", "a"]}, {}, "[ensemble] models: 'a' is listed twice"),
    ({"method": "weighted"}, {},
     "[ensemble] weights: missing: the weighted method needs one weight per model (2)"),
    ({"method": "weighted", "weights": [1.0]}, {},
     "[ensemble] weights: must be one number > 0 per model (2), got [1.0]"),
    ({"method": "weighted", "models": ["a"], "weights": [0]}, {},
     "[ensemble] weights: must be one number > 0 per model (1), got [0]"),
    ({"method": "weighted", "weights": [1, True]}, {},
     "[ensemble] weights: must be one number > 0 per model (2), got [1, True]"),
    ({"method": "mean", "weights": [1, 1]}, {},
     "[ensemble] weights: only the weighted method takes weights, not 'mean'"),
    ({"method": "vote", "stacker": "linear_model.LogisticRegression()"}, {},
     "[ensemble] stacker: only the stack method takes a stacker, not 'vote'"),
    ({"method": "stack", "stacker": "linear_model.Nope()"}, {},
     "[ensemble] stacker: model 'linear_model.Nope()': "),
])
def test_each_ensemble_mistake_is_one_line(ens, labels, message):
    with pytest.raises(StreamError) as ei:
        stream_from_dict(with_ensemble(ens, **labels), "p.toml")
    text = str(ei.value)
    assert text.startswith(f"p.toml: {message}") and "\n" not in text, text


def test_the_shipped_streams_serve_an_ensemble():
    iris, approval = load_stream(ROOT / "streams" / "iris.toml"), shipped("approval")
    assert iris.ensemble == EnsembleDecl("ensemble", "mean")
    assert approval.ensemble == EnsembleDecl("ensemble", "mean")
    lr = make_learner(load_settings({}), iris)
    assert (lr.name, lr.champion, list(lr.slots)) == ("tree", "ensemble",
                                                      ["tree", "softmax", "ensemble"])
    ens = lr.slots["ensemble"].model
    assert (ens.method, ens.components, ens.target.name) == ("mean", ("tree", "softmax"),
                                                             "multiclass")
    ens = make_learner(load_settings({}), approval).slots["ensemble"].model
    assert (ens.method, ens.components, ens.target.name) == ("mean", ("linear", "forest"),
                                                             "regression")
    stacked = stream_from_dict(with_ensemble({"method": "stack"}, target="regression"), "p.toml")
    ens = make_learner(load_settings({}), stacked).slots["ensemble"].model
    assert (ens.method, type(ens.stacker).__name__) == ("stack", "Pipeline")
    assert str(ens.stacker) == str(make_model(DEFAULT_STACKERS["regression"]))


def test_make_learner_with_settings_that_replace_the_models():
    s = stream_from_dict(with_ensemble({"method": "weighted", "models": ["a", "b"],
                                        "weights": [1, 2]}), "p.toml")
    # Every served model by default; the named ones must be served.
    lr = make_learner(load_settings({}, challengers="c=nb"),
                      stream_from_dict(with_ensemble({"method": "mean"}), "p.toml"))
    assert lr.slots["ensemble"].model.components == ("a", "c")
    with pytest.raises(ConfigError, match=r"^p.toml: \[ensemble\] models: 'b' is not among the "
                                          r"models served \(a, c\)$"):
        make_learner(load_settings({}, challengers="c=nb"), s)
    with pytest.raises(ConfigError, match=r"^p.toml: \[ensemble\] name: 'ensemble' is also a "
                                          r"model's name$"):
        make_learner(load_settings({}, challengers="ensemble=nb"),
                     stream_from_dict(with_ensemble({"method": "mean"}), "p.toml"))
    with pytest.raises(ConfigError, match=r"^p.toml: \[ensemble\] weights: 2 weights for 3 "
                                          r"models served \(a, b, c\)$"):
        make_learner(load_settings({}, challengers="b=nb,c=nb"), stream_from_dict(
            with_ensemble({"method": "weighted", "weights": [1, 2]}), "p.toml"))
    assert resolve_components("e", (), ["a", "b"]) == ("a", "b")
    # The same checks, without building a learner (a start-up check can call it).
    with pytest.raises(ValueError, match=r"^\[ensemble\] models: 'b' is not among"):
        from_stream(s.ensemble, Binary(), ["a", "c"])
    assert from_stream(s.ensemble, Binary(), ["a", "b"]).weights == {"a": 1.0, "b": 2.0}


# -- through the command line --------------------------------------------------------------------

def cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, **(env or {})})
    assert r.returncode == 0, (args, r.stderr[-3000:])
    return r


def read_jsonl(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Events and labels of the iris and approval streams (JSON Lines)."""
    d = tmp_path_factory.mktemp("data")
    for name in ("iris", "approval"):
        cli(["-m", "harness.generate", "--stream", name, "--events", "600", "--seed", "5",
             "--to", "jsonl", "--out-dir", str(d / name), "--quiet"])
    return d


@pytest.mark.parametrize("name", ["iris", "approval"])
def test_a_backtest_serves_the_ensemble_and_the_components_in_shadow(name, generated, tmp_path):
    d = generated / name
    out = tmp_path / "bt"
    cli(["-m", "dataflows.backtest", "--stream", f"streams/{name}.toml",
         "--events-file", str(d / "events.jsonl"), "--labels-file", str(d / "labels.jsonl"),
         "--out", str(out)], {"UNDERTOW_MODEL_DIR": str(tmp_path / "models"),
                              "UNDERTOW_CHECKPOINT_EVERY_LABELS": "200"})
    stream = load_stream(ROOT / "streams" / f"{name}.toml")
    components = [m.name for m in stream.models]
    preds = read_jsonl(out / "predictions.jsonl")
    assert Counter((p["model"], p["served"]) for p in preds) == {
        ("ensemble", True): 600, **{(c, False): 600 for c in components}}
    report = json.loads((out / "report.json").read_text())
    assert [(m["model"], m["champion"], m["events"]) for m in report["models"]] == [
        ("ensemble", True, 600), *sorted((c, False, 600) for c in components)]
    assert all(m["learned"] == 600 for m in report["models"])
    assert read_jsonl(out / "deadletters.jsonl") == []
    by: dict[str, dict] = {}
    for p in preds:
        by.setdefault(p["event_id"], {})[p["model"]] = p
    assert stream.ensemble.method == "mean"  # the mean of the two, exactly (JSON round trips)
    for e, ps in by.items():
        if name == "iris":
            a, b = (ps[c]["proba"] for c in components)
            want = {c: (a.get(c, 0.0) + b.get(c, 0.0)) / 2 for c in dict.fromkeys([*a, *b])}
            assert ps["ensemble"]["proba"] == want, e
        else:  # a model that predicts nothing yet (AMF before it learns) is not combined
            values = [ps[c]["predicted"] for c in components if ps[c]["predicted"] is not None]
            assert ps["ensemble"]["predicted"] == sum(values) / len(values), e
    # Checkpointed like a model, next to its components.
    ckpt = sorted((tmp_path / "models" / "ensemble").iterdir())[-1]
    assert json.loads((ckpt / "meta.json").read_text())["model_class"] == (
        "undertow.ensemble.Ensemble")


def test_river_ensembles_are_ordinary_models(generated, tmp_path):
    """River's own ensembles through the expression, as components of the stream's ensemble."""
    d = generated / "iris"
    models = {"bag": "ensemble.BaggingClassifier(tree.HoeffdingTreeClassifier(), n_models=3, "
                     "seed=1)",
              "arf": "forest.ARFClassifier(n_models=3, seed=1)"}
    cli(["-m", "dataflows.backtest", "--stream", "streams/iris.toml", "--events-file",
         str(d / "events.jsonl"), "--labels-file", str(d / "labels.jsonl"),
         *(a for n, m in models.items() for a in ("--model", f"{n}={m}")),
         "--out", str(tmp_path / "bt")])
    preds = read_jsonl(tmp_path / "bt" / "predictions.jsonl")
    assert Counter((p["model"], p["served"]) for p in preds) == {
        ("bag", False): 600, ("arf", False): 600, ("ensemble", True): 600}
    by: dict[str, dict] = {}
    for p in preds:
        by.setdefault(p["event_id"], {})[p["model"]] = p["proba"]
    for e, v in by.items():  # the stream's ensemble: the mean of every model served
        want = {c: (v["bag"].get(c, 0.0) + v["arf"].get(c, 0.0)) / 2
                for c in dict.fromkeys([*v["bag"], *v["arf"]])}
        assert v["ensemble"] == want, e
    report = json.loads((tmp_path / "bt" / "report.json").read_text())
    final = {m["model"]: m["final"] for m in report["models"]}
    assert final["bag"]["accuracy"] > 0.8 and final["arf"]["accuracy"] > 0.8, final
