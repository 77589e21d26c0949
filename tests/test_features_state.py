"""The feature state (undertow/features/state.py) against a brute-force oracle (Hypothesis),
with one partition and with partitions lagging beyond the idle limit; eviction, pickling and the
shipped specs."""

from __future__ import annotations

import math
import pickle
from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from undertow.features import (
    FeatureSpec,
    GroupState,
    Rolling,
    SpecState,
    Windowed,
    load_spec,
    spec_names,
)
from undertow.watermark import Watermark

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
LONGEST = SPEC.groups()[0].longest_ms  # 100: the eviction horizon is watermark - 50 - 100
#: Aggregations the oracle checks exactly; the others to 1e-9 relative (sums of floats).
EXACT = {"count", "min", "max", "last", "since_prev", "distinct"}
H, M = 3_600_000, 60_000

values = st.integers(-5, 5).map(float)  # small integers: repeated values and ties
records = st.lists(
    st.tuples(
        st.sampled_from(["u1", "u2", "u3"]),  # a few users ...
        st.sampled_from(["a", "b"]),          # ... and pages: the key is the pair
        st.integers(-60, 40),                 # time step: jumps back (out of order, late) or gaps
        values,
    ),
    max_size=120,
)
#: Several partitions, each on its own clock: some start (or fall) far behind the others, by more
#: than the idle limit and the longest window; long gaps; entities of their own on each partition
#: ("n*", as a Kafka partition keyed by entity has) beside entities every partition shares ("u*",
#: as a later step sees from many upstream paths).
IDLE = 80
lagging = st.tuples(
    st.lists(st.integers(0, 400), min_size=3, max_size=3),  # each partition's start, behind 1000
    st.sampled_from([None, 2, 3]),                           # partitions the watermark waits for
    # Lengths drawn uniformly (a plain list strategy draws mostly short ones): a lag builds up.
    st.integers(0, 150).flatmap(lambda n: st.lists(
        st.tuples(
            st.sampled_from([0, 0, 1, 2]),
            st.sampled_from(["u1", "u2", "n1", "n2", "n3"]),
            st.sampled_from(["a", "b"]),
            st.one_of(st.integers(-60, 40), st.integers(-60, 40), st.integers(100, 500)),  # gaps
            values,
        ),
        min_size=n, max_size=n,
    )),
)


def close(agg: str, a: float, b: float) -> bool:
    if agg in EXACT:
        return a == b
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
    """Recompute one rolling feature from the records of the key it can read (``hist``, the
    event's own record included)."""
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


def check_against_oracle(stream: list[tuple[int, str, str, int, float]], *, idle: int,
                         expected: int | None = None) -> GroupState:
    """Feed ``(partition, user, page, ts, x)`` records to a GroupState and check everything it
    serves, emits and keeps against a recomputation from the documented rules
    (undertow/features/__init__.py), with a brute-force watermark."""
    state = GroupState(SPEC.groups()[0], allowed_lateness_ms=LATENESS, idle_ms=idle,
                       partitions=expected)
    history: dict[tuple[str, str], list[tuple[int, int, float]]] = defaultdict(list)
    accepted: list[tuple[tuple[str, str], int, int, float, int | None]] = []
    newest: dict[int, int] = {}
    wm: int | None = None
    late = behind = 0
    windows: list = []
    for i, (part, user, page, t, x) in enumerate(stream):
        fields = {"user": user, "page": page, "x": x}
        emitted = len(windows)
        got = state.update(fields, t, part, windows)
        closed = None if wm is None else wm - LATENESS
        horizon = None if closed is None else closed - LONGEST
        # Late: behind the watermark by more than the lateness, and behind its own partition too.
        if closed is not None and t < closed and part in newest and t < newest[part] - LATENESS:
            assert got is None, (i, t, wm, newest)
            assert len(windows) == emitted  # a late record moves nothing
            late += 1
            continue
        key = (user, page)
        # What it can read: its key's records that arrived before it and are newer than the
        # eviction horizon as it arrives (all of its window, unless it is behind the watermark).
        kept = [r for r in history[key] if horizon is None or r[0] > horizon]
        assert got is not None, (i, t, wm, newest)
        for f in ROLLING:
            want = oracle_rolling(f, [*kept, (t, i, x)], t, x, i)
            assert close(f.agg, got[f.name], want), (i, f.name, got[f.name], want)
        kept_it = horizon is None or t > horizon
        behind += not kept_it
        history[key].append((t, i, x))
        accepted.append((key, t, i, x, closed))
        # The watermark: the least newest time over the partitions not more than idle behind the
        # newest, once the expected partitions have all delivered; it never goes back.
        newest[part] = max(newest.get(part, t), t)
        if expected is None or len(newest) >= expected:
            top = max(newest.values())
            low = min(v for v in newest.values() if v >= top - idle)
            wm = low if wm is None else max(wm, low)
        for a in windows[emitted:]:  # closed by the watermark, never early
            assert wm is not None and a.end <= wm - LATENESS, (i, a, wm)
        # The state stays consistent and bounded: no empty entity, the counters agree, the
        # front entity (the idlest) and the one just touched hold nothing behind the horizon.
        assert all(len(h) for h in state.entities.values())
        assert state.records == sum(len(h) for h in state.entities.values())
        if wm is not None and state.entities:
            now = wm - LATENESS - LONGEST
            assert next(iter(state.entities.values())).ts[-1] > now
            entity = state.entities.get("|".join(key))
            assert not kept_it or entity is None or entity.ts[0] > now
        for ent, h in state.entities.items():  # it keeps only records it accepted
            assert set(h.ts) <= {r[0] for r in history[tuple(ent.split("|"))]}
    assert (state.late, state.behind_horizon) == (late, behind)
    state.flush(windows)
    # Every window is emitted once (while running, or at the end), with the oracle's aggregate of
    # the accepted records that arrived while it was open; a record that came after its window
    # had closed is a counted miss, never silently lost.
    got_w = {(a.feature, a.key, a.start): a for a in windows}
    assert len(got_w) == len(windows)
    want_keys = set()
    misses = 0
    for w in WINDOWED:
        by: dict[tuple[str, int], list] = defaultdict(list)
        for key, ts, i, x, closed in accepted:
            for k in range((ts - w.size_ms) // w.hop_ms + 1, ts // w.hop_ms + 1):
                start = k * w.hop_ms
                if closed is not None and start + w.size_ms <= closed:
                    misses += 1
                else:
                    by[("|".join(key), start)].append((ts, i, x))
        for (ent, start), recs in by.items():
            want_keys.add((w.name, ent, start))
            a = got_w[(w.name, ent, start)]
            assert (a.end, a.count) == (start + w.size_ms, len(recs))
            assert close(w.agg, a.value, oracle_window(w, recs)), (w.name, a, recs)
    assert set(got_w) == want_keys
    assert state.window_misses == misses
    return state


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records)
def test_every_feature_equals_the_brute_force_oracle(stream):
    t = 1000
    timed = []
    for user, page, step, x in stream:
        t += step
        timed.append((0, user, page, t, x))
    check_against_oracle(timed, idle=10**9)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lagging)
def test_partitions_lagging_beyond_the_idle_limit_keep_the_state_exact_and_consistent(case):
    """What crashed the dataflow at 3x capacity (issue 13): a partition more than the idle limit
    behind the others, new entities on it, long gaps. Every record is served by the documented
    rules, and the state stays consistent whatever the order."""
    starts, expected, stream = case
    clock = {p: 1000 - lag for p, lag in enumerate(starts)}
    timed = []
    for part, user, page, step, x in stream:
        clock[part] += step
        timed.append((part, f"{user}@{part}" if user.startswith("n") else user, page,
                      clock[part], x))
    check_against_oracle(timed, idle=IDLE, expected=expected)


def one_hour_count() -> GroupState:
    g = FeatureSpec("r", rolling=(Rolling("n", ("k",), "count", H),),
                    allowed_lateness_ms=5 * M).groups()[0]
    return GroupState(g, allowed_lateness_ms=5 * M, idle_ms=H)


def test_a_new_entity_of_a_partition_lagging_beyond_the_idle_limit_is_not_kept():
    """Issue 13's crash: IndexError in GroupState._evict on an entity left with no records."""
    state = one_hour_count()
    out: list = []
    assert state.update({"k": "a"}, 0, 0, out) == state.update({"k": "b"}, 0, 1, out) == {"n": 1}
    # Partition 1 is now 3 h behind: idle, the watermark is 3 h; the horizon 3h - 5m - 1h.
    assert state.update({"k": "a"}, 3 * H, 0, out) == {"n": 1}
    assert list(state.entities) == ["a"] and state.evicted_entities == 1
    # A new entity on the lagging partition: not late (its own partition is not behind), behind
    # the horizon: served over itself alone, twice (nothing of it is kept), and not kept.
    assert state.update({"k": "c"}, 10 * M, 1, out) == {"n": 1}
    assert state.update({"k": "c"}, 20 * M, 1, out) == {"n": 1}
    assert list(state.entities) == ["a"] and state.behind_horizon == 2
    assert state.update({"k": "d"}, 3 * H + 1, 0, out) == {"n": 1}
    # The watermark moves on: "a" reaches the front and is evicted (here the old code crashed on
    # the empty "c" behind it).
    assert state.update({"k": "d"}, 5 * H, 0, out) == {"n": 1}
    assert list(state.entities) == ["d"] and state.entities["d"].ts == [5 * H]
    assert (state.records, state.evicted_entities, state.late) == (1, 2, 0)
    # The lagging partition still has its own lateness: 10 min behind its own newest is late.
    assert state.update({"k": "c"}, 10 * M - 1, 1, out) is None and state.late == 1


def test_an_entity_the_watermark_jumps_past_is_dropped_not_left_empty():
    """The watermark waits for both partitions; when the second delivers, far behind, it jumps
    past the record just kept: the entity left with no records is dropped at once."""
    state = one_hour_count()
    state.wm = Watermark(H, 2)  # as a step built with partitions=2
    out: list = []
    for t in (0, H, 2 * H, 3 * H):
        state.update({"k": "a"}, t, 0, out)
    assert state.wm.value is None and state.entities["a"].ts == [0, H, 2 * H, 3 * H]
    assert state.update({"k": "b"}, 0, 1, out) == {"n": 1}  # no watermark yet: kept, served
    assert state.wm.value == 3 * H  # partition 1 is 3 h behind: idle
    # "b" is dropped; "a" was not touched, so its records behind the horizon wait for that.
    assert list(state.entities) == ["a"] and (state.records, state.evicted_entities) == (4, 1)
    assert state.update({"k": "a"}, 3 * H + 1, 0, out) == {"n": 2}
    assert state.entities["a"].ts == [2 * H, 3 * H, 3 * H + 1] and state.records == 3
    state.update({"k": "x"}, 5 * H, 0, out)
    assert list(state.entities) == ["x"] and state.records == 1


def test_the_spec_state_serves_a_lagging_partition_without_crashing():
    """The same through SpecState (every group of the fraud spec), the shape the reference and
    bulk jobs use."""
    state = SpecState(load_spec("streams/fraud.toml"))
    ev = {"merchant_id": "m", "amount": 5.0, "channel": "pos"}
    for i in range(6):
        state.update({**ev, "card_id": f"c{i}"}, i * H, 0)
        if i == 0:
            state.update({**ev, "card_id": "lag"}, 0, 1)
        else:  # new cards on partition 1, hours behind
            got = state.update({**ev, "card_id": f"new{i}"}, i * M, 1)
            assert got is not None and got["card_count_1h"] == 1
    assert all(len(h) for g in state.groups for h in g.entities.values())
    # The watermark is 5 h: the hour before it is kept; the cards of partition 1 from 2 h on
    # were behind the horizon (the first, at 1 min, was not: partition 1 was not idle yet).
    assert [list(g.entities) for g in state.groups] == [["c4", "c5"], ["m"]]
    assert [g.behind_horizon for g in state.groups] == [4, 4]


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
    wm = Watermark(idle_ms=1000, expected=2)
    assert [wm.update(0, 100), wm.update(1, 10), wm.update(0, 500)] == [False, True, False]
    assert wm.value == 10
    assert wm.update(0, 1011) and wm.value == 1011  # partition 1 is 1001 ms behind: idle, ignored
    assert not wm.update(1, 20) and wm.value == 1011  # it never goes back
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
    state = SpecState(load_spec("streams/fraud.toml"))
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
    assert list(got[0]) == list(spec_names(load_spec("streams/fraud.toml")))


def test_the_clicks_spec_runs_through_the_same_dataflow():
    """A second, unrelated stream: the same graph and operators serve what the plain loop
    serves, and emit the closed windows the spec computes in one process."""
    import orjson
    from bytewax.testing import TestingSink, TestingSource, run_main

    from connectors.kafka import KafkaRecord
    from connectors.settings import load_settings
    from dataflows.stream import build_flow, shipped
    from harness.clickstream import generate_clicks
    from undertow.models import make_model
    from undertow.reference import run_reference

    events, labels = generate_clicks(seed=2, n_users=60, n_sessions=400)
    stream = shipped("clicks")
    spec = stream.features
    assert spec == load_spec("streams/clicks.toml")
    preds: list = []
    windows: list = []
    flow = build_flow(load_settings({}), stream, sources={
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
    spec = FeatureSpec("p", rolling=ROLLING, windowed=(
        *WINDOWED, Windowed("sketch", KEY, "distinct", 10**6, 10**6, "x", distinct_bound=3)),
        allowed_lateness_ms=LATENESS)
    stream = [({"user": f"u{i % 7}", "page": "ab"[i % 2], "x": float(i % 11)},
               1000 + 13 * i - (40 if i % 5 == 0 else 0)) for i in range(400)]
    a = GroupState(spec.groups()[0], allowed_lateness_ms=LATENESS, idle_ms=10**9)
    out_a: list = []
    for fields, ts in stream[:200]:
        a.update(fields, ts, 0, out_a)
    # the sketch regime is pickled too
    assert any(getattr(p, "hll", None) is not None for p in a.panes.values())
    b = pickle.loads(pickle.dumps(a))
    out_b = list(out_a)
    for fields, ts in stream[200:]:
        assert a.update(fields, ts, 0, out_a) == b.update(fields, ts, 0, out_b)
    a.flush(out_a)
    b.flush(out_b)
    assert out_a == out_b and len(out_a) > 50
    assert (a.records, len(a), a.late) == (b.records, len(b), b.late)
