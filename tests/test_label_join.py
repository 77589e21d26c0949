"""The label join on its own: one deadline map for pending predictions, early labels and finished
ids, each judged on its own clock; opaque label values; the capacity cap; the pending store."""

from __future__ import annotations

import pickle

import pytest

from undertow.label_join import (
    EARLY,
    FINISHED,
    PENDING,
    DeadlineMap,
    LabelJoin,
    Matched,
    PendingPrediction,
    Unusable,
)
from undertow.schema import Label


def lb(i: int | str, ts: int, y: object = True, partition: int = 0) -> Label:
    return Label(f"e{i}", "k", ts, y, raw=f"label-{i}".encode(), topic="labels",
                 partition=partition, offset=0)


def serve(join: LabelJoin, i: int | str, ts: int, partition: int = 0) -> list:
    """An event as the learner hands it to the join: advance, then keep what was served."""
    due: list = []
    join.advance(partition, ts, due)
    assert not join.is_served(f"e{i}")
    join.serve(f"e{i}", "k", {"i": float(ts)}, {"m": 0.5}, ts, due)
    return due


def label(join: LabelJoin, *labels: Label) -> list:
    due: list = []
    for x in labels:
        join.on_label(x, due)
    return due


def summary(due: list) -> list[tuple]:
    out: list[tuple] = []
    for r in due:
        if type(r) is Matched:
            out.append(("learn", r.pending.event_id, r.label.value))
        else:
            assert type(r) is Unusable
            out.append((r.reason, r.label.event_id))
    return out


# -- the one deadline map -------------------------------------------------------------------------

def test_deadline_map_expires_entries_of_every_state_in_deadline_order():
    dm = DeadlineMap(3)
    dm.put("p1", PENDING, 40)
    dm.put("e1", EARLY, 15, "early value")
    dm.put("f1", FINISHED, 30, "finished value")
    dm.put("p2", PENDING, 10)
    dm.put("e2", EARLY, 50)
    dm.put("p2", FINISHED, 20)  # p2 finished: its pending deadline no longer counts
    dm.put("x", PENDING, 5)
    assert dm.pop("x") == (PENDING, 5, None)
    assert (dm.count(PENDING), dm.count(EARLY), dm.count(FINISHED)) == (1, 2, 2)
    horizons = (100, 100, 100)
    got = []
    while (due := dm.pop_due(horizons)) is not None:
        got.append(due)
    assert got == [
        ("e1", EARLY, 15, "early value"),
        ("p2", FINISHED, 20, None),
        ("f1", FINISHED, 30, "finished value"),
        ("p1", PENDING, 40, None),
        ("e2", EARLY, 50, None),
    ]
    assert len(dm) == 0 and (dm.count(PENDING), dm.count(EARLY), dm.count(FINISHED)) == (0, 0, 0)


def test_deadline_map_judges_each_state_on_its_own_horizon():
    dm = DeadlineMap(3)
    for key, state, deadline in [("p", PENDING, 10), ("e", EARLY, 20), ("f", FINISHED, 30)]:
        dm.put(key, state, deadline)
    # Pending not due (its clock is behind), early due, finished has no clock yet.
    assert dm.pop_due((5, 21, None)) == ("e", EARLY, 20, None)
    assert dm.pop_due((5, 21, None)) is None
    assert dm.pop_due((11, None, 31)) == ("p", PENDING, 10, None)
    assert dm.pop_due((11, None, 31)) == ("f", FINISHED, 30, None)
    assert dm.pop_due((1000, 1000, 1000)) is None
    # A deadline equal to the horizon is not passed yet.
    dm.put("q", PENDING, 50)
    assert dm.pop_due((50, 50, 50)) is None and dm.pop_oldest(PENDING) == ("q", PENDING, 50, None)


def test_deadline_map_views_and_clear_keep_arrival_order():
    dm = DeadlineMap(3)
    dm.put("b", EARLY, 9, "vb")
    dm.put("a", EARLY, 1, "va")
    dm.put("c", PENDING, 5)
    early = dm.ids(EARLY)
    assert list(early) == ["b", "a"] and "a" in early and "c" not in early and len(early) == 2
    assert dm.clear(EARLY) == [("b", "vb"), ("a", "va")]
    assert not early and list(dm.ids(PENDING)) == ["c"]
    assert dm.pop_due((100, 100, 100)) == ("c", PENDING, 5, None)


# -- the join: one map, three kinds, in deadline order ------------------------------------------

def test_wall_clock_join_expires_pending_early_and_finished_in_deadline_order():
    now = [0.0]
    join = LabelJoin(label_ttl_ms=1000, early_label_ttl_ms=500, ttl_clock=lambda: now[0])
    assert serve(join, 1, ts=7) == []  # pending e1: deadline 1000 (wall ms)
    now[0] = 0.1
    assert label(join, lb("x", 3)) == []  # early x: deadline 600
    now[0] = 0.2
    serve(join, 2, ts=8)  # pending e2: deadline 1200
    now[0] = 0.3
    assert summary(label(join, lb(2, 8))) == [("learn", "e2", True)]  # finished e2: 1300
    assert set(join.pending) == {"e1"} and set(join.early) == {"ex"}
    assert set(join.finished) == {"e2"}

    def tick(ms: int) -> list:
        now[0] = (ms + 0.5) / 1000  # the join reads whole milliseconds
        due: list = []
        join.on_wall_clock(due)
        return summary(due)

    assert tick(600) == []  # 600 is not passed at 600
    assert tick(601) == [("unknown_event", "ex")]
    assert not join.early and join.counts.early_expired == 1
    assert tick(1001) == []
    assert set(join.pending) == set() and set(join.finished) == {"e1", "e2"}
    assert join.counts.pending_expired == {"ttl": 1, "capacity": 0}
    assert tick(1301) == [] and set(join.finished) == {"e1"}  # e2 forgotten at 1300
    # e1 expired at 1000 and is remembered for one TTL more: a label now is too late.
    assert summary(label(join, lb(1, 8))) == [("expired_event", "e1")]
    assert tick(2001) == [] and set(join.finished) == set() and len(join.deadlines) == 0
    assert summary(label(join, lb(1, 8))) == []  # unknown now: held as an early label
    assert set(join.early) == {"e1"}


def test_event_time_join_judges_each_kind_on_its_own_clock():
    join = LabelJoin(label_ttl_ms=1000, early_label_ttl_ms=100, event_partitions=2)
    serve(join, 1, ts=0)
    serve(join, 2, ts=50)
    assert summary(label(join, lb(2, 50))) == [("learn", "e2", True)]  # finished until 1050
    assert summary(label(join, lb("early", 40))) == []  # early until 140, by the event watermark
    # Partition 0 runs ahead: the event clock passes e1's deadline, but the label watermark
    # (50) holds it; the event watermark waits for partition 1, so the early label waits too.
    assert summary(serve(join, 3, ts=2000)) == []
    assert "e1" in join.pending and "eearly" in join.early
    assert "e2" not in join.finished  # the event clock (2000) passed 1050: forgotten
    # Partition 1 speaks: the event watermark is 500, past the early label's 140.
    assert summary(serve(join, 4, ts=500, partition=1)) == [("unknown_event", "eearly")]
    assert "e1" in join.pending
    # The label watermark passes 1000: e1 expires.
    assert summary(label(join, lb("z", 1500))) == []
    assert "e1" not in join.pending and "e1" in join.finished
    assert join.counts.pending_expired["ttl"] == 1 and join.counts.early_expired == 1


def test_labels_wait_for_their_time_and_ties_go_to_the_label():
    join = LabelJoin(label_ttl_ms=10_000, early_label_ttl_ms=0)
    serve(join, 1, ts=1000)
    assert label(join, lb(1, 3000)) == [] and join.waiting_labels == 1
    assert serve(join, 2, ts=2999) == []
    due = serve(join, 3, ts=3000)  # released by the advance, before e3 is kept
    assert summary(due) == [("learn", "e1", True)] and join.waiting_labels == 0


def test_label_values_are_opaque_compared_only_for_equality():
    join = LabelJoin(label_ttl_ms=10_000, early_label_ttl_ms=10_000)
    serve(join, 1, ts=0)
    got = summary(label(join, lb(1, 0, "cat"), lb(1, 0, "cat"), lb(1, 0, "dog")))
    assert got == [("learn", "e1", "cat"), ("duplicate_label", "e1"), ("conflicting_label", "e1")]
    # The same for a label waiting for its event, with numbers.
    got = summary(label(join, lb(2, 0, 3.5), lb(2, 0, 3.5), lb(2, 0, 4)))
    assert got == [("duplicate_label", "e2"), ("conflicting_label", "e2")]
    assert summary(serve(join, 2, ts=0)) == [("learn", "e2", 3.5)]
    details = [r.detail for r in label(join, lb(1, 0, "bird"))]
    assert details == ["event was already learned with 'cat'"]


def test_matched_carries_exactly_what_was_served():
    join = LabelJoin(label_ttl_ms=10_000, early_label_ttl_ms=0)
    features, scores = {"a": 1.0}, {"champ": 0.25, "shadow": 0.75}
    due: list = []
    join.advance(0, 100, due)
    join.serve("e1", "key-1", features, scores, 100, due)
    (m,) = label(join, lb(1, 100))
    assert type(m) is Matched
    assert m.pending == PendingPrediction("e1", "key-1", features, scores, 100)
    assert m.pending.features is features and m.pending.scores is scores


def test_capacity_expires_the_earliest_deadline_first():
    join = LabelJoin(label_ttl_ms=1000, early_label_ttl_ms=0, max_pending=2)
    serve(join, 1, ts=500)
    serve(join, 2, ts=100)  # out of order: the earliest deadline (1100)
    serve(join, 3, ts=600)
    assert set(join.pending) == {"e1", "e3"}
    assert join.counts.pending_expired == {"ttl": 0, "capacity": 1}
    assert summary(label(join, lb(2, 600))) == [("expired_event", "e2")]


def test_an_early_label_whose_event_is_served_at_capacity_finds_it_expired():
    join = LabelJoin(label_ttl_ms=1000, early_label_ttl_ms=10_000, max_pending=1)
    serve(join, 1, ts=500)
    assert label(join, lb(2, 500)) == []
    # e2's deadline (1000 + 0) is the earliest: it is the one over capacity.
    due: list = []
    join.advance(0, 0, due)
    join.serve("e2", "k", {}, {}, 0, due)
    assert summary(due) == [("expired_event", "e2")]
    assert set(join.pending) == {"e1"} and join.counts.early_labels == 1


def test_end_of_input_releases_held_labels_in_time_order_then_expires_early_labels():
    join = LabelJoin(label_ttl_ms=10_000, early_label_ttl_ms=10_000)
    serve(join, 1, ts=0)
    serve(join, 2, ts=0)
    label(join, lb(2, 900), lb("b", 0), lb(1, 500), lb("a", 0))
    due: list = []
    join.on_end(due)
    assert summary(due) == [("learn", "e1", True), ("learn", "e2", True),
                            ("unknown_event", "eb"), ("unknown_event", "ea")]
    assert not join.early and join.counts.early_expired == 2


def test_serving_a_served_event_is_a_programming_error():
    join = LabelJoin(label_ttl_ms=1000, early_label_ttl_ms=0)
    serve(join, 1, ts=0)
    assert join.is_served("e1")
    with pytest.raises(ValueError, match="already served"):
        join.serve("e1", "k", {}, {}, 0, [])


def test_pending_predictions_live_in_the_given_store():
    class Store(dict):
        writes = 0

        def __setitem__(self, key, value):
            type(self).writes += 1
            super().__setitem__(key, value)

    store = Store()
    join = LabelJoin(label_ttl_ms=1000, early_label_ttl_ms=0, pending=store)
    serve(join, 1, ts=0)
    serve(join, 2, ts=0)
    assert join.pending is store and set(store) == {"e1", "e2"} and Store.writes == 2
    label(join, lb(1, 0))
    assert set(store) == {"e2"}


def test_join_survives_a_pickle_round_trip_mid_stream():
    def script(join: LabelJoin, part: int) -> list:
        steps = [
            lambda: serve(join, 1, ts=0),
            lambda: label(join, lb(1, 300), lb("early", 100)),
            lambda: serve(join, 2, ts=200),
            lambda: serve(join, 3, ts=400),
            lambda: label(join, lb(3, 400), lb(2, 5000)),
            lambda: serve(join, 4, ts=5000),
        ]
        half = steps[:3] if part == 0 else steps[3:]
        return [summary(s()) for s in half]

    whole = LabelJoin(label_ttl_ms=1000, early_label_ttl_ms=50)
    expected = script(whole, 0) + script(whole, 1)
    join = LabelJoin(label_ttl_ms=1000, early_label_ttl_ms=50)
    first = script(join, 0)
    join = pickle.loads(pickle.dumps(join))
    assert first + script(join, 1) == expected
    assert expected == [[], [], [("unknown_event", "eearly")], [("learn", "e1", True)],
                        [("learn", "e3", True)], [("expired_event", "e2")]]
