"""Requests (undertow/requests.py, docs/requests.md): scored from the live state as of their time,
changing no state and no model; every bad request answered with its error, not silence."""

from __future__ import annotations

import copy
import math
import pickle

import orjson
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.kafka import KafkaRecord
from connectors.settings import load_settings
from dataflows.stream import build_flow, make_learner, shipped
from harness.generate import OTHER_STREAMS, MemorySink, run, run_records
from harness.workload import WorkloadConfig, generate
from tests.test_features_state import LATENESS, SPEC, records
from undertow.features import GroupState, SpecState
from undertow.requests import Reply, Request, decode_request
from undertow.schema import DeadLetter, Event, FeaturedEvent, Label, decode_event, decode_label

FRAUD = shipped("fraud")


# -- the features of a request: update's answer, without update's effects -----------------------

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records, st.lists(st.tuples(st.integers(0, 120), st.integers(-200, 60),
                                   st.integers(-5, 5)), min_size=1, max_size=6))
def test_a_peek_serves_what_update_would_and_changes_nothing(stream, asks):
    """At random points of a random stream (out of order, late, gaps, evictions), a peek at a
    record equals what ``update`` serves that record on a copy of the state (or None where the
    record would be late, or is behind the watermark), and the state pickles to the same bytes
    after the peek as before it."""
    state = GroupState(SPEC.groups()[0], allowed_lateness_ms=LATENESS, idle_ms=10**9)
    t = 1000
    points = {at: (step, x) for at, step, x in asks}
    windows: list = []
    for i, (user, page, step, x) in enumerate(stream):
        t += step
        state.update({"user": user, "page": page, "x": float(x)}, t, 0, windows)
        if i not in points:
            continue
        back, y = points[i]
        fields = {"user": user, "page": "a" if page == "b" else page, "x": float(y)}
        ts = t + back
        before = pickle.dumps(state)
        got = state.peek(fields, ts)
        assert pickle.dumps(state) == before
        twin = copy.deepcopy(state)
        want = twin.update(fields, ts, 0, [])
        wm = state.wm.value
        if wm is not None and ts < wm - LATENESS:
            assert got is None
        else:
            assert got == want


def test_the_spec_state_peek_adds_the_pass_through_features_and_keeps_nothing():
    w = generate(WorkloadConfig(seed=3, n_events=400, n_cards=20, n_merchants=5))
    state = SpecState(FRAUD.features)
    for e in w.events:
        state.update(e, e["ts"])
    last = w.events[-1]
    ask = dict(last, event_id="ask", ts=last["ts"] + 1, amount=17.0)
    before = pickle.dumps(state)
    got = state.peek(ask, ask["ts"])
    assert pickle.dumps(state) == before
    assert got == copy.deepcopy(state).update(ask, ask["ts"])
    assert got["amount"] == math.log1p(17.0)  # the fraud stream's transform of the amount
    assert got["card_count_10m"] >= 2  # the card's last event, and the request


# -- the model: the champion's answer, the learner unchanged ---------------------------------------

def learned_learner(stream_name: str = "fraud", n: int = 600):
    stream = shipped(stream_name)
    s = load_settings({})
    learner = make_learner(s, stream, replay=True)
    sink = MemorySink()
    if stream_name == "fraud":
        run(WorkloadConfig(seed=2, n_events=n, n_cards=40), sink)
    else:
        other = OTHER_STREAMS[stream_name]
        run_records(other, *other.generate(2, n), sink)
    feats = SpecState(stream.features)
    out: list = []
    for kind, value, _key, _ts in sink.records:
        if kind == "event":
            ev = decode_event(value, stream.events)
            assert type(ev) is Event
            x = feats.update(ev.fields, ev.ts)
            last = FeaturedEvent(ev, x)
            learner.on_event(last, out)
        else:
            lb = decode_label(value, stream.labels)
            assert type(lb) is Label
            learner.on_label(lb, out)
    return learner, last, out


def test_an_answer_is_the_champions_prediction_and_changes_no_model():
    learner, last, _ = learned_learner()
    assert learner.labels_learned > 100
    ask = FeaturedEvent(last.event._replace(event_id="ask"), last.features,
                        request=Request("r", "predict", None, None, 0.0))
    before = pickle.dumps(learner)
    got = learner.answer(ask)
    assert pickle.dumps(learner) == before  # no pending prediction, no count, no model change
    want = learner.target.serve(learner.model, last.features)
    assert (got.event_id, got.score, got.predicted, got.model, got.model_version,
            got.labels_learned) == ("ask", want, want > 0.5, "fraud", 1, learner.labels_learned)
    # ... and what on_event would serve the same features now
    out: list = []
    learner.on_event(FeaturedEvent(last.event._replace(event_id="fresh"), last.features), out)
    assert [p.score for p in out if getattr(p, "served", False)] == [got.score]


def test_an_ensemble_champion_answers_with_the_combined_value():
    learner, last, _ = learned_learner("iris", 150)
    assert learner.champion == learner.ensemble
    ask = FeaturedEvent(last.event, last.features, request=Request("r", "predict", None, None, 0))
    before = pickle.dumps(learner)
    got = learner.answer(ask)
    assert pickle.dumps(learner) == before
    out: list = []
    learner.on_event(FeaturedEvent(last.event._replace(event_id="fresh"), last.features), out)
    served = [p for p in out if getattr(p, "served", False)]
    assert len(served) == 1 and served[0].model == learner.ensemble
    assert (got.proba, got.predicted) == (served[0].proba, served[0].predicted)


# -- the envelope ------------------------------------------------------------------------------

def ask(envelope: dict, key: bytes | None = b"k1", **kw) -> list:
    return decode_request(orjson.dumps(envelope), FRAUD.events, read_at=1.0, key=key,
                          topic="requests", partition=0, offset=9, step="dec", **kw)


EVENT = {"event_id": "e1", "card_id": "c1", "merchant_id": "m1", "amount": 5.0,
         "channel": "pos", "ts": 1000}


def test_a_predict_request_becomes_a_featured_event_carrying_its_request():
    [fe] = ask({"correlation_id": "r1", "event": EVENT, "reply_to": "mine",
                "deadline_ms": 5000}, now_ms=4000)
    assert fe.event.fields == EVENT and fe.event.key == "c1" and fe.features == {}
    assert fe.request == Request("r1", "predict", "mine", 5000, 1.0)
    [fe] = ask({"event": EVENT})  # the record key is the correlation id
    assert fe.request.correlation_id == "k1" and fe.request.reply_to is None
    [req] = ask({"kind": "describe"})
    assert req == Request("k1", "describe", None, None, 1.0)


def test_bad_requests_get_an_error_reply_and_a_dead_letter_with_their_bytes():
    cases = [
        ({"event": dict(EVENT, amount=-1)}, "below_min", "field 'amount' must be >= 0, got -1"),
        ({"event": {"event_id": "e1"}}, "missing_field", "field 'card_id' is missing"),
        ({"event": [1]}, "not_object", "expected a JSON object, got list"),
        ({"kind": "predict"}, "bad_request",
         "field 'event' is missing: a predict request scores one event"),
        ({"kind": "train", "event": EVENT}, "bad_request",
         "field 'kind' must be one of ['predict', 'describe'], got 'train'"),
        ({"event": EVENT, "label": True}, "bad_request",
         "unknown field 'label' in the request; expected some of ['correlation_id', "
         "'deadline_ms', 'event', 'kind', 'reply_to'] (the event goes in 'event')"),
        ({"event": EVENT, "reply_to": "events"}, "bad_request",
         "field 'reply_to' names the dataflow's own topic 'events'"),
        ({"event": EVENT, "reply_to": "a b"}, "bad_request",
         "field 'reply_to' must be a Kafka topic name, got 'a b'"),
        ({"event": EVENT, "correlation_id": 7}, "bad_request",
         "field 'correlation_id' must be a non-empty string"),
    ]
    for envelope, reason, detail in cases:
        raw = orjson.dumps(envelope)
        reply, dead = ask(envelope, own_topics=("events",), stream="fraud")
        assert reply == Reply("k1", None, {"correlation_id": "k1", "ok": False, "error": reason,
                                           "detail": detail, "stream": "fraud"}, 1.0)
        assert dead == DeadLetter(reason, detail, raw, b"k1", "requests", 0, 9, "dec")
    # not JSON: answered by the record key
    reply, dead = decode_request(b"{oops", FRAUD.events, key=b"k2")
    assert (reply.correlation_id, reply.body["error"], dead.reason, dead.raw) == (
        "k2", "bad_json", "bad_json", b"{oops")
    # no correlation id anywhere: nobody to answer, so a dead letter alone
    [dead] = decode_request(b"{oops", FRAUD.events)
    assert dead.reason == "bad_json" and "no correlation id" in dead.detail
    [dead] = decode_request(orjson.dumps({"event": EVENT}), FRAUD.events)
    assert dead.reason == "bad_request" and "no correlation id" in dead.detail


def test_a_request_read_after_its_deadline_is_answered_expired_not_scored():
    [reply] = ask({"correlation_id": "r1", "event": EVENT, "deadline_ms": 5000}, now_ms=5001)
    assert reply.body == {"correlation_id": "r1", "ok": False, "error": "expired",
                          "detail": "read at 5001, after its deadline_ms 5000"}


# -- through the dataflow ---------------------------------------------------------------------

def run_flow(events: list[dict], requests: list[tuple[bytes | None, bytes]], **env: str):
    s = load_settings({"UNDERTOW_REQUESTS_TOPIC": "requests", **env})
    out: dict[str, list] = {k: [] for k in ("predictions", "deadletter", "replies")}
    evs = [KafkaRecord(e["card_id"].encode(), orjson.dumps(e), "events", 0, i)
           for i, e in enumerate(events)]
    reqs = [KafkaRecord(k, v, "requests", 0, i) for i, (k, v) in enumerate(requests)]
    flow = build_flow(s, FRAUD, sources={"events": TestingSource(evs),
                                         "labels": TestingSource([]),
                                         "requests": TestingSource(reqs)},
                      sinks={k: TestingSink(v) for k, v in out.items()})
    run_main(flow)
    return out


def test_requests_through_the_dataflow_are_answered_in_full_and_never_served():
    requests = [
        (b"r1", orjson.dumps({"event": EVENT})),
        (b"r2", orjson.dumps({"event": dict(EVENT, event_id="e2", card_id="c2", amount=3.0,
                                            channel="atm", ts=2000)})),
        (b"r3", b"{oops"),
        (b"r4", orjson.dumps({"kind": "describe"})),
        (b"r5", orjson.dumps({"event": dict(EVENT, channel="moon")})),
        (None, b"[]"),
    ]
    out = run_flow([], requests)
    assert out["predictions"] == []  # a request is never served as an event
    replies = {r.correlation_id: r.body for r in out["replies"]}
    assert sorted(replies) == ["r1", "r2", "r3", "r4", "r5"]
    # No events: each card is served over the request alone.
    assert replies["r1"]["features"] == {
        "card_count_10m": 1, "card_sum_10m": 1.791759469228055,
        "card_mean_10m": 1.791759469228055, "card_count_1h": 1, "card_sum_1h": 1.791759469228055,
        "card_mean_1h": 1.791759469228055, "card_secs_since_prev": math.log1p(3600.0),
        "amount_to_card_mean_1h": 0.6931471805599453, "merchant_count_10m": 1,
        "amount": math.log1p(5.0),
        "channel_pos": 1.0, "channel_online": 0.0, "channel_atm": 0.0}
    for cid, eid in (("r1", "e1"), ("r2", "e2")):
        body = replies[cid]
        assert {k: body[k] for k in ("ok", "stream", "event_id", "score", "predicted", "model",
                                     "model_version", "labels_learned")} == {
            "ok": True, "stream": "fraud", "event_id": eid, "score": 0.5, "predicted": False,
            "model": "fraud", "model_version": 1, "labels_learned": 0}
    assert replies["r2"]["features"]["channel_atm"] == 1.0
    assert replies["r3"]["error"] == "bad_json"
    assert replies["r4"] == {"correlation_id": "r4", "ok": True, "stream": "fraud",
                             "model": "fraud", "model_version": 1, "labels_learned": 0,
                             "models": [{"name": "fraud", "version": 1, "labels_learned": 0,
                                         "champion": True}],
                             "features": list(replies["r1"]["features"])}
    assert (replies["r5"]["error"], replies["r5"]["detail"]) == (
        "unknown_category", "field 'channel' has unknown value 'moon'")
    assert sorted((d.reason, d.raw) for d in out["deadletter"]) == [
        ("bad_json", b"{oops"), ("not_object", b"[]"), ("unknown_category", requests[4][1])]


def test_the_feature_step_answers_a_late_or_far_future_request_with_its_error():
    from operators.features import _ShardLogic

    group = FRAUD.features.groups()[0]
    state = GroupState(group, allowed_lateness_ms=300_000, idle_ms=FRAUD.features.idle_ms)
    logic = _ShardLogic("card_features", "0", state, max_future_skew_ms=86_400_000)
    events = [FeaturedEvent(Event(f"e{i}", "c1", 1000 + i * 60_000, dict(EVENT, ts=0), 0.0, 0),
                            {}) for i in range(20)]
    logic.on_batch(events)
    before = pickle.dumps(state)

    def request(cid: str, ts: int) -> FeaturedEvent:
        return FeaturedEvent(Event(cid, "c1", ts, dict(EVENT), 0.0, 0), {},
                             request=Request(cid, "predict", None, None, 0.0))

    now = 1000 + 19 * 60_000
    out, _ = logic.on_batch([request("late", 1000), request("future", now + 86_400_001),
                             request("now", now + 1)])
    assert pickle.dumps(state) == before
    by = {fe.request.correlation_id: fe for fe in out}
    assert by["late"].request.error == (
        "late_event", "event time 1000 is older than the watermark minus the allowed lateness "
        "at step 'card_features'")
    assert by["future"].request.error[0] == "future_event"
    assert by["now"].request.error is None
    # the last 10 minutes hold the events of minutes 10..19 and the request itself
    assert by["now"].features["card_count_10m"] == 11
    assert by["now"].features["card_count_1h"] == 21
