"""The declarative feature engine against a brute-force oracle (Hypothesis), and its rules."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from undertow.featurespec import (
    FeatureSpec,
    GroupState,
    Rolling,
    SpecError,
    SpecState,
    StreamWatermark,
    Windowed,
    load_spec,
    spec_from_dict,
    spec_names,
)

LATENESS = 50
KEY = ("user", "page")
ROLLING = tuple(
    Rolling(f"{agg}_{w}", KEY, agg, w, None if agg in ("count", "since_prev") else "x",
            half_life_ms=40 if agg == "ewm" else None, default=-1.0)
    for w in (30, 100)
    for agg in ("count", "sum", "mean", "var", "std", "min", "max", "last", "since_prev",
                "distinct", "ewm", "ratio")
)
WINDOWED = (
    Windowed("t_sum", KEY, "sum", 60, 60, "x"),
    Windowed("h_count", KEY, "count", 60, 20, None),
    Windowed("h_mean", KEY, "mean", 60, 20, "x"),
    Windowed("h_var", KEY, "var", 60, 20, "x"),
    Windowed("h_std", KEY, "std", 60, 20, "x"),
    Windowed("t_min", KEY, "min", 60, 60, "x"),
    Windowed("t_max", KEY, "max", 60, 60, "x"),
    Windowed("t_last", KEY, "last", 60, 60, "x"),
    Windowed("h_distinct", KEY, "distinct", 60, 20, "x", distinct_bound=10_000),
)
SPEC = FeatureSpec("oracle", rolling=ROLLING, windowed=WINDOWED, allowed_lateness_ms=LATENESS)

records = st.lists(
    st.tuples(
        st.sampled_from(["u1", "u2", "u3"]),  # a few users ...
        st.sampled_from(["a", "b"]),          # ... and pages: the key is the pair
        st.integers(-60, 40),                 # time step: jumps back (out of order, late) or gaps
        st.integers(-5, 5).map(float),        # small integers: repeated values and ties
    ),
    max_size=120,
)


def close(a: float, b: float) -> bool:
    return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


SHARED = ("count", "sum", "mean", "var", "std", "min", "max", "distinct")


def shared(agg: str, xs: list[float]) -> float:
    """The aggregations rolling and windowed features define alike, from all the values."""
    n = len(xs)
    if agg == "count":
        return float(n)
    if agg == "sum":
        return math.fsum(xs)
    if agg == "mean":
        return math.fsum(xs) / n
    if agg in ("var", "std"):
        m = math.fsum(xs) / n
        var = math.fsum((v - m) ** 2 for v in xs) / (n - 1) if n > 1 else 0.0
        return math.sqrt(var) if agg == "std" else var
    if agg == "min":
        return min(xs)
    if agg == "max":
        return max(xs)
    return float(len(set(xs)))


def oracle_rolling(f: Rolling, hist: list[tuple[int, int, float]], t: int, x: float,
                   me: int) -> float:
    """Recompute one rolling feature from the full history of the key (all arrived records)."""
    # Sorted by (ts, arrival); the event's own position is after every equal-ts earlier arrival.
    win = sorted((r for r in hist if t - f.window_ms < r[0] <= t), key=lambda r: (r[0], r[1]))
    xs = [r[2] for r in win]
    pos = [r[1] for r in win].index(me)
    prev = win[pos - 1] if pos > 0 else None
    if f.agg in SHARED:
        return shared(f.agg, xs)
    if f.agg == "last":
        return prev[2] if prev else f.default
    if f.agg == "since_prev":
        return min(t - prev[0], f.window_ms) / 1000 if prev else f.window_ms / 1000
    if f.agg == "ratio":
        mean = math.fsum(xs) / len(xs)
        return x / mean if mean else 1.0
    ws = [2 ** (-(t - r[0]) / f.half_life_ms) for r in win]
    return math.fsum(w * v for w, v in zip(ws, xs, strict=True)) / math.fsum(ws)


def oracle_window(w: Windowed, recs: list[tuple[int, int, float]]) -> float:
    if w.agg == "last":
        return max(recs, key=lambda r: (r[0], r[1]))[2]
    return shared(w.agg, [r[2] for r in recs])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records)
def test_every_feature_equals_the_brute_force_oracle(stream):
    state = GroupState(SPEC.groups()[0], allowed_lateness_ms=LATENESS, idle_ms=10**9)
    history: dict[tuple[str, str], list[tuple[int, int, float]]] = defaultdict(list)
    accepted: list[tuple[tuple[str, str], int, int, float]] = []
    windows = []
    t, newest = 1000, None
    for i, (user, page, step, x) in enumerate(stream):
        t += step
        fields = {"user": user, "page": page, "x": x}
        got = state.update(fields, t, 0, windows)
        # The oracle's lateness: older than the newest accepted time minus the lateness.
        if newest is not None and t < newest - LATENESS:
            assert got is None, (i, t, newest)
            continue
        newest = t if newest is None else max(newest, t)
        key = (user, page)
        history[key].append((t, i, x))
        accepted.append((key, t, i, x))
        for f in ROLLING:
            want = oracle_rolling(f, history[key], t, x, i)
            assert close(got[f.name], want), (f.name, got[f.name], want)
    # State is bounded: nothing older than the horizon stays, and the counters agree.
    assert state.records == sum(len(h) for h in state.entities.values())
    before_flush = list(windows)
    state.flush(windows)
    # Every window emitted (while running, or at the end) has the oracle's aggregate of all the
    # accepted records in it: a closed window never missed a record that was not late.
    got_w = {(a.feature, a.key, a.start): a for a in windows}
    assert len(got_w) == len(windows)
    want_keys = set()
    for w in WINDOWED:
        by: dict[tuple[str, int], list] = defaultdict(list)
        for key, ts, i, x in accepted:
            for k in range((ts - w.size_ms) // w.hop_ms + 1, ts // w.hop_ms + 1):
                by[("|".join(key), k * w.hop_ms)].append((ts, i, x))
        for (ent, start), recs in by.items():
            want_keys.add((w.name, ent, start))
            a = got_w[(w.name, ent, start)]
            assert (a.end, a.count) == (start + w.size_ms, len(recs))
            assert close(a.value, oracle_window(w, recs)), (w.name, a, recs)
    assert set(got_w) == want_keys
    if newest is not None:
        for a in before_flush:  # closed by the watermark, never early
            assert a.end <= newest - LATENESS


def test_distinct_is_exact_up_to_the_bound_then_a_sketch():
    g = FeatureSpec("d", windowed=(Windowed("d", ("k",), "distinct", 10**6, 10**6, "v",
                                            distinct_bound=100),)).groups()[0]
    out = []
    state = GroupState(g, allowed_lateness_ms=0, idle_ms=10**9)
    for i in range(100):
        state.update({"k": "a", "v": i % 100}, i, 0, out)
        state.update({"k": "b", "v": i}, i, 0, out)
    for i in range(100, 5000):
        state.update({"k": "b", "v": i}, i, 0, out)
    state.flush(out)
    got = {a.key: a.value for a in out}
    assert got["a"] == 100.0  # within the bound: exact
    assert abs(got["b"] - 5000) / 5000 < 0.05  # beyond it: HyperLogLog, p=12 (~1.6 % error)


def test_the_watermark_waits_for_the_slowest_partition_but_not_an_idle_one():
    wm = StreamWatermark(idle_ms=1000, expected=2)
    assert [wm.update(0, 100), wm.update(1, 10), wm.update(0, 500)] == [None, 10, 10]
    assert wm.update(0, 1011) == 1011  # partition 1 is 1001 ms behind: idle, ignored
    assert wm.update(1, 20) == 1011  # it never goes back
    g = FeatureSpec("p", rolling=(Rolling("n", ("k",), "count", 100),),
                    allowed_lateness_ms=0).groups()[0]
    state = GroupState(g, allowed_lateness_ms=0, idle_ms=10**6, partitions=2)
    out: list = []
    assert state.update({"k": "a"}, 500, 0, out) == {"n": 1.0}
    # Partition 1 is behind partition 0, but not late: the watermark is the slowest partition.
    # It is served as of its own time: the record at 500 is not in (350, 450].
    assert state.update({"k": "a"}, 450, 1, out) == {"n": 1.0}
    assert state.update({"k": "a"}, 400, 1, out) is None  # behind its own partition's 450
    assert state.late == 1


def test_idle_entities_are_dropped_and_old_records_evicted():
    g = FeatureSpec("e", rolling=(Rolling("n", ("k",), "count", 100),),
                    allowed_lateness_ms=10).groups()[0]
    state = GroupState(g, allowed_lateness_ms=10, idle_ms=10**6)
    out: list = []
    for i in range(50):
        state.update({"k": f"idle{i}"}, i, 0, out)
    assert len(state) == 50 and state.records == 50
    for t in range(200, 400, 10):
        state.update({"k": "busy"}, t, 0, out)
    # Horizon = 390 - 100 - 10 = 280: idle keys are gone, "busy" keeps (280, 390].
    assert list(state.entities) == ["busy"]
    assert state.entities["busy"].ts == list(range(290, 400, 10))
    assert state.records == 11 and state.evicted_entities == 50


def test_the_fraud_spec_serves_its_documented_features():
    """Hand-checked values of the fraud spec for three events of one card and merchant."""
    state = SpecState(load_spec("specs/fraud.toml"))
    evs = [(0, 10.0, "pos"), (60_000, 30.0, "online"), (700_000, 20.0, "atm")]
    got = [state.update({"card_id": "c", "merchant_id": "m", "amount": a, "channel": ch}, ts)
           for ts, a, ch in evs]
    lg = math.log1p
    assert got[1] == {
        "card_count_10m": 2, "card_sum_10m": lg(40.0), "card_mean_10m": lg(20.0),
        "card_count_1h": 2, "card_sum_1h": lg(40.0), "card_mean_1h": lg(20.0),
        "card_secs_since_prev": lg(60.0), "amount_to_card_mean_1h": lg(30.0 / 20.0),
        "merchant_count_10m": 1 + 1, "amount": lg(30.0),
        "channel_pos": 0.0, "channel_online": 1.0, "channel_atm": 0.0,
    }
    # 700 s later: both earlier records left the 10 min window, not the hour.
    assert (got[2]["card_count_10m"], got[2]["card_count_1h"]) == (1, 3)
    assert got[2]["card_secs_since_prev"] == lg(640.0)
    assert got[0]["card_secs_since_prev"] == lg(3600.0)  # first event: capped at the hour
    assert list(got[0]) == list(spec_names(load_spec("specs/fraud.toml")))


def test_bad_specs_name_the_feature():
    base = {"name": "s", "rolling": [{"name": "f", "key": "k", "agg": "sum", "window": "1m",
                                      "field": "x"}]}
    spec_from_dict(base)
    cases = [
        ({"agg": "median"}, "feature 'f': unknown rolling agg 'median'"),
        ({"window": "ten minutes"}, "feature 'f': window: 'ten minutes' is not a duration"),
        ({"field": None}, "feature 'f': agg 'sum' needs a field"),
        ({"agg": "ewm"}, "feature 'f': agg 'ewm' needs half_life > 0"),
        ({"colour": "red"}, "feature 'f': unknown settings ['colour']"),
        ({"transform": "sqrt"}, "feature 'f': unknown transform 'sqrt'"),
    ]
    for change, message in cases:
        d = {**base, "rolling": [{**base["rolling"][0], **change}]}
        if change.get("field", 1) is None:
            del d["rolling"][0]["field"]
        with pytest.raises(SpecError, match=message.replace("(", r"\(").replace("[", r"\[")):
            spec_from_dict(d)
    with pytest.raises(SpecError, match="need 0 < hop <= size"):
        spec_from_dict({"name": "s", "windowed": [{"name": "w", "key": "k", "agg": "count",
                                                   "size": "1m", "hop": "2m"}]})
    with pytest.raises(SpecError, match="feature names used twice"):
        spec_from_dict({"name": "s", "passthrough": [{"name": "a"}, {"name": "a"}]})


def test_the_clicks_spec_runs_through_the_same_dataflow():
    """A second, unrelated stream: the same graph and operators serve what the plain loop
    serves, and emit the closed windows the spec computes in one process."""
    import orjson
    from bytewax.testing import TestingSink, TestingSource, run_main

    from connectors.kafka import KafkaRecord
    from connectors.settings import load_settings
    from dataflows.clicks import CLICKS
    from dataflows.fraud import build_flow
    from harness.clickstream import generate_clicks
    from undertow.models import make_model
    from undertow.reference import run_reference

    events, labels = generate_clicks(seed=2, n_users=60, n_sessions=400)
    spec = load_spec("specs/clicks.toml")
    preds: list = []
    windows: list = []
    flow = build_flow(load_settings({}, model_name="clicks"), scenario=CLICKS, sources={
        "events": TestingSource([KafkaRecord(None, orjson.dumps(e), "clicks", 0, i)
                                 for i, e in enumerate(events)], batch_size=40),
        "labels": TestingSource([KafkaRecord(None, orjson.dumps(x), "conv", 0, i)
                                 for i, x in enumerate(labels)], batch_size=len(labels)),
    }, sinks={"predictions": TestingSink(preds), "deadletter": TestingSink([]),
              "features": TestingSink(windows)})
    run_main(flow)
    ref = run_reference(events, labels, make_model("logreg"), spec=spec, label_field="converted")
    assert {p.event_id: p.score for p in preds} == ref.scores
    assert ref.learned == len(labels)
    state = SpecState(spec)
    want: list = []
    for e in events:
        state.update(e, e["ts"], 0, want)
    for g in state.groups:
        g.flush(want)
    assert sorted(windows) == sorted(want) and len(want) > 100
    assert {w.feature for w in want} == {"page_clicks_5m_by_1m", "page_dwell_mean_5m_by_1m",
                                         "user_pages_distinct_10m"}


def test_state_survives_a_pickle_round_trip_mid_stream():
    """Bytewax snapshots the step state by pickling it: a restored state (histories, panes, the
    watermark, a distinct count already in its sketch regime) continues exactly as the original."""
    import pickle

    spec = FeatureSpec("p", rolling=ROLLING, windowed=(
        *WINDOWED, Windowed("sketch", KEY, "distinct", 10**6, 10**6, "x", distinct_bound=3)),
        allowed_lateness_ms=LATENESS)
    stream = [({"user": f"u{i % 7}", "page": "ab"[i % 2], "x": float(i % 11)},
               1000 + 13 * i - (40 if i % 5 == 0 else 0)) for i in range(400)]
    a = GroupState(spec.groups()[0], allowed_lateness_ms=LATENESS, idle_ms=10**9)
    out_a: list = []
    for fields, ts in stream[:200]:
        a.update(fields, ts, 0, out_a)
    assert any(p.hll is not None for p in a.panes.values())  # the sketch regime is pickled too
    b = pickle.loads(pickle.dumps(a))
    out_b = list(out_a)
    for fields, ts in stream[200:]:
        assert a.update(fields, ts, 0, out_a) == b.update(fields, ts, 0, out_b)
    a.flush(out_a)
    b.flush(out_b)
    assert out_a == out_b and len(out_a) > 50
    assert (a.records, len(a), a.late) == (b.records, len(b), b.late)
