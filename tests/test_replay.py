"""The replay source: merge order and tie rule, bounds (both offsets_for_times paths), bad
records, resume, and errors."""

from __future__ import annotations

import logging

import orjson
import pytest
from confluent_kafka import KafkaError, TopicPartition

from connectors.replay import EVENT, LABEL, FileInput, KafkaInput, ReplaySource
from connectors.settings import ConfigError
from harness.kafka import EmbeddedKafka


def drain(src: ReplaySource, resume=None, *, upto: int | None = None):
    part = src.build_part("replay", "replay", resume)
    out = []
    try:
        while upto is None or len(out) < upto:
            out.extend(part.next_batch())
    except StopIteration:
        pass
    return out, part


def ev(eid: str, ts: int) -> bytes:
    return orjson.dumps({"event_id": eid, "ts": ts})


def key(r) -> tuple:
    return (r.topic.split("-")[0], r.partition, r.offset)


@pytest.fixture
def two_by_two(kafka: EmbeddedKafka, topics):
    """Events and labels topics of two partitions each, written in time order per partition."""
    names = topics("events", "labels", partitions=2)
    p0 = [ev("a", 10), ev("b", 20), ev("c", 20), ev("d", 40)]
    p1 = [ev("e", 5), ev("f", 20), ev("g", 30)]
    l0 = [ev("a", 20), ev("e", 35)]
    l1 = [ev("b", 25)]
    for topic, part, values in ((names["events"], 0, p0), (names["events"], 1, p1),
                                (names["labels"], 0, l0), (names["labels"], 1, l1)):
        produce_to(kafka.bootstrap_servers, topic, part, values)
    return names


def produce_to(bootstrap: str, topic: str, partition: int, values: list[bytes]) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap})
    for v in values:
        p.produce(topic, v, partition=partition)
    assert p.flush(30) == 0


def kafka_replay(kafka, names, **kw) -> ReplaySource:
    b = kafka.bootstrap_servers
    return ReplaySource([KafkaInput(names["events"], EVENT, b)],
                        [KafkaInput(names["labels"], LABEL, b)], batch_size=2, **kw)


def test_merge_by_time_labels_first_then_topic_partition_offset(kafka, two_by_two):
    out, _ = drain(kafka_replay(kafka, two_by_two))
    got = [(orjson.loads(r.value)["event_id"], orjson.loads(r.value)["ts"], key(r)) for r in out]
    assert got == [
        ("e", 5, ("events", 1, 0)),
        ("a", 10, ("events", 0, 0)),
        ("a", 20, ("labels", 0, 0)),   # a label before the events at the same time
        ("b", 20, ("events", 0, 1)),   # then events by partition, offset
        ("c", 20, ("events", 0, 2)),
        ("f", 20, ("events", 1, 1)),
        ("b", 25, ("labels", 1, 0)),
        ("g", 30, ("events", 1, 2)),
        ("e", 35, ("labels", 0, 1)),
        ("d", 40, ("events", 0, 3)),
    ]
    assert [r.seq for r in out] == list(range(10))


def test_files_merge_the_same_way_and_bad_lines_keep_their_place(tmp_path):
    events = tmp_path / "events.jsonl"
    labels = tmp_path / "labels.jsonl"
    # A malformed line takes the time of the line before it; a record stamped far in the future
    # does not hold back the records after it in its file.
    events.write_bytes(b"\n".join([ev("a", 10), b"{oops", ev("far", 10**12), ev("b", 30),
                                   b"", ev("c", 50)]) + b"\n")
    labels.write_bytes(b"\n".join([ev("a", 10), ev("b", 40)]) + b"\n")
    src = ReplaySource([FileInput(str(events), EVENT, "events")],
                       [FileInput(str(labels), LABEL, "labels")], lookahead=3)
    out, _ = drain(src)
    assert [(r.value, r.topic, r.offset) for r in out] == [
        (ev("a", 10), "file:labels", 0),
        (ev("a", 10), "file:events", 0),
        (b"{oops", "file:events", 1),
        (ev("far", 10**12), "file:events", 2),  # merged at the next records' time (30)
        (ev("b", 30), "file:events", 3),
        (ev("b", 40), "file:labels", 1),
        (ev("c", 50), "file:events", 5),        # line 4 is blank
    ]


def test_progress_is_logged_with_the_replay_clock_and_the_share_read(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="undertow.replay")
    events = tmp_path / "events.jsonl"
    labels = tmp_path / "labels.jsonl"
    events.write_bytes(b"".join(ev(f"e{i}", 60_000 * i) + b"\n" for i in range(1, 9)))
    labels.write_bytes(b"".join(ev(f"e{i}", 60_000 * i + 1) + b"\n" for i in range(1, 3)))
    src = ReplaySource([FileInput(str(events), EVENT, "events")],
                       [FileInput(str(labels), LABEL, "labels")], batch_size=1, lookahead=1,
                       progress_every=4)
    out, _ = drain(src)
    assert len(out) == 10
    lines = [r.getMessage().rsplit(",", 1)[0] for r in caplog.records
             if "records emitted, replay clock" in r.getMessage()]
    # After 4 records (e1 l1 e2 l2) the labels file is read to its end, and the events reader
    # holds its head (e3) and one record of lookahead (e4): 4 of its 8 lines' bytes read. After
    # 8, the events reader holds e7 and e8: both files are read.
    ev_bytes = events.read_bytes().splitlines(keepends=True)
    share = 100 * (1 + sum(map(len, ev_bytes[:4])) / events.stat().st_size) / 2
    assert lines == [
        "replay: 4 records emitted, replay clock 1970-01-01T00:02:00Z, "
        f"{share:.1f}% of the inputs read",
        "replay: 8 records emitted, replay clock 1970-01-01T00:06:00Z, 100.0% of the inputs read",
    ]


def test_start_and_end_on_tansu_scan_and_skip(kafka, two_by_two, caplog):
    caplog.set_level(logging.INFO, logger="undertow.replay")
    out, part = drain(kafka_replay(kafka, two_by_two, start_ms=20, end_ms=30))
    assert [(orjson.loads(r.value)["event_id"], orjson.loads(r.value)["ts"]) for r in out] == [
        ("a", 20), ("b", 20), ("c", 20), ("f", 20), ("b", 25), ("g", 30)]
    assert (part.skipped_early, part.dropped_late) == (2, 2)
    # Tansu answers offset 0 for any time: the replay says it scanned and skipped.
    assert "answered offset 0" in caplog.text
    assert "the broker's answer was too early (Tansu answers 0)" in caplog.text


class _Msg:
    def __init__(self, offset: int | None, value: bytes | None, eof: bool = False) -> None:
        self._offset, self._value, self._eof = offset, value, eof

    def error(self):
        return KafkaError(KafkaError._PARTITION_EOF) if self._eof else None

    def offset(self):
        return self._offset

    def value(self):
        return self._value

    def key(self):
        return None


class FakeKafka:
    """A consumer of one topic whose offsets_for_times answers as real Kafka does (by the
    records' timestamps), to test the path Tansu cannot exercise."""

    topics = {"ev": [ev("x", 1), ev("y", 7), ev("z", 9)], "lb": [ev("y", 8)]}

    def __init__(self, config):
        self.config = config
        self.pos: list = []

    def offsets_for_times(self, tps, timeout):
        out = []
        for tp in tps:
            recs = self.topics[tp.topic]
            idx = next((i for i, v in enumerate(recs) if orjson.loads(v)["ts"] >= tp.offset), -1)
            out.append(TopicPartition(tp.topic, tp.partition, idx))
        return out

    def get_watermark_offsets(self, tp, timeout):
        return 0, len(self.topics[tp.topic])

    def assign(self, tps):
        (tp,) = tps
        self.pos = [tp.topic, tp.offset]

    def consume(self, n, timeout):
        topic, off = self.pos
        recs = self.topics[topic]
        msgs = [_Msg(i, recs[i]) for i in range(off, len(recs))][:n]
        self.pos[1] += len(msgs)
        if self.pos[1] >= len(recs):
            msgs.append(_Msg(None, None, eof=True))
        return msgs

    def close(self):
        pass


def test_real_kafka_offsets_for_times_path_seeks_without_skipping(monkeypatch):
    monkeypatch.setattr(ReplaySource, "_check_inputs", lambda self: {"ev": [0], "lb": [0]})
    src = ReplaySource([KafkaInput("ev", EVENT, "fake:1")], [KafkaInput("lb", LABEL, "fake:1")],
                       start_ms=5, consumer_factory=FakeKafka)
    out, part = drain(src)
    assert [(r.topic, r.offset) for r in out] == [("ev", 1), ("lb", 0), ("ev", 2)]
    assert part.skipped_early == 0  # the broker's answer was right: nothing to scan past


def test_a_resumed_replay_goes_on_where_its_snapshot_was(kafka, two_by_two):
    full, _ = drain(kafka_replay(kafka, two_by_two))
    first, part = drain(kafka_replay(kafka, two_by_two), upto=4)
    state = part.snapshot()
    part.close()
    rest, _ = drain(kafka_replay(kafka, two_by_two), resume=state)
    assert [(r.value, r.seq) for r in first + rest] == [(r.value, r.seq) for r in full]


def test_clear_errors(kafka, tmp_path):
    b = kafka.bootstrap_servers
    with pytest.raises(ConfigError, match="cannot read Kafka topic 'nope-replay'.*does not exist"):
        ReplaySource([KafkaInput("nope-replay", EVENT, b)], [])
    with pytest.raises(ConfigError, match=r"empty range: the start \(5\) is not before the end"):
        ReplaySource([], [], start_ms=5, end_ms=5)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n binary")
    with pytest.raises(ConfigError, match="line 1 is not a JSON object: this is not a JSON Lines"):
        ReplaySource([FileInput(str(bad), EVENT, "events")], [])
    with pytest.raises(ConfigError, match="cannot read .*missing.jsonl: No such file"):
        ReplaySource([FileInput(str(tmp_path / "missing.jsonl"), EVENT, "events")], [])
