"""Poison records through the whole dataflow: oversized values and far-future timestamps are dead
letters with their coordinates, never a crash or a watermark jump; an oversized dead letter never
fails the dead-letter sink."""

from __future__ import annotations

import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from confluent_kafka import KafkaError, KafkaException

from connectors.kafka import (
    TRUNCATED_HEADER,
    KafkaRecord,
    _ProducerPartition,
    dead_letter_sink,
    encode_dead_letter,
    fetch_limits,
    kafka_source,
    truncate_dead_letter,
)
from connectors.settings import load_settings
from dataflows.stream import build_flow, shipped
from harness.kafka import EmbeddedKafka, read_topic
from harness.workload import WorkloadConfig, generate
from undertow.schema import DeadLetter, Prediction

FRAUD = shipped("fraud")
TS_2099 = 4_070_908_800_000  # 2099-01-01T00:00:00Z: accepted by the decoder (before 2100)


@pytest.fixture(scope="module")
def workload():
    return generate(WorkloadConfig(seed=5, n_events=600, n_cards=30, n_merchants=10))


def run(values: list[bytes], **overrides) -> tuple[list[Prediction], list[DeadLetter]]:
    records = [KafkaRecord(f"k{i}".encode(), v, "events", 0, i) for i, v in enumerate(values)]
    preds: list[Prediction] = []
    dead: list[DeadLetter] = []
    flow = build_flow(
        load_settings({}, **overrides), FRAUD,
        sources={"events": TestingSource(records, batch_size=50), "labels": TestingSource([])},
        sinks={"predictions": TestingSink(preds), "deadletter": TestingSink(dead)},
    )
    run_main(flow)
    return preds, dead


def test_a_record_over_the_size_limit_is_a_too_large_dead_letter_and_its_neighbours_are_served(
    workload,
):
    events = [orjson.dumps(e) for e in workload.events]
    big = dict(workload.events[300], event_id="big", merchant_id="m" * 2_000_000)
    raw_big = orjson.dumps(big)
    values = events[:300] + [raw_big] + events[300:]
    preds, dead = run(values)

    assert sorted(p.event_id for p in preds) == sorted(e["event_id"] for e in workload.events)
    assert [(d.reason, d.raw, d.key, d.topic, d.partition, d.offset, d.step) for d in dead] == [
        ("too_large", raw_big, b"k300", "events", 0, 300, "undertow_fraud.decode_events")]
    assert dead[0].detail == (f"value of {len(raw_big)} bytes is over the limit of 1000000 "
                              "(UNDERTOW_MAX_RECORD_BYTES)")


def test_the_size_limit_is_a_setting(workload):
    events = [orjson.dumps(e) for e in workload.events[:50]]
    limit = max(len(v) for v in events) - 1
    preds, dead = run(events, max_record_bytes=limit)
    over = [i for i, v in enumerate(events) if len(v) > limit]
    assert over and [d.offset for d in dead] == over
    assert {d.reason for d in dead} == {"too_large"}
    assert len(preds) == len(events) - len(over)


def test_an_event_far_in_the_future_is_a_dead_letter_and_moves_no_clock(workload):
    events = [orjson.dumps(e) for e in workload.events]
    # The same card as the event before it, so it reaches a shard whose clock has started.
    future = dict(workload.events[199], event_id="future", ts=TS_2099)
    raw_future = orjson.dumps(future)
    values = events[:200] + [raw_future] + events[200:]
    preds, dead = run(values)

    # Every valid event after it is served: none is late.
    assert sorted(p.event_id for p in preds) == sorted(e["event_id"] for e in workload.events)
    assert [(d.reason, d.raw, d.key, d.topic, d.partition, d.offset, d.step) for d in dead] == [
        ("future_event", raw_future, b"k200", "events", 0, 200, "undertow_fraud.features.card_id_features")]


def test_without_the_skew_check_the_same_event_makes_later_events_late(workload):
    """The probe of issue 13: with a skew of 200 years the 2099 event is accepted and the
    shard's watermark jumps, so the later events of that shard are late."""
    events = [orjson.dumps(e) for e in workload.events]
    future = dict(workload.events[199], event_id="future", ts=TS_2099)
    values = events[:200] + [orjson.dumps(future)] + events[200:]
    preds, dead = run(values, max_future_skew_s=200 * 365 * 86400)
    assert dead and {d.reason for d in dead} == {"late_event"}
    assert len(preds) + len(dead) == len(values)


def test_within_the_skew_an_event_ahead_is_served(workload):
    events = [orjson.dumps(e) for e in workload.events[:100]]
    ahead = dict(workload.events[99], event_id="ahead", ts=workload.events[99]["ts"] + 3_600_000)
    preds, dead = run(events + [orjson.dumps(ahead)])
    assert dead == [] and "ahead" in {p.event_id for p in preds}


# -- the consumer's fetch limits ---------------------------------------------------------------

def test_fetch_limits_fit_a_record_of_the_limit_and_keep_librdkafkas_rules():
    for limit in (1_000, 1_000_000, 5_000_000, 200_000_000):
        lim = {k: int(v) for k, v in fetch_limits(limit).items()}
        assert lim["fetch.message.max.bytes"] >= limit
        assert lim["fetch.max.bytes"] >= lim["fetch.message.max.bytes"]
        assert lim["receive.message.max.bytes"] >= lim["fetch.max.bytes"] + 512
    src = kafka_source(load_settings({"UNDERTOW_MAX_RECORD_BYTES": "5000000"}), "events")
    assert src._add_config["fetch.message.max.bytes"] == "5065536"
    given = load_settings({"UNDERTOW_KAFKA_OPT_MAX_PARTITION_FETCH_BYTES": "2000000"})
    cfg = kafka_source(given, "events")._add_config
    assert cfg["fetch.message.max.bytes"] == "2000000" and "max.partition.fetch.bytes" not in cfg


# -- the dead-letter sink ----------------------------------------------------------------------

def _dead_letter(raw: bytes) -> DeadLetter:
    return DeadLetter.of_bytes("too_large", "too big", raw, key=b"card-1", topic="events",
                               partition=2, offset=41, step="undertow_fraud.decode_events")


def test_an_oversized_dead_letter_is_written_cut_by_a_real_producer(kafka: EmbeddedKafka, topics):
    names = topics("deadletter")
    settings = load_settings({}, kafka_bootstrap_servers=kafka.bootstrap_servers,
                             deadletter_topic=names["deadletter"])
    part = dead_letter_sink(settings).build("deadletter_out", 0, 1)
    small, big = _dead_letter(b"ok"), _dead_letter(b"x" * 2_000_000)
    part.write_batch([small, big, small])  # before: KafkaException MSG_SIZE_TOO_LARGE
    part.close()

    msgs = read_topic(kafka.bootstrap_servers, names["deadletter"])
    assert [m.key() for m in msgs] == [b"card-1"] * 3
    assert [m.value() for m in msgs[::2]] == [b"ok", b"ok"]
    cut = msgs[1]
    assert 0 < len(cut.value()) < 1_000_000 and cut.value() == b"x" * len(cut.value())
    headers = dict(cut.headers())
    assert headers[TRUNCATED_HEADER] == b"2000000"
    assert headers["undertow.error.reason"] == b"too_large"
    assert headers["undertow.error.offset"] == b"41"
    assert TRUNCATED_HEADER not in dict(msgs[0].headers())


class _Refusing:
    """A producer that refuses records over ``limit`` bytes as confluent-kafka does: produce()
    raises ``KafkaException(KafkaError(MSG_SIZE_TOO_LARGE))`` over ``local``, and the delivery
    report carries the broker's MSG_SIZE_TOO_LARGE over ``broker``."""

    class _Msg:
        def __init__(self, topic, key, value, headers):
            self._t, self._k, self._v, self._h = topic, key, value, headers

        def topic(self):
            return self._t

        def key(self):
            return self._k

        def value(self):
            return self._v

        def headers(self):
            return self._h

    def __init__(self, local: int, broker: int) -> None:
        self.local, self.broker = local, broker
        self.written: list[tuple] = []
        self.topics: list[str] = []
        self._reports: list = []

    def produce(self, topic, value, key, headers=None, on_delivery=None):
        size = len(key or b"") + len(value or b"") + sum(len(h) + len(v) for h, v in headers or [])
        if size > self.local:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        if size > self.broker:
            self._reports.append((on_delivery, KafkaError(KafkaError.MSG_SIZE_TOO_LARGE),
                                  self._Msg(topic, key, value, headers)))
        else:
            self.written.append((key, value, headers))
            self.topics.append(topic)

    def flush(self, timeout=None):
        reports, self._reports = self._reports, []
        for cb, err, msg in reports:
            cb(err, msg)
        return 0

    def poll(self, timeout=None):
        return 0


def test_refused_by_the_producer_or_the_broker_a_dead_letter_is_written_cut():
    fake = _Refusing(local=1_000_000, broker=300_000)
    part = _ProducerPartition(fake, "dl", encode_dead_letter, None,
                              shrink=truncate_dead_letter, max_bytes=1_000_000)
    part.write_batch([_dead_letter(b"a"), _dead_letter(b"y" * 5_000_000),
                      _dead_letter(b"z" * 600_000), _dead_letter(b"b")])
    values = [v for _, v, _ in fake.written]
    assert values[0] == b"a" and values[1] == b"b"  # the small ones went first
    cut = {v[:1]: (v, dict(h)) for _, v, h in fake.written[2:]}
    assert sorted(cut) == [b"y", b"z"]
    for letter, original in ((b"y", b"5000000"), (b"z", b"600000")):
        value, headers = cut[letter]
        assert 0 < len(value) <= 300_000 and value == letter * len(value)
        assert headers[TRUNCATED_HEADER] == original


def test_with_a_topic_per_record_a_cut_record_is_resent_to_its_own_topic():
    fake = _Refusing(local=1_000_000, broker=300_000)
    part = _ProducerPartition(fake, "dl", encode_dead_letter, None, shrink=truncate_dead_letter,
                              max_bytes=1_000_000,
                              topic_of=lambda d: "big" if len(d.raw) > 1 else None)
    part.write_batch([_dead_letter(b"a"), _dead_letter(b"z" * 600_000), _dead_letter(b"b")])
    assert [v[:1] for _, v, _ in fake.written] == [b"a", b"b", b"z"]
    assert fake.topics == ["dl", "dl", "big"]


def test_an_oversized_prediction_is_dropped_not_a_failed_batch():
    fake = _Refusing(local=1_000, broker=1_000)
    part = _ProducerPartition(fake, "p", lambda x: (b"k", x, None), None, max_bytes=1_000)
    part.write_batch([b"a", b"x" * 5_000, b"b"])
    assert [v for _, v, _ in fake.written] == [b"a", b"b"]


def test_other_delivery_errors_still_fail_the_batch():
    class Failing(_Refusing):
        def flush(self, timeout=None):
            for cb, _, msg in self._reports:
                cb(KafkaError(KafkaError._MSG_TIMED_OUT), msg)
            self._reports = []
            return 0

    fake = Failing(local=10_000, broker=10)
    part = _ProducerPartition(fake, "p", lambda x: (b"k", x, None), None)
    with pytest.raises(KafkaException, match="could not write 1 records"):
        part.write_batch([b"x" * 100])


def test_a_label_far_ahead_of_the_clock_is_a_future_event_dead_letter_not_held_for_ever():
    from dataflows.stream import make_learner
    from undertow.schema import Event, FeaturedEvent, Label

    s = load_settings({"UNDERTOW_MAX_FUTURE_SKEW_S": "3600"})
    learner = make_learner(s, shipped("fraud"), replay=True)
    out: list = []
    t0 = 1_767_225_600_000
    learner.on_event(FeaturedEvent(Event("e1", "c1", t0, {}), {"x": 1.0}), out)
    out.clear()
    # Labels run ahead of the events (a backlog read faster on that side): judged by their own
    # clock, the newest label time, as events are by theirs.
    learner.on_label(Label("e0", "c1", t0 + 30 * 86_400_000, True, raw=b"ahead"), out)
    learner.on_label(Label("e1", "c1", t0 + 30 * 86_400_000 + 3_600_001, True, raw=b"far"), out)
    learner.on_label(Label("e1", "c1", t0 + 30 * 86_400_000 + 3_600_000, True, raw=b"near"), out)
    [dead] = out
    assert (dead.reason, dead.raw) == ("future_event", b"far")
    assert dead.detail == ("label time 1769821200001 is more than 3600000 ms ahead of the labels' "
                           "clock 1769817600000 (UNDERTOW_MAX_FUTURE_SKEW_S) (model step 'fraud', "
                           "event 'e1')")
    assert learner.waiting_labels == 2  # the others wait for their time, as any label does
