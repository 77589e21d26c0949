"""The backtest report per target (undertow/report.py), pure and fast: multi-class and regression
measures equal River's metrics fed the same outcomes (overall and in an event-time bucket), the
confusion matrix and per-class counts of hand-made outcomes, the report's keys per target, and
the HTML page with its plots per target, byte-identical for the same report."""

from __future__ import annotations

import json
import math
import random

import pytest
from river import metrics

from undertow.report import (
    ROLLING_PANELS,
    build_report,
    confusion_of,
    metrics_of,
    multiclass_metrics_of,
    per_class_of,
    regression_metrics_of,
    render_html,
)
from undertow.schema import ModelSummary, Outcome

T0 = 1_767_225_600_000
CLASSES = ("setosa", "versicolor", "virginica")


def summary(model: str, *, champion: bool, learned: int) -> ModelSummary:
    counts = {"events": learned + 5, "labels": learned, "learned": learned}
    return ModelSummary(model, 1, champion, counts, {}, [(T0 + 60_000, "error", "adwin", "up")],
                        {"x": (0.1, 0.2)}, 0, learned)


def multiclass_outcomes(model: str, n: int, seed: int) -> list[Outcome]:
    """Outcomes as the model step makes them: the first few served before any class was known
    (no decision, probability 0 for the true class), then a decided class and the probability
    served for the true class (sometimes 0: a class the model did not serve)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        y = rng.choice(CLASSES)
        ts = T0 + i * 1000 + rng.randrange(1000)
        if i < 5:
            out.append(Outcome(model, 1, f"e{i:05d}", ts, ts + 5000, y, 0.0, None))
            continue
        decided = y if rng.random() < 0.7 else rng.choice(CLASSES)
        p = 0.0 if rng.random() < 0.03 else rng.random()
        out.append(Outcome(model, 1, f"e{i:05d}", ts, ts + 5000 + rng.randrange(60_000), y, p,
                           decided))
    rng.shuffle(out)  # the model step emits them in label order, not event order
    return out


def regression_outcomes(model: str, n: int, seed: int) -> list[Outcome]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        y = 40 + 5 * math.sin(i / 50) + rng.gauss(0, 1)
        yhat = y + rng.gauss(0.3, 2)
        ts = T0 + i * 3_600_000
        out.append(Outcome(model, 1, f"d{i:05d}", ts, ts + 86_400_000, y, yhat, yhat))
    rng.shuffle(out)
    return out


def in_event_order(outcomes: list[Outcome]) -> list[Outcome]:
    return sorted(outcomes, key=lambda o: (o.event_ts, o.event_id))


def river_multiclass(outcomes: list[Outcome]) -> dict[str, float]:
    """River's metrics as its progressive validation feeds them: an empty prediction (no class
    known, no decision) is skipped; the served probability of the true class is the dict."""
    acc, f1, ce = metrics.Accuracy(), metrics.MacroF1(), metrics.CrossEntropy()
    for o in in_event_order(outcomes):
        if o.predicted is None:
            continue
        acc.update(o.label, o.predicted)
        f1.update(o.label, o.predicted)
        ce.update(o.label, {o.label: o.score})
    return {"accuracy": acc.get(), "macro_f1": f1.get(), "log_loss": ce.get()}


def river_regression(outcomes: list[Outcome]) -> dict[str, float]:
    mae, rmse, r2 = metrics.MAE(), metrics.RMSE(), metrics.R2()
    for o in in_event_order(outcomes):
        for m in (mae, rmse, r2):
            m.update(o.label, o.predicted)
    return {"mae": mae.get(), "rmse": rmse.get(), "r2": r2.get()}


def assert_multiclass_equals_river(got: dict, outcomes: list[Outcome]) -> None:
    want = river_multiclass(outcomes)
    assert got["accuracy"] == want["accuracy"]
    assert got["log_loss"] == want["log_loss"]
    # River sums the classes' F1 in the order of a set of the classes (it follows the hash
    # seed); the report sums them exactly rounded in sorted order: equal up to the last bits.
    assert got["macro_f1"] == pytest.approx(want["macro_f1"], rel=1e-14, abs=0)


def test_multiclass_measures_equal_rivers_overall_and_in_a_bucket():
    outs = multiclass_outcomes("tree", 600, seed=1) + multiclass_outcomes("lr", 600, seed=2)
    report = build_report(outs, [summary("tree", champion=True, learned=600),
                                 summary("lr", champion=False, learned=600)],
                          buckets=10, target="multiclass")
    for m in report["models"]:
        mine = [o for o in outs if o.model == m["model"]]
        assert m["final"]["n"] == 600 and m["final"]["no_prediction"] == 5
        assert_multiclass_equals_river(m["final"], mine)
        first, middle = m["rolling"][0], m["rolling"][4]
        for bucket in (first, middle):
            part = [o for o in mine if bucket["from_ms"] <= o.event_ts < bucket["to_ms"]]
            assert bucket["n"] == len(part) > 40
            assert_multiclass_equals_river(bucket, part)
        assert first["no_prediction"] == 5 and middle["no_prediction"] == 0
        assert sum(b["n"] for b in m["rolling"]) == 600
        # The per-class F1s are those macro F1 averages; the counts add up to the labels.
        f1s = [c["f1"] for c in m["classes"]]
        assert m["final"]["macro_f1"] == math.fsum(f1s) / len(f1s)
        assert sum(c["labels"] for c in m["classes"]) == 600
        assert sum(c["no_decision"] for c in m["classes"]) == 5
        assert [sum(row) for row in m["confusion"]["counts"]] == [c["labels"]
                                                                 for c in m["classes"]]
    # The rule matters: counting a missing decision as a wrong one, or charging its clipped
    # probability, would give other values.
    tree = [o for o in outs if o.model == "tree"]
    final = report["models"][0]["final"]
    assert final["accuracy"] != sum(o.predicted == o.label for o in tree) / len(tree)
    all_ce = metrics.CrossEntropy()
    for o in in_event_order(tree):
        all_ce.update(o.label, {o.label: o.score})
    assert final["log_loss"] != all_ce.get()


def test_regression_measures_equal_rivers_overall_and_in_a_bucket():
    outs = regression_outcomes("linear", 500, seed=3)
    report = build_report(outs, [summary("linear", champion=True, learned=500)], buckets=8,
                          target="regression")
    (m,) = report["models"]
    want = river_regression(outs)
    assert {k: m["final"][k] for k in want} == want
    assert m["final"]["mean_residual"] == pytest.approx(
        sum(o.label - o.predicted for o in outs) / 500, rel=1e-12)
    bucket = m["rolling"][3]
    part = [o for o in outs if bucket["from_ms"] <= o.event_ts < bucket["to_ms"]]
    assert bucket["n"] == len(part) > 50
    assert {k: bucket[k] for k in want} == river_regression(part)
    # The plots' sample: every outcome (fewer than the cap), in event time order.
    assert m["sample"] == {"every": 1, "points": [[o.event_ts, o.label, o.predicted]
                                                  for o in in_event_order(outs)]}


def test_regression_r2_is_null_where_undefined_and_the_sample_is_capped():
    one = [Outcome("m", 1, "a", T0, T0 + 1, 3.0, 2.0, 2.0)]
    flat = one + [Outcome("m", 1, "b", T0 + 1, T0 + 2, 3.0, 4.0, 4.0)]
    assert regression_metrics_of(one) == {"n": 1, "mae": 1.0, "rmse": 1.0, "r2": None,
                                          "mean_residual": 1.0}
    assert regression_metrics_of(flat)["r2"] is None  # River says 0.0 for both
    assert regression_metrics_of([]) == {"n": 0, "mae": None, "rmse": None, "r2": None,
                                         "mean_residual": None}
    outs = regression_outcomes("m", 2500, seed=4)
    (m,) = build_report(outs, [summary("m", champion=True, learned=2500)],
                        target="regression")["models"]
    ordered = in_event_order(outs)
    assert m["sample"]["every"] == 3
    assert m["sample"]["points"] == [[o.event_ts, o.label, o.predicted] for o in ordered[::3]]


def test_the_confusion_matrix_and_class_counts_of_hand_made_outcomes():
    def o(i: int, y: str, decided: str | None) -> Outcome:
        return Outcome("m", 1, f"e{i}", T0 + i, T0 + i + 10, y, 0.5, decided)

    outs = [o(0, "b", None), o(1, "a", None), o(2, "a", "a"), o(3, "a", "a"), o(4, "a", "b"),
            o(5, "b", "b"), o(6, "b", "c"), o(7, "c", "c"), o(8, "c", "a"), o(9, "b", "b")]
    assert confusion_of(outs) == {
        "rows": ["a", "b", "c"],
        "columns": ["a", "b", "c", None],
        "counts": [[2, 1, 0, 1],
                   [0, 2, 1, 1],
                   [1, 0, 1, 0]],
    }
    # F1 over the 8 decided: a (2 correct of 3 decided labels, of 3 decisions: 2/3), b (2 of 3,
    # of 3: 2/3), c (1 of 2, of 2: 1/2).
    classes = per_class_of(outs)
    assert classes == [
        {"class": "a", "labels": 4, "no_decision": 1, "decisions": 3, "correct": 2,
         "f1": pytest.approx(2 / 3, rel=1e-15)},
        {"class": "b", "labels": 4, "no_decision": 1, "decisions": 3, "correct": 2,
         "f1": pytest.approx(2 / 3, rel=1e-15)},
        {"class": "c", "labels": 2, "no_decision": 0, "decisions": 2, "correct": 1, "f1": 0.5},
    ]
    got = multiclass_metrics_of(outs)
    assert got["n"] == 10 and got["no_prediction"] == 2 and got["accuracy"] == 5 / 8
    assert got["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0.5) / 3, rel=1e-15)
    assert got["macro_f1"] == math.fsum(c["f1"] for c in classes) / 3
    assert got["log_loss"] == -math.log(0.5)
    # Integer classes sort as numbers, and a class only ever decided has its row of zeros.
    ints = [Outcome("m", 1, "x", T0, T0, 10, 0.5, 2), Outcome("m", 1, "y", T0, T0, 2, 0.5, 2)]
    assert confusion_of(ints) == {"rows": [2, 10], "columns": [2, 10, None],
                                  "counts": [[1, 0, 0], [1, 0, 0]]}


MODEL_KEYS = {"model", "champion", "version", "events", "labels", "learned", "counts", "final",
              "rolling_window_quality_at_end", "rolling", "drift", "label_delay", "feature_drift"}
BUCKET_KEYS = {"from_ms", "to_ms", "from"}
FINAL_KEYS = {
    "binary": {"n", "accuracy", "log_loss", "roc_auc"},
    "multiclass": {"n", "no_prediction", "accuracy", "macro_f1", "log_loss"},
    "regression": {"n", "mae", "rmse", "r2", "mean_residual"},
}
EXTRA_KEYS = {"binary": set(), "multiclass": {"confusion", "classes"}, "regression": {"sample"}}


def outcomes_of(target: str, model: str, n: int, seed: int) -> list[Outcome]:
    if target == "multiclass":
        return multiclass_outcomes(model, n, seed)
    if target == "regression":
        return regression_outcomes(model, n, seed)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        y = rng.random() < 0.3
        s = min(1.0, max(0.0, (0.6 if y else 0.3) + rng.gauss(0, 0.2)))
        out.append(Outcome(model, 1, f"e{i}", T0 + i * 1000, T0 + i * 1000 + 500, y, s, s > 0.5))
    return out


@pytest.mark.parametrize("target", ["binary", "multiclass", "regression"])
def test_report_keys_per_target(target):
    outs = outcomes_of(target, "a", 300, 5) + outcomes_of(target, "b", 300, 6)
    report = build_report(outs, [summary("b", champion=False, learned=300),
                                 summary("a", champion=True, learned=300)], buckets=6,
                          target=target, meta={"stream": "s"})
    assert set(report) == {"meta", "target", "event_time", "models"}
    assert report["target"] == target
    assert [m["model"] for m in report["models"]] == ["a", "b"]  # the champion first
    for m in report["models"]:
        assert set(m) == MODEL_KEYS | EXTRA_KEYS[target]
        assert set(m["final"]) == FINAL_KEYS[target]
        assert len(m["rolling"]) == 6
        assert all(set(r) == BUCKET_KEYS | FINAL_KEYS[target] for r in m["rolling"])
    # JSON as the backtest writes it (sorted keys), and back.
    assert json.loads(json.dumps(report, indent=1, sort_keys=True)) == report


def test_binary_measures_are_as_before():
    outs = outcomes_of("binary", "a", 200, 7)
    (m,) = build_report(outs, [summary("a", champion=True, learned=200)], buckets=4)["models"]
    assert m["final"] == metrics_of(outs)
    assert [r["n"] for r in m["rolling"]] == [50, 50, 50, 50]
    # Four buckets of ceil(199_001 / 4) ms from the first event time.
    assert m["rolling"][1] == {"from_ms": T0 + 49_751, "to_ms": T0 + 99_502,
                               "from": "2026-01-01T00:00:49.751Z",
                               **metrics_of([o for o in outs
                                             if T0 + 49_751 <= o.event_ts < T0 + 99_502])}


def test_an_unknown_target_is_refused():
    with pytest.raises(ValueError, match="unknown target 'ordinal'"):
        build_report([], [], target="ordinal")


@pytest.mark.parametrize(("target", "plots"), [("binary", 3), ("multiclass", 5),
                                               ("regression", 7)])
def test_the_page_per_target_is_deterministic(target, plots):
    outs = outcomes_of(target, "a", 400, 8) + outcomes_of(target, "b", 400, 9)
    report = build_report(outs, [summary("a", champion=True, learned=400),
                                 summary("b", champion=False, learned=400)], buckets=8,
                          target=target)
    page = render_html(report, mark_ms=T0 + 100_000)
    assert page == render_html(json.loads(json.dumps(report)), mark_ms=T0 + 100_000)
    # Rolling quality, label delays and PSI for every target; a confusion matrix per model
    # (multi-class); predictions against truth and residuals over time per model (regression).
    assert page.count("<svg") == plots
    # Self-contained: nothing to run, nothing to fetch (the SVGs' namespaces are names only).
    assert not [t for t in ("<script", "<link", "<img", "src=", 'href="http') if t in page]
    assert f"Target: {target}." in page
    for _, label in ROLLING_PANELS[target]:
        assert f">{label}<" in page  # the axis labels of the rolling panels
    if target == "multiclass":
        assert "Confusion matrix: a (champion)" in page and "Confusion matrix: b<" in page
        assert "<th>macro F1</th>" in page and "<th>cross-entropy</th>" in page
        m = report["models"][0]
        row = m["confusion"]["counts"][0]
        assert ("<tr><th>setosa</th>" + "".join(f"<td>{n}</td>" for n in row) + "</tr>") in page
    if target == "regression":
        for name in ("a (champion)", "b"):
            assert f"Predictions against truth: {name}<" in page
            assert f"Residuals over event time: {name}<" in page
        assert "<th>R²</th>" in page and "<th>mean residual</th>" in page
