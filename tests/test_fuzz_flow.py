"""The whole fraud dataflow under fuzzed records: no record can crash it, none is lost.

Hypothesis builds event and label records from the shipped ``streams/fraud.toml`` schema and
mutates them (missing fields, wrong types, huge and non-finite numbers, lone surrogates, deep
nesting, empty values, any unicode, far-future and negative times, duplicate ids, labels for
unknown events and before their events), interleaves them in batches of any size, and runs them
through ``build_flow`` with ``run_main``. Every input record must come out accounted for: an
event as a prediction or a dead letter, a label as learned or a dead letter, and every dead
letter with its record's raw bytes and a known reason.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.kafka import KafkaRecord
from connectors.settings import load_settings
from dataflows.stream import build_flow, shipped
from undertow.schema import (
    DEAD_LETTER_REASONS,
    DeadLetter,
    Event,
    FeaturedEvent,
    Label,
    ModelSummary,
    decode_event,
)

FRAUD = shipped("fraud")
T0 = 1_700_000_000_000

def mostly(good: st.SearchStrategy[Any], odd: st.SearchStrategy[Any],
           odd_share: int = 4) -> st.SearchStrategy[Any]:
    """``good`` but one draw in ``odd_share`` from ``odd`` (``|`` would weigh every branch of
    a nested ``one_of`` alike)."""
    return st.integers(1, odd_share).flatmap(lambda n: odd if n == 1 else good)


ids = st.sampled_from([f"e{i}" for i in range(8)])  # a small pool: duplicates and unknown ids
cards = st.sampled_from(["c1", "c2", "c3"])
times = st.integers(T0, T0 + 3_600_000)
odd_text = st.text(max_size=8) | st.sampled_from(
    ["", " ", "\ud800", "a\udfffb", "\x00", "🂡" * 3, "e\u0301", "\u202e"])
odd_numbers = (st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -1e308,
                                10**30, -(10**30), 2**63, -1, 0, 5e-324, -0.0])
               | st.floats() | st.integers())
odd_times = st.sampled_from([-1, -(2**62), 0, 2**62, 10**20, 4_102_444_800_001, T0 + 10**12])


#: A value spliced in as JSON nested 3000 deep (too deep for ``json.dumps`` to write).
DEEP = "__deep__"


def nested(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return v


odd_values = st.one_of(
    st.none(), st.booleans(), odd_numbers, odd_text, st.just({}), st.just([]),
    st.dictionaries(odd_text, st.integers(), max_size=2), st.lists(st.integers(), max_size=3),
    st.sampled_from([10, 100]).map(nested), st.just(DEEP),
)


@st.composite
def event_obj(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "event_id": draw(ids),
        "card_id": draw(cards),
        "ts": draw(times),
        "merchant_id": draw(mostly(st.sampled_from(["m1", "m2"]), odd_text, 8)),
        "amount": draw(mostly(st.floats(0, 1e4), odd_numbers, 8)),
        "channel": draw(st.sampled_from(["pos", "online", "atm"])),
    }


@st.composite
def label_obj(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "event_id": draw(ids),
        "card_id": draw(cards),
        "ts": draw(times),
        "is_fraud": draw(st.sampled_from([True, False, 0, 1])),
    }


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    obj = dict(draw(base))
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1, 1, 2]))):
        what = draw(st.sampled_from(["drop", "replace", "time", "extra", "empty"]))
        name = draw(st.sampled_from(sorted(obj) or ["event_id"]))
        if what == "drop":
            obj.pop(name, None)
        elif what == "replace":
            obj[name] = draw(odd_values)
        elif what == "time":
            obj["ts"] = draw(odd_times)
        elif what == "extra":
            obj[draw(odd_text)] = draw(odd_values)
        else:
            obj[name] = ""
    return obj


def encode(obj: Any, how: str) -> bytes:
    """JSON text of ``obj``: escaped (lone surrogates as ``\\ud800``, NaN as ``NaN``) or raw
    UTF-8 with surrogates passed through (bytes that are not valid UTF-8)."""
    if how == "escaped":
        text = json.dumps(obj).encode()
    else:
        text = json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return text.replace(b'"__deep__"', b"[" * 3000 + b"1" + b"]" * 3000)


def payload(base: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    as_json = st.builds(encode, mutated(base), st.sampled_from(["escaped", "raw"]))
    broken = st.one_of(
        st.binary(max_size=20),
        as_json.flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n])),  # truncated
        st.sampled_from([b"", b"null", b"[]", b"1", b'"x"', b"{}", b"[" * 5000]),
    )
    return mostly(as_json, broken, 6)


def records(topic: str, values: list[bytes], keys: list[bytes | None]) -> list[KafkaRecord]:
    return [KafkaRecord(k, v, topic, i % 2, i) for i, (v, k) in enumerate(zip(values, keys))]


record_keys = st.none() | st.binary(max_size=4) | st.just(b"\xff\xfe")


def run(events: list[KafkaRecord], labels: list[KafkaRecord], event_batch: int,
        label_batch: int) -> tuple[list[Any], list[DeadLetter], list[ModelSummary]]:
    preds: list[Any] = []
    dead: list[DeadLetter] = []
    summaries: list[ModelSummary] = []
    flow = build_flow(
        load_settings({}), FRAUD,
        sources={"events": TestingSource(events, batch_size=event_batch),
                 "labels": TestingSource(labels, batch_size=label_batch)},
        sinks={"predictions": TestingSink(preds), "deadletter": TestingSink(dead),
               "summaries": TestingSink(summaries)},
    )
    run_main(flow)
    return preds, dead, summaries


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    event_values=st.lists(payload(event_obj()), max_size=25),
    label_values=st.lists(payload(label_obj()), max_size=15),
    keys=st.lists(record_keys, min_size=40, max_size=40),
    event_batch=st.integers(1, 30),
    label_batch=st.integers(1, 20),
)
def test_every_record_is_accounted_for(event_values: list[bytes], label_values: list[bytes],
                                       keys: list[bytes | None], event_batch: int,
                                       label_batch: int) -> None:
    events = records("events", event_values, keys)
    labels = records("labels", label_values, keys[25:])
    preds, dead, summaries = run(events, labels, event_batch, label_batch)  # raises nothing

    raw_of = {(r.topic, r.offset): r.value for r in events + labels}
    for d in dead:
        assert d.reason in DEAD_LETTER_REASONS, d
        assert (d.topic, d.offset) in raw_of, d
        assert d.raw == raw_of[(d.topic, d.offset)], d
    by_topic = Counter(d.topic for d in dead)
    dead_offsets = {t: [d.offset for d in dead if d.topic == t] for t in ("events", "labels")}
    assert len(set(dead_offsets["events"])) == by_topic["events"]  # one dead letter at most
    assert len(set(dead_offsets["labels"])) == by_topic["labels"]

    # Each event is a prediction or a dead letter: the ids of the records not dead-lettered
    # are exactly the ids predicted (the decoder's id, a duplicate id counted per record).
    kept = [decode_event(r.value, FRAUD.events) for r in events
            if r.offset not in set(dead_offsets["events"])]
    assert all(type(e) is Event for e in kept), kept
    assert Counter(p.event_id for p in preds) == Counter(e.event_id for e in kept)

    # Each label is learned or a dead letter.
    # (The model step is built, and summarises, only once a record reaches it.)
    learned = [s.counts["learned"] for s in summaries if s.champion]
    assert len(learned) <= 1
    assert sum(learned) + by_topic["labels"] == len(labels), (summaries, dead)


# -- the guards of the steps after decoding: a record that makes a step raise is a dead letter ---

def fraud_event(i: int, **change: Any) -> Event:
    fields = {"event_id": f"e{i}", "card_id": "c1", "ts": T0 + 1000 * i, "merchant_id": "m1",
              "amount": 1.0, "channel": "pos"}
    fields.update(change)
    return Event(fields["event_id"], str(fields["card_id"]), fields["ts"], fields,
                 raw=b"raw%d" % i, topic="events", offset=i)


def test_feature_step_isolates_a_record_it_cannot_use() -> None:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow

    from operators.features import spec_features

    # e1's card cannot be encoded as UTF-8 (the shard hash still takes it); e2's amount is
    # text (decoding rules it out; a step after decoding must still not crash on it).
    # The card's other records are served as if e2 had never come (it is not kept).
    evs = [fraud_event(0), fraud_event(1, card_id="\ud800"), fraud_event(2, amount="x"),
           fraud_event(3, amount=3.0)]
    flow = Dataflow("guard")
    out = spec_features("features", op.input("in", flow, TestingSource(evs)),
                        spec=FRAUD.features, shards=4)
    got: list[Any] = []
    dead: list[DeadLetter] = []
    op.output("featured", out.featured, TestingSink(got))
    op.output("late", out.late, TestingSink(dead))
    run_main(flow)
    assert sorted(fe.event.event_id for fe in got) == ["e0", "e1", "e3"]
    (e3,) = [fe for fe in got if fe.event.event_id == "e3"]
    assert e3.features["card_count_10m"] == 2
    assert e3.features["card_sum_10m"] == math.log1p(4.0)
    assert [(d.reason, d.raw, d.offset, d.step) for d in dead] == [
        ("invalid_record", b"raw2", 2, "guard.features.card_id_features")]
    assert dead[0].detail.startswith("TypeError: ")


def run_model_step(evs: list[Any], lbs: list[Label],
                   wall_clock: Any) -> tuple[list[Any], list[Any]]:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from river import linear_model

    from operators.learning import LearnerConfig, OnlineLearner, serve_and_learn

    flow = Dataflow("guard")
    config = LearnerConfig(label_ttl_ms=60_000, early_label_ttl_ms=0)
    out = serve_and_learn(
        "model", op.input("evs", flow, TestingSource(evs)),
        op.input("lbs", flow, TestingSource(lbs)),
        model_name="m", make_learner=lambda: OnlineLearner(
            "m", linear_model.LogisticRegression(), config, wall_clock=wall_clock))
    preds: list[Any] = []
    dead: list[Any] = []
    op.output("preds", out.predictions, TestingSink(preds))
    op.output("dead", out.errs, TestingSink(dead))
    run_main(flow)
    return preds, dead


def featured(i: int) -> FeaturedEvent:
    return FeaturedEvent(Event(f"e{i}", "c1", 1000 * i, {}, raw=b"ev%d" % i, topic="events",
                               offset=i), {"x": float(i)})


def test_model_step_dead_letters_a_label_it_cannot_learn_not_the_event_it_came_due_with() -> None:
    # e2's label is due when e3 moves the clock past it; its value is no binary label.
    lbs = [Label("e1", "c1", 1500, True, raw=b"lb0", topic="labels", offset=0),
           Label("e2", "c1", 2500, "x", raw=b"lb1", topic="labels", offset=1)]
    preds, dead = run_model_step([featured(1), featured(2), featured(3)], lbs, lambda: 0.0)
    assert [p.event_id for p in preds] == ["e1", "e2", "e3"]
    assert [(d.reason, d.raw, d.topic, d.offset, d.step) for d in dead] == [
        ("invalid_record", b"lb1", "labels", 1, "m")]


def test_model_step_isolates_a_record_whose_handling_raises() -> None:
    calls = iter(range(10))

    def wall_clock() -> float:  # fails once: while serving the second event
        if next(calls) == 1:
            raise OverflowError("clock")
        return 0.0

    preds, dead = run_model_step([featured(1), featured(2), featured(3)], [], wall_clock)
    assert [p.event_id for p in preds] == ["e1", "e3"]
    assert [(d.reason, d.detail, d.raw, d.offset, d.step) for d in dead] == [
        ("invalid_record", "OverflowError: clock", b"ev2", 2, "guard.model")]
