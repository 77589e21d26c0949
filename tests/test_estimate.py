"""The quality estimate before the labels come (undertow/estimate.py): exact values against
brute-force oracles on small cases, and on the shipped binary streams through the learner: the
realised accuracy and ROC AUC of the same predictions fall within the estimate's 95 % interval on
stationary data, and after the fraud generator's concept drift they do not (the estimate stays
optimistic until the new labels recalibrate it)."""

from __future__ import annotations

import itertools
import math
import pickle
import random
from bisect import bisect_left

from hypothesis import given, settings
from hypothesis import strategies as st
from river import linear_model

from connectors.settings import load_settings
from dataflows.stream import make_learner, shipped
from harness.generate import OTHER_STREAMS, MemorySink, run, run_records
from harness.workload import WorkloadConfig, drift_index
from undertow.estimate import ConfidenceEstimate, isotonic_blocks, score_edges
from undertow.features import SpecState
from undertow.learning import LearnerConfig, OnlineLearner
from undertow.schema import Event, FeaturedEvent, Label, Prediction, decode_event, decode_label

# -- oracles -----------------------------------------------------------------------------------


def roc_auc(scored: list[tuple[float, bool]]) -> float:
    """Mann-Whitney ROC AUC, ties half (River's and scikit-learn's definition)."""
    pos = [s for s, y in scored if y]
    neg = [s for s, y in scored if not y]
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def ranked_roc_auc(scored: list[tuple[float, bool]]) -> float:
    """The same by ranks (distinct scores), in O(n log n)."""
    pos = neg = wins = 0
    for _, y in sorted(scored):
        if y:
            pos += 1
            wins += neg
        else:
            neg += 1
    return wins / (pos * neg)


def isotonic_oracle(labels: list[int], positives: list[float]) -> list[float | None]:
    """The isotonic fit of bin rates weighted by labels, by its min-max formula
    ``f(b) = max_{i <= b} min_{j >= b} mean(i..j)`` over labelled bins (None for the others)."""
    idx = [b for b, m in enumerate(labels) if m]
    out: list[float | None] = [None] * len(labels)
    for k, b in enumerate(idx):
        out[b] = max(
            min(sum(positives[x] for x in idx[i:j + 1]) / sum(labels[x] for x in idx[i:j + 1])
                for j in range(k, len(idx)))
            for i in range(k + 1)
        )
    return out


def expected_by_pairs(scores: list[float], p: list[float], t: float) -> tuple[float, float]:
    """Expected accuracy and E[U] / E[PN] over every ordered pair of points."""
    acc = sum(pi if s > t else 1 - pi for s, pi in zip(scores, p, strict=True)) / len(scores)
    u = d = 0.0
    for i, j in itertools.permutations(range(len(scores)), 2):
        w = p[i] * (1 - p[j])
        d += w
        u += w * ((scores[i] > scores[j]) + 0.5 * (scores[i] == scores[j]))
    return acc, u / d


# -- the pieces --------------------------------------------------------------------------------


def test_bins_put_the_threshold_on_an_edge_so_a_decision_never_shares_a_bin():
    for t in (0.5, 0.2, 0.9):
        edges = score_edges(t)
        above = bisect_left(edges, t) + 1
        for s in (t, t + 1e-9, t - 1e-9, 0.0, 1.0, 1e-6, 0.999999):
            assert (bisect_left(edges, s) >= above) == (s > t), (t, s)
        assert edges == sorted(edges) and len(edges) == 65


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=9))
def test_isotonic_blocks_are_the_isotonic_fit(bins):
    labels = [m for m, _ in bins]
    positives = [float(min(k, m)) for m, k in bins]
    blocks = isotonic_blocks(labels, positives)
    want = isotonic_oracle(labels, positives)
    if not any(labels):
        assert blocks == []
        return
    # the blocks tile the bins in order, and every labelled bin gets the isotonic fit's rate
    assert blocks[0][0] == 0 and blocks[-1][1] == len(labels) - 1
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(blocks))
    for first, last, w, pos in blocks:
        for b in range(first, last + 1):
            if want[b] is not None:
                assert math.isclose(pos / w, want[b], abs_tol=1e-12)


def test_a_hand_computed_estimate():
    """Labels: at 0.1, 1 positive of 10; at 0.9, 9 of 10 (the base rate is 0.5, and each bin
    has one pseudo-label at it): p(0.1) = 1.5 / 11, p(0.9) = 9.5 / 11. Window: 0.1, 0.1, 0.9."""
    e = ConfidenceEstimate(window=3, calibration_window=100, min_labels=20)
    for i in range(10):
        e.learn(0.1, i == 0)
        assert e.get() is None
        e.learn(0.9, i != 0)
    assert e.get() is None  # no score served yet
    for s in (0.1, 0.1, 0.9):
        e.update(s)
    lo, hi = 1.5 / 11, 9.5 / 11
    r = e.get()
    assert math.isclose(r.accuracy, (2 * (1 - lo) + hi) / 3, rel_tol=1e-12)
    # E[U] = 2 hi (1 - lo) + 1 lo (1 - lo); E[PN] = W+ W- - sum p (1 - p)
    w_pos = 2 * lo + hi
    pairs = w_pos * (3 - w_pos) - 2 * lo * (1 - lo) - hi * (1 - hi)
    assert math.isclose(r.roc_auc, (2 * hi * (1 - lo) + lo * (1 - lo)) / pairs, rel_tol=1e-12)
    # accuracy's variance: the labels' Bernoulli part plus the two calibration blocks'
    var = (2 * lo * (1 - lo) + hi * (1 - hi)) / 9 + (2 / 3) ** 2 * lo * (1 - lo) / 11 + (
        1 / 3) ** 2 * hi * (1 - hi) / 11
    assert math.isclose(r.accuracy_se, math.sqrt(var), rel_tol=1e-12)
    assert math.isclose(r.accuracy_lower, max(0.0, r.accuracy - 1.96 * r.accuracy_se))
    assert (r.predictions, r.labels) == (3, 20)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=14),
       st.lists(st.tuples(st.floats(0.0, 1.0), st.booleans()), min_size=1, max_size=60),
       st.sampled_from([0.5, 0.3]))
def test_accuracy_and_auc_equal_the_pairwise_expectation(window, labelled, t):
    """Whatever the calibration: the estimate is the expectation over every pair of points,
    each at its bin's calibrated probability (a pair in one bin is ordered half the time)."""
    e = ConfidenceEstimate(window=len(window), calibration_window=100, threshold=t,
                           min_labels=1)
    for s, y in labelled:
        e.learn(s, y)
    for s in window:
        e.update(s)
    p_bin, _, _ = e.calibration()
    p = [p_bin[bisect_left(e.edges, s)] for s in window]
    # the same order inside a bin: scores of one bin compared as ties (calibration sees none)
    ranks = [bisect_left(e.edges, s) for s in window]
    acc, auc = expected_by_pairs([float(r) for r in ranks], p, float(bisect_left(e.edges, t)))
    r = e.get()
    assert math.isclose(r.accuracy, acc, rel_tol=1e-9)
    if r.roc_auc_se == 0.5:  # no mixed pair expected at all
        return
    assert math.isclose(r.roc_auc, auc, rel_tol=1e-9, abs_tol=1e-12)


def test_the_labels_part_of_the_auc_error_is_the_spread_of_realised_aucs():
    """Scores calibrated by construction (labels drawn at the bin's probability): the standard
    error's label part (calibration variance set to 0) matches the spread of the realised AUC
    over 600 draws of the window's labels within 10 %; and the accuracy's too."""
    rng = random.Random(3)
    e = ConfidenceEstimate(window=400, calibration_window=100, min_labels=1)
    for s in (0.05, 0.95):
        e.learn(s, s > 0.5)
    scores = [0.001 + 0.998 * rng.betavariate(0.7, 1.6) for _ in range(400)]
    for s in scores:
        e.update(s)
    # an exactly known calibration: every bin's p is its upper edge
    p_bin = [min(max(edge, 1e-4), 1 - 1e-4) for edge in e.edges] + [1 - 1e-4]
    counts = e._counts
    w_pos = sum(c * pb for c, pb in zip(counts, p_bin, strict=True))
    spread = sum(c * pb * (1 - pb) for c, pb in zip(counts, p_bin, strict=True))
    pairs = w_pos * (400 - w_pos) - spread
    u, neg_below = 0.0, 0.0
    for c, pb in zip(counts, p_bin, strict=True):
        u += c * pb * neg_below + c * (c - 1) / 2 * pb * (1 - pb)
        neg_below += c * (1 - pb)
    auc = u / pairs
    se = math.sqrt(e._auc_variance(auc, pairs, counts, p_bin, list(range(len(p_bin))),
                                   [0.0] * len(p_bin), w_pos, 400 - w_pos))
    p = [p_bin[bisect_left(e.edges, s)] for s in scores]
    aucs, accs = [], []
    assert len(set(scores)) == len(scores)
    for _ in range(600):
        ys = [rng.random() < pi for pi in p]
        aucs.append(ranked_roc_auc(list(zip(scores, ys, strict=True))))
        accs.append(sum((s > 0.5) == y for s, y in zip(scores, ys, strict=True)) / 400)
    mean = sum(aucs) / len(aucs)
    sd = math.sqrt(sum((a - mean) ** 2 for a in aucs) / (len(aucs) - 1))
    assert abs(mean - auc) < 0.004, (mean, auc)
    assert abs(sd / se - 1) < 0.10, (sd, se)
    acc_sd = math.sqrt(sum((a - sum(accs) / 600) ** 2 for a in accs) / 599)
    assert abs(acc_sd / (math.sqrt(spread) / 400) - 1) < 0.10


def test_alike_labels_of_one_entity_widen_the_interval():
    """Two entities whose labels are each always the same: consecutive residuals of one entity
    are alike, so the design effect is 1 + rho (sum m_k^2 / n - 1) > 1; without keys it is 1."""
    plain, keyed = (ConfidenceEstimate(window=10, calibration_window=200, min_labels=1)
                    for _ in range(2))
    for i in range(100):
        key, y = ("a", True) if i % 2 else ("b", False)
        plain.learn(0.5, y)
        keyed.learn(0.5, y, key)
    for i in range(10):
        plain.update(0.5)
        keyed.update(0.5, "a" if i < 8 else "b")
    assert plain.design_effect() == 1.0
    assert keyed._key_squares == 8 * 8 + 2 * 2
    deff = keyed.design_effect()
    assert 1.0 < deff <= 1 + (68 / 10 - 1)
    assert keyed.get().accuracy_se > plain.get().accuracy_se
    # windows slide: the oldest served scores and labels leave, with their keys
    for _ in range(10):
        keyed.update(0.5, "c")
    assert keyed._per_key == {"c": 10} and keyed._key_squares == 100
    assert len(keyed._labelled) == 100 and len(keyed._last_residual) == 2


def test_the_estimate_pickles_and_goes_on_the_same():
    e = ConfidenceEstimate(window=50, calibration_window=80, min_labels=10)
    rng = random.Random(1)
    for i in range(120):
        s = rng.random()
        e.learn(s, rng.random() < s, i % 7)
        e.update(rng.random(), i % 5)
    f = pickle.loads(pickle.dumps(e))
    assert f.get() == e.get()
    for x in (e, f):
        x.learn(0.3, True, 1)
        x.update(0.8, 2)
    assert f.get() == e.get()


def test_the_learner_estimates_its_champion_and_starts_again_for_a_new_one():
    config = LearnerConfig(label_ttl_ms=10**9, early_label_ttl_ms=0, quality_window=50)
    learner = OnlineLearner("a", linear_model.LogisticRegression(), config,
                            challengers={"b": linear_model.LogisticRegression()},
                            wall_clock=None)
    rng = random.Random(2)
    out: list = []
    for i in range(400):
        x = rng.gauss(0, 1)
        learner.on_event(FeaturedEvent(Event(f"e{i}", f"k{i % 9}", 1000 + i, {}), {"x": x}),
                         out)
        learner.on_label(Label(f"e{i}", f"k{i % 9}", 1000 + i, x + rng.gauss(0, 1) > 0), out)
    est = learner.estimate()
    assert est is not None and est.predictions == 50 and est.labels == 400
    champ = [s for s in learner.take_report().slots if s.champion]
    assert [s.name for s in champ] == ["a"] and champ[0].estimate == est
    learner.promote("b")
    assert learner.estimate() is None  # a's calibration says nothing of b's scores
    report = learner.take_report()
    assert all(s.estimate is None for s in report.slots)


# -- the shipped streams through the learner ---------------------------------------------------


def replay(stream_name: str, n: int, *, drift_at: float | None = None, every: int = 2000,
           seed: int = 2):
    """Feed a generated stream to make_learner's learner in time order (features by SpecState,
    as tests/test_requests.py does); every ``every`` events, the estimate and the ids of the
    last quality-window predictions it covers. Returns the checkpoints, the served champion
    scores and the labels."""
    stream = shipped(stream_name)
    learner = make_learner(load_settings({}), stream, replay=True)
    sink = MemorySink()
    if stream_name == "fraud":
        run(WorkloadConfig(seed=seed, n_events=n, drift_at=drift_at), sink)
    else:
        other = OTHER_STREAMS[stream_name]
        run_records(other, *other.generate(seed, n), sink)
    feats = SpecState(stream.features)
    window = learner.config.quality_window
    out: list = []
    served: dict[str, float] = {}
    order: list[str] = []
    truth: dict[str, bool] = {}
    checks = []
    for kind, value, _key, _ts in sink.records:
        if kind == "event":
            ev = decode_event(value, stream.events)
            assert type(ev) is Event
            learner.on_event(FeaturedEvent(ev, feats.update(ev.fields, ev.ts)), out)
            for p in out:
                if type(p) is Prediction and p.served:
                    served[p.event_id] = p.score
                    order.append(p.event_id)
            out.clear()
            if len(order) % every == 0:
                checks.append((len(order), learner.estimate(), order[-window:]))
        else:
            lb = decode_label(value, stream.labels)
            assert type(lb) is Label
            truth[lb.event_id] = lb.value
            learner.on_label(lb, out)
            out.clear()
    return checks, served, truth


def realised(ids, served, truth) -> tuple[float, float]:
    scored = [(served[i], truth[i]) for i in ids if i in truth]
    assert len(scored) > 0.9 * len(ids)
    return sum((s > 0.5) == y for s, y in scored) / len(scored), roc_auc(scored)


def zscores(stream_name: str, n: int, warm: int) -> list[tuple[str, int, str, float, bool]]:
    """Every disjoint window (1000 predictions) after ``warm`` events: (stream, events, measure,
    (realised - estimate) / standard error, realised inside the 95 % interval)."""
    checks, served, truth = replay(stream_name, n, every=1000)
    out = []
    for at, est, ids in checks:
        if at < warm:
            continue
        acc, auc = realised(ids, served, truth)
        assert est.accuracy_upper - est.accuracy_lower < 0.15, (stream_name, at, est)
        assert est.roc_auc_upper - est.roc_auc_lower < 0.15, (stream_name, at, est)
        out.append((stream_name, at, "accuracy", (acc - est.accuracy) / est.accuracy_se,
                    est.accuracy_lower <= acc <= est.accuracy_upper))
        out.append((stream_name, at, "roc_auc", (auc - est.roc_auc) / est.roc_auc_se,
                    est.roc_auc_lower <= auc <= est.roc_auc_upper))
    return out


def test_on_stationary_streams_the_realised_quality_is_within_the_estimate():
    """The three shipped binary streams, stationary, after a warm-up (the model and its
    calibration still change fast before it): the realised accuracy and ROC AUC of each window's
    predictions, once labelled, against the estimate made while they were served. The interval
    is a 95 % one, so a window in twenty may fall outside it by design: at least 90 % of the
    checks are inside (measured: 58 of 60), none is beyond 3.5 standard errors, and the errors
    are not all tiny (the root mean square z is over 0.4: the interval is not vacuously wide;
    clicks' is the widest, its design effect counted from the sessions' alike labels)."""
    checks = (zscores("fraud", 20_000, warm=8000) + zscores("clicks", 14_000, warm=4000)
              + zscores("income", 8_000, warm=3000))
    assert {c[0] for c in checks} == {"fraud", "clicks", "income"} and len(checks) >= 60
    inside = sum(c[4] for c in checks)
    assert inside >= 0.9 * len(checks), [c for c in checks if not c[4]]
    assert all(abs(c[3]) < 3.5 for c in checks), checks
    for name in ("fraud", "clicks", "income"):
        z = [c[3] for c in checks if c[0] == name]
        assert math.sqrt(sum(x * x for x in z) / len(z)) > 0.4, (name, z)


def test_after_a_concept_drift_the_estimate_stays_optimistic_until_labels_come():
    """The generator's drift half way (the default drift_at=0.5): the window of the first
    predictions after it is estimated with the old relation of score and fraud, and its
    realised accuracy falls below the estimate's lower bound; before the drift it held."""
    n = 20_000
    checks, served, truth = replay("fraud", n, drift_at=0.5)
    at_drift = drift_index(WorkloadConfig(seed=2, n_events=n))
    assert at_drift == 10_000
    by_at = {at: (est, ids) for at, est, ids in checks}
    est, ids = by_at[at_drift]  # the last window before the drift
    acc, auc = realised(ids, served, truth)
    assert est.accuracy_lower <= acc <= est.accuracy_upper
    est, ids = by_at[at_drift + 2000]  # the first whole window after it
    acc, auc = realised(ids, served, truth)
    assert acc < est.accuracy_lower, (acc, est)


def test_the_champions_estimate_is_exported_and_a_former_champions_removed():
    from prometheus_client import REGISTRY

    from operators.learning import _ReportExporter

    config = LearnerConfig(label_ttl_ms=10**9, early_label_ttl_ms=0, quality_window=50)
    learner = OnlineLearner("ex_a", linear_model.LogisticRegression(), config,
                            challengers={"ex_b": linear_model.LogisticRegression()},
                            wall_clock=None)
    exporter = _ReportExporter("ex_a")
    rng = random.Random(4)
    out: list = []
    for i in range(300):
        x = rng.gauss(0, 1)
        learner.on_event(FeaturedEvent(Event(f"e{i}", "k", 1000 + i, {}), {"x": x}), out)
        learner.on_label(Label(f"e{i}", "k", 1000 + i, x > 0), out)
    est = learner.estimate()
    exporter.export(learner.take_report())

    def sample(name: str, model: str) -> float | None:
        return REGISTRY.get_sample_value(f"undertow_model_estimated_{name}_ratio",
                                         {"model": model})

    assert [sample(n, "ex_a") for n in est.values()] == list(est.values().values())
    assert sample("accuracy", "ex_b") is None
    learner.promote("ex_b")
    exporter.export(learner.take_report())
    assert all(sample(n, "ex_a") is None for n in est.values())
