"""Decoding and validation: the exact reason for each kind of bad record; nothing raises."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.workload import malformed_records
from undertow.schema import DeadLetter, Event, Label, decode_event, decode_label
from undertow.stream import load_stream

FRAUD_EVENTS = load_stream("streams/fraud.toml").events

GOOD = {"event_id": "e1", "card_id": "c1", "merchant_id": "m1", "amount": 12.5,
        "channel": "pos", "ts": 1_700_000_000_000}


def bad(**change) -> bytes:
    rec = {**GOOD, **change}
    return orjson.dumps({k: v for k, v in rec.items() if v is not ...})


@pytest.mark.parametrize(("raw", "reason"), [
    (b"", "bad_json"),
    (b"{nope", "bad_json"),
    (b"\xff\xfe{}", "bad_json"),
    (b"[" * 100_000 + b"]" * 100_000, "bad_json"),
    (b"[1, 2]", "not_object"),
    (bad(amount=...), "missing_field"),
    (bad(amount="12.5"), "wrong_type"),
    (bad(amount=True), "wrong_type"),
    (bad(ts=1.5), "wrong_type"),
    (bad(event_id=5), "wrong_type"),
    (bad(channel=[]), "wrong_type"),
    (bad(card_id=""), "empty_field"),
    (bad(amount=-0.01), "below_min"),
    (bad(channel="fax"), "unknown_category"),
    (bad(ts=-1), "out_of_range"),
    (bad(ts=5_000_000_000_000), "out_of_range"),
    (bad(amount=...)[:-1] + b',"amount":NaN}', "not_finite"),
    (bad(amount=...)[:-1] + b',"amount":-Infinity}', "not_finite"),
    (bad(amount=...)[:-1] + b',"amount":' + b"9" * 400 + b"}", "not_finite"),
])
def test_each_bad_record_has_its_reason(raw, reason):
    got = decode_event(raw, FRAUD_EVENTS, topic="events", partition=2, offset=9, key=b"k")
    assert isinstance(got, DeadLetter)
    assert (got.reason, got.raw, got.topic, got.partition, got.offset, got.key) == (
        reason, raw, "events", 2, 9, b"k")


def test_generator_malformed_records_get_the_reasons_it_promises():
    for raw, reason in malformed_records(4, 60):
        assert decode_event(raw, FRAUD_EVENTS).reason == reason


def test_a_good_event_keeps_its_fields():
    raw = orjson.dumps(GOOD)
    ev = decode_event(raw, FRAUD_EVENTS, read_at=3.0, topic="events", partition=1, offset=8,
                      key=b"c1")
    # The fields as decoded, and the raw bytes and coordinates for a lossless dead letter later.
    assert ev == Event("e1", "c1", GOOD["ts"], GOOD, 3.0, 1, -1, raw, "events", 8, b"c1")


def test_labels():
    ok = decode_label(b'{"event_id":"e1","card_id":"c1","is_fraud":false,"ts":7}', offset=4)
    assert isinstance(ok, Label) and (ok.event_id, ok.value, ok.ts, ok.offset) == ("e1", False,
                                                                                   7, 4)
    assert decode_label(b'{"event_id":"e1","card_id":"c1","ts":7}').reason == "missing_field"
    assert decode_label(b'{"event_id":"e1","card_id":"c1","is_fraud":0,"ts":7}').reason == (
        "wrong_type")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children,
                                                                      max_size=4),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(raw):
    assert isinstance(decode_event(raw, FRAUD_EVENTS), (Event, DeadLetter))
    assert isinstance(decode_label(raw), (Label, DeadLetter))


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(GOOD) + ["is_fraud", "x"]), json_values))
def test_arbitrary_objects_never_raise(obj):
    import json

    raw = json.dumps({**GOOD, **obj}).encode()
    assert isinstance(decode_event(raw, FRAUD_EVENTS), (Event, DeadLetter))
    assert isinstance(decode_label(raw), (Label, DeadLetter))


def test_labels_of_each_target():
    from undertow.schema import LabelSchema

    iris = LabelSchema(key_field="k", value_field="species", target="multiclass",
                       classes=("setosa", "versicolor", "virginica"))
    learned = LabelSchema(key_field="k", value_field="y", target="multiclass")
    approval = LabelSchema(key_field="k", value_field="y", target="regression")

    def lab(schema, value):
        raw = orjson.dumps({"event_id": "e1", "k": "a", "ts": 5, schema.value_field: value})
        got = decode_label(raw, schema)
        return got.value if isinstance(got, Label) else (got.reason, got.detail)

    assert lab(iris, "virginica") == "virginica"
    assert lab(iris, "rose") == ("unknown_class", "field 'species' has unknown class 'rose'")
    assert lab(iris, 2) == ("unknown_class", "field 'species' has unknown class '2'")
    assert lab(learned, 7) == 7 and lab(learned, "seven") == "seven"  # learned as they come
    assert lab(learned, True)[0] == "wrong_type"  # a boolean is no class
    assert lab(learned, 1.5) == ("wrong_type", "field 'y' must be a class (a string or an "
                                               "integer), got float")
    assert lab(learned, "")[0] == "empty_field"
    assert lab(approval, 41.5) == 41.5 and lab(approval, 41) == 41
    assert lab(approval, "41")[0] == "wrong_type" and lab(approval, True)[0] == "wrong_type"
    nan = b'{"event_id":"e1","k":"a","ts":5,"y":NaN}'
    assert decode_label(nan, approval).reason == "not_finite"


def test_every_reason_the_code_gives_is_declared():
    """Metrics pre-declare DEAD_LETTER_REASONS at zero: a reason missing there has no series."""
    import re

    import undertow.schema as schema

    constants = {v for k, v in vars(schema).items()
                 if re.fullmatch(r"[A-Z_]+", k) and isinstance(v, str) and v == v.lower()
                 and k not in ("CONTROL_COMMANDS",)}
    assert constants <= set(schema.DEAD_LETTER_REASONS), constants - set(
        schema.DEAD_LETTER_REASONS)
    assert len(set(schema.DEAD_LETTER_REASONS)) == len(schema.DEAD_LETTER_REASONS)
