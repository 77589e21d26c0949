"""Tests of the embedded broker (harness/kafka.py) against a real Tansu process.

Two kinds of tests live here:

* behaviour tests: what undertow relies on (records keep keys, values, headers and
  CreateTime timestamps; counts are exact; groups commit and resume; ...);
* ``test_tansu_gap_*``: facts about this Tansu build where it differs from Kafka.
  They assert the *wrong* behaviour on purpose: when one fails, Tansu was fixed, so
  update the module docstring of harness/kafka.py and the README, then the test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    TIMESTAMP_CREATE_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import ConfigResource, NewPartitions, NewTopic

from harness.kafka import (
    BrokerError,
    EmbeddedKafka,
    PartitionScan,
    UnknownTopicError,
    count_records,
    end_offsets,
    free_port,
    reported_high_watermarks,
    scan_partitions,
)
from tests.conftest import TopicFactory

REPO = Path(__file__).resolve().parents[1]
TS0 = 1_600_000_000_000  # 2020-09-13T12:26:40Z, far from "now": a broker-set time would show


# ------------------------------------------------------------------- helpers


def produce(
    bootstrap: str,
    topic: str,
    records: Sequence[dict[str, object]],
    *,
    flush_every: int | None = None,
    **config: object,
) -> dict[int, list[int]]:
    """Produce ``records`` (kwargs of Producer.produce); return partition -> offsets.

    ``flush_every=n`` flushes after every n records, so each flush ends a batch.
    """
    producer = Producer({"bootstrap.servers": bootstrap, **config})
    delivered: dict[int, list[int]] = {}
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered.setdefault(msg.partition(), []).append(msg.offset())

    for i, record in enumerate(records, start=1):
        producer.produce(topic, on_delivery=on_delivery, **record)
        producer.poll(0)
        if flush_every is not None and i % flush_every == 0:
            assert producer.flush(10) == 0
    assert producer.flush(10) == 0, "records left undelivered"
    assert not errors, errors[:5]
    return delivered


def read_all(bootstrap: str, topic: str, partitions: int, timeout: float = 10.0) -> list[Message]:
    """Every record of ``topic``, read from the beginning to the end of each partition."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-read-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[Message] = []
    eof: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(eof) < partitions:
            assert time.monotonic() < deadline, f"EOF only on {sorted(eof)}"
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error() is None:
                out.append(msg)
            elif msg.error().code() == KafkaError._PARTITION_EOF:
                eof.add(msg.partition())
            else:
                raise KafkaException(msg.error())
    finally:
        consumer.close()
    return out


def group_consumer(bootstrap: str, group: str, **config: object) -> Consumer:
    # session.timeout.ms bounds how long Tansu holds JoinGroup (half of it): see the gap test.
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 2000,
            "heartbeat.interval.ms": 500,
            **config,
        }
    )


def poll_n(consumer: Consumer, n: int, timeout: float = 10.0) -> list[Message]:
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        msg = consumer.poll(0.1)
        if msg is not None and msg.error() is None:
            out.append(msg)
    return out


# ----------------------------------------------------------------- lifecycle


def test_free_port_is_a_bindable_loopback_port() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_start_then_stop_kills_only_its_own_process() -> None:
    with EmbeddedKafka() as broker:
        pid, port = broker.pid, broker.port
        assert broker.bootstrap_servers == f"127.0.0.1:{port}"
        assert broker.running
        assert Path(f"/proc/{pid}").exists()
        assert os.getsid(pid) == pid, "broker should lead its own session"
        assert broker.admin().list_topics(timeout=5).brokers
        log_path = broker.log_path
        assert log_path is not None and log_path.exists()
    assert not broker.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert not log_path.exists(), "the temporary log directory is removed on stop"
    broker.stop()  # idempotent
    with pytest.raises(BrokerError):
        _ = broker.bootstrap_servers


def test_atexit_stops_a_forgotten_broker() -> None:
    script = (
        "from harness.kafka import EmbeddedKafka\n"
        "broker = EmbeddedKafka().start()\n"
        "print(broker.pid, broker.port, flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    pid, port = map(int, done.stdout.split())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_start_failure_names_binary_port_and_log_tail() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = EmbeddedKafka(port, startup_timeout=10)
        with pytest.raises(BrokerError) as excinfo:
            broker.start()
    message = str(excinfo.value)
    assert broker.binary in message
    assert f"port={port}" in message
    assert "Address in use" in message  # Tansu's own words, from the log tail
    assert not broker.running
    assert broker.log_path is not None  # kept for the post-mortem: clean it up here
    for path in (broker.log_path, broker.log_path.parent):
        path.unlink() if path.is_file() else path.rmdir()


def test_cli_prints_bootstrap_and_stops_on_sigterm(tmp_path: Path) -> None:
    pid_file = tmp_path / "kafka.pid"
    cli = subprocess.Popen(
        [sys.executable, "-m", "harness.kafka", "--topics", "a,b",
         "--partitions", "2", "--pid-file", str(pid_file)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert cli.stdout is not None
        line = cli.stdout.readline().strip()
        fields = dict(item.split("=", 1) for item in line.split())
        assert list(fields) == ["bootstrap", "pid"], line
        host, port = fields["bootstrap"].rsplit(":", 1)
        assert host == "127.0.0.1"
        assert int(fields["pid"]) == cli.pid == int(pid_file.read_text())
        children = Path(f"/proc/{cli.pid}/task/{cli.pid}/children").read_text().split()
        assert len(children) == 1
        broker_pid = int(children[0])
        scans = [scan_partitions(fields["bootstrap"], t, timeout=5) for t in ("a", "b")]
        assert scans == [{0: PartitionScan(0, 0), 1: PartitionScan(0, 0)}] * 2
        cli.terminate()
        assert cli.wait(timeout=10) == 0, cli.stderr.read() if cli.stderr else ""
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(broker_pid, 0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(port)), timeout=1).close()
    assert not pid_file.exists()


# -------------------------------------------------------------------- topics


def test_create_topics_with_three_partitions(kafka: EmbeddedKafka, topics: TopicFactory) -> None:
    names = topics("events", "labels", partitions=3)
    metadata = kafka.admin().list_topics(timeout=5)
    for name in names.values():
        partitions = metadata.topics[name].partitions
        assert sorted(partitions) == [0, 1, 2]
        assert all(p.leader >= 0 and p.error is None for p in partitions.values())
    # Idempotent for the same count, loud for another one.
    assert kafka.create_topics(list(names.values()), partitions=3) == dict.fromkeys(
        names.values(), 3
    )
    with pytest.raises(BrokerError, match="exists with 3 partitions, not 4"):
        kafka.create_topics(names["events"], partitions=4)
    with pytest.raises(ValueError, match="illegal Kafka topic name"):
        kafka.create_topics("no spaces please")
    mixed = f"mixed-{uuid.uuid4().hex[:8]}"
    assert kafka.create_topics({mixed: 2, names["labels"]: 3}) == {mixed: 2, names["labels"]: 3}
    assert kafka.topic_partitions()[mixed] == 2


def test_unknown_topic_is_reported_not_created(kafka: EmbeddedKafka) -> None:
    ghost = f"ghost-{uuid.uuid4().hex[:8]}"
    with pytest.raises(UnknownTopicError):
        end_offsets(kafka.bootstrap_servers, ghost)
    with pytest.raises(UnknownTopicError):
        count_records(kafka.bootstrap_servers, ghost)
    assert ghost not in kafka.topic_partitions()


def test_topic_deletion_and_recreation(kafka: EmbeddedKafka, topics: TopicFactory) -> None:
    name = topics("doomed", partitions=2)["doomed"]
    produce(kafka.bootstrap_servers, name, [{"value": b"x"}] * 10)
    for future in kafka.admin().delete_topics([name], operation_timeout=5).values():
        future.result(timeout=5)
    assert name not in kafka.topic_partitions()
    kafka.create_topics(name, partitions=2)
    assert count_records(kafka.bootstrap_servers, name, timeout=5) == {0: 0, 1: 0}


# ------------------------------------------------------------------- records


def test_count_records_matches_delivery_reports(kafka: EmbeddedKafka, topics: TopicFactory) -> None:
    name = topics("events", partitions=3)["events"]
    records = [{"key": f"user-{i % 97}".encode(), "value": f"{i}".encode()} for i in range(5000)]
    delivered = produce(kafka.bootstrap_servers, name, records, **{"linger.ms": 5})
    expected = {p: len(offsets) for p, offsets in delivered.items()}
    assert sum(expected.values()) == 5000 and len(expected) == 3
    assert all(sorted(o) == list(range(len(o))) for o in delivered.values()), "offsets from 0"

    assert count_records(kafka.bootstrap_servers, name, timeout=10) == expected
    assert end_offsets(kafka.bootstrap_servers, name) == expected
    scans = scan_partitions(kafka.bootstrap_servers, name, timeout=10)
    assert scans == {p: PartitionScan(count=n, end_offset=n) for p, n in expected.items()}

    # Per key, records come back in the order they were produced, on one partition.
    by_key: dict[bytes, list[int]] = {}
    partition_of: dict[bytes, set[int]] = {}
    for msg in read_all(kafka.bootstrap_servers, name, 3):
        by_key.setdefault(msg.key(), []).append(int(msg.value()))
        partition_of.setdefault(msg.key(), set()).add(msg.partition())
    assert all(values == sorted(values) for values in by_key.values())
    assert all(len(parts) == 1 for parts in partition_of.values())
    assert sum(len(v) for v in by_key.values()) == 5000


def test_records_keep_keys_values_headers_and_create_time(
    kafka: EmbeddedKafka, topics: TopicFactory
) -> None:
    name = topics("events")["events"]
    sent = [
        {"key": b"k1", "value": b"v1", "timestamp": TS0, "headers": [("trace", b"abc")]},
        {
            "key": b"k2",
            "value": b'{"x": 1}',
            "timestamp": TS0 + 1,
            "headers": [("dup", b"1"), ("dup", b"2"), ("none", None), ("empty", b"")],
        },
        {"key": None, "value": None, "timestamp": TS0 - 86_400_000},  # older than the previous
        {"key": b"", "value": b"", "timestamp": TS0 + 2},
    ]
    produce(kafka.bootstrap_servers, name, sent, **{"linger.ms": 20})
    got = read_all(kafka.bootstrap_servers, name, 1)
    assert [m.offset() for m in got] == [0, 1, 2, 3]
    assert [m.key() for m in got] == [r["key"] for r in sent]
    assert [m.value() for m in got] == [r["value"] for r in sent]
    assert [m.timestamp() for m in got] == [(TIMESTAMP_CREATE_TIME, r["timestamp"]) for r in sent]
    assert [m.headers() for m in got] == [r.get("headers") for r in sent]


def test_compressed_batches_round_trip(kafka: EmbeddedKafka, topics: TopicFactory) -> None:
    for codec in ("gzip", "snappy", "lz4", "zstd"):
        name = topics(codec)[codec]
        records = [{"value": f"value {i} ".encode() * 10} for i in range(300)]
        produce(kafka.bootstrap_servers, name, records, **{"compression.type": codec})
        assert [m.value() for m in read_all(kafka.bootstrap_servers, name, 1)] == [
            r["value"] for r in records
        ], codec


def test_idempotent_producer(kafka: EmbeddedKafka, topics: TopicFactory) -> None:
    name = topics("events", partitions=3)["events"]
    records = [{"key": str(i).encode(), "value": b"x"} for i in range(2000)]
    delivered = produce(
        kafka.bootstrap_servers,
        name,
        records,
        **{"enable.idempotence": True, "acks": "all", "linger.ms": 5},
    )
    expected = {p: len(o) for p, o in delivered.items()}
    assert sum(expected.values()) == 2000
    assert count_records(kafka.bootstrap_servers, name, timeout=10) == expected


# ------------------------------------------------------------ consumer groups


def test_committed_offsets_survive_a_consumer_restart(
    kafka: EmbeddedKafka, topics: TopicFactory
) -> None:
    name = topics("events", partitions=2)["events"]
    records = [{"value": b"%d" % i, "partition": i % 2} for i in range(40)]
    produce(kafka.bootstrap_servers, name, records)
    group = f"g-{uuid.uuid4().hex[:8]}"
    first = group_consumer(kafka.bootstrap_servers, group)
    committed = first.commit(
        offsets=[TopicPartition(name, 0, 7), TopicPartition(name, 1, 11)], asynchronous=False
    )
    assert [(tp.partition, tp.offset, tp.error) for tp in committed] == [
        (0, 7, None),
        (1, 11, None),
    ]
    first.close()

    second = group_consumer(kafka.bootstrap_servers, group)
    try:
        fetched = second.committed([TopicPartition(name, p) for p in (0, 1)], timeout=5)
        assert [(tp.partition, tp.offset) for tp in fetched] == [(0, 7), (1, 11)]
        second.assign([TopicPartition(name, 0)])  # no offset: resume from the committed one
        assert [m.offset() for m in poll_n(second, 1)] == [7]
    finally:
        second.close()


def test_subscribed_group_commits_and_a_new_member_resumes(
    kafka: EmbeddedKafka, topics: TopicFactory
) -> None:
    name = topics("events", partitions=3)["events"]
    produce(kafka.bootstrap_servers, name, [{"key": str(i).encode()} for i in range(300)])
    group = f"g-{uuid.uuid4().hex[:8]}"

    first = group_consumer(kafka.bootstrap_servers, group)
    first.subscribe([name])
    seen = poll_n(first, 100)
    assert len(seen) == 100
    first.commit(asynchronous=False)
    first.close()

    second = group_consumer(kafka.bootstrap_servers, group)
    second.subscribe([name])
    try:
        rest = poll_n(second, 200)
    finally:
        second.close()
    keys = Counter(m.key() for m in seen + rest)
    assert len(rest) == 200 and len(keys) == 300 and set(keys.values()) == {1}


# ----------------------------------------------------- Tansu gaps, pinned as facts


def test_tansu_gap_high_watermark_is_wrong_after_batched_produce(
    kafka: EmbeddedKafka, topics: TopicFactory
) -> None:
    """ListOffsets(LATEST) answers the last batch's first offset + 1, not the end."""
    name = topics("events")["events"]
    bootstrap = kafka.bootstrap_servers
    # Three batches, one per flush: offsets [0], [1..10], [11..15].
    for size in (1, 10, 5):
        produce(bootstrap, name, [{"value": b"x"}] * size, **{"linger.ms": 1000})
    assert count_records(bootstrap, name, timeout=5) == {0: 16}
    assert end_offsets(bootstrap, name) == {0: 16}  # the helper is right...

    reported = reported_high_watermarks(bootstrap, name)
    assert reported == {0: 12}, "Kafka reports 16; if this fails Tansu was fixed"
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "gap-hwm"})
    try:
        assert consumer.get_watermark_offsets(TopicPartition(name, 0), timeout=5) == (0, 12)
    finally:
        consumer.close()


def test_tansu_gap_offsets_for_times_returns_zero(
    kafka: EmbeddedKafka, topics: TopicFactory
) -> None:
    name = topics("events")["events"]
    records = [{"value": b"%d" % i, "timestamp": TS0 + i * 1000} for i in range(30)]
    produce(kafka.bootstrap_servers, name, records, flush_every=10)
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "gap-oft"})
    try:
        middle, future = (
            consumer.offsets_for_times([TopicPartition(name, 0, ts)], timeout=5)[0]
            for ts in (TS0 + 15_000, TS0 + 10**9)
        )
    finally:
        consumer.close()
    # Kafka answers 15 (first record at or after the time) and -1 (past the end).
    assert (middle.offset, middle.error) == (0, None)
    assert (future.offset, future.error) == (0, None)


def test_tansu_gap_offset_end_starts_inside_the_last_batch(
    kafka: EmbeddedKafka, topics: TopicFactory
) -> None:
    name = topics("events")["events"]
    bootstrap = kafka.bootstrap_servers
    produce(bootstrap, name, [{"value": b"old"}] * 20, **{"linger.ms": 1000})  # one batch
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "gap-end"})
    try:
        consumer.assign([TopicPartition(name, 0, OFFSET_END)])
        # Kafka delivers nothing here: the consumer waits at offset 20 for new records.
        replayed = poll_n(consumer, 19, timeout=2)
        produce(bootstrap, name, [{"value": b"new"}])
        new = poll_n(consumer, 1, timeout=5)
    finally:
        consumer.close()
    # Tansu resolved OFFSET_END to 1 (its high watermark) and replays offsets 1..19.
    assert [(m.offset(), m.value()) for m in replayed] == [(i, b"old") for i in range(1, 20)]
    assert [(m.offset(), m.value()) for m in new] == [(20, b"new")]


def test_tansu_gap_fetch_waits_its_full_max_wait_despite_new_records(
    kafka: EmbeddedKafka, topics: TopicFactory
) -> None:
    """A pending Fetch is answered at fetch.wait.max.ms even when records arrive."""
    name = topics("events")["events"]
    consumer = Consumer(
        {"bootstrap.servers": kafka.bootstrap_servers, "group.id": "gap-fetch",
         "fetch.wait.max.ms": 700}
    )
    try:
        consumer.assign([TopicPartition(name, 0, 0)])
        produce(kafka.bootstrap_servers, name, [{"value": b"first"}])
        assert [m.value() for m in poll_n(consumer, 1, timeout=5)] == [b"first"]
        # The consumer sent its next Fetch on receiving "first": it is now waiting.
        sent = time.monotonic()
        produce(kafka.bootstrap_servers, name, [{"value": b"second"}])
        second = poll_n(consumer, 1, timeout=5)
        latency = time.monotonic() - sent
    finally:
        consumer.close()
    # Kafka answers as soon as fetch.min.bytes (1) is there: a few ms. Tansu: ~0.7 s.
    assert [m.value() for m in second] == [b"second"]
    assert latency > 0.3, f"record arrived after {latency:.3f} s: Tansu now wakes fetches"


def test_tansu_gap_group_join_waits_half_the_session_timeout(
    kafka: EmbeddedKafka, topics: TopicFactory
) -> None:
    name = topics("events")["events"]
    assigned_at: list[float] = []
    consumer = group_consumer(kafka.bootstrap_servers, f"g-{uuid.uuid4().hex[:8]}")
    start = time.monotonic()
    consumer.subscribe([name], on_assign=lambda c, ps: assigned_at.append(time.monotonic()))
    try:
        while not assigned_at and time.monotonic() - start < 5:
            consumer.poll(0.05)
    finally:
        consumer.close()
    # session.timeout.ms=2000: Tansu answers JoinGroup after ~1 s (22.5 s by default).
    assert assigned_at and 0.8 <= assigned_at[0] - start <= 2.5


def test_tansu_gap_produce_auto_creates_topic_with_four_partitions(
    kafka: EmbeddedKafka,
) -> None:
    name = f"auto-{uuid.uuid4().hex[:8]}"
    produce(kafka.bootstrap_servers, name, [{"value": b"x"}])
    assert kafka.topic_partitions()[name] == 4  # Kafka's default num.partitions is 1


def test_tansu_gap_create_partitions_unsupported(
    kafka: EmbeddedKafka, topics: TopicFactory
) -> None:
    name = topics("events", partitions=2)["events"]
    future = kafka.admin().create_partitions([NewPartitions(name, 4)])[name]
    with pytest.raises(KafkaException) as excinfo:
        future.result(timeout=5)
    assert excinfo.value.args[0].code() == KafkaError._UNSUPPORTED_FEATURE
    assert kafka.topic_partitions()[name] == 2


def test_tansu_gap_log_append_time_config_is_ignored(kafka: EmbeddedKafka) -> None:
    name = f"lat-{uuid.uuid4().hex[:8]}"
    config = {"message.timestamp.type": "LogAppendTime"}
    for future in kafka.admin().create_topics([NewTopic(name, 1, 1, config=config)]).values():
        future.result(timeout=5)
    stored = kafka.admin().describe_configs([ConfigResource("topic", name)])
    entries = next(iter(stored.values())).result(timeout=5)
    assert entries["message.timestamp.type"].value == "LogAppendTime"  # stored...
    produce(kafka.bootstrap_servers, name, [{"value": b"x", "timestamp": TS0}])
    (msg,) = read_all(kafka.bootstrap_servers, name, 1)
    assert msg.timestamp() == (TIMESTAMP_CREATE_TIME, TS0)  # ...but not applied


def test_tansu_gap_read_committed_consumers_see_aborted_records(
    kafka: EmbeddedKafka, topics: TopicFactory
) -> None:
    """Transactions commit, abort and fence, and a read_committed consumer waits for an open
    one; but it is then shown the aborted records too (Kafka hides them). Why
    ``UNDERTOW_DELIVERY=exactly_once`` does not rest on transactions (docs/lifecycle.md)."""
    name = topics("tx")["tx"]
    p = Producer({"bootstrap.servers": kafka.bootstrap_servers,
                  "transactional.id": f"tx-{uuid.uuid4().hex[:8]}"})
    p.init_transactions(10)
    p.begin_transaction()
    p.produce(name, b"aborted")
    p.flush(10)
    p.abort_transaction(10)
    p.begin_transaction()
    p.produce(name, b"committed")
    p.commit_transaction(10)
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "unused",
                         "isolation.level": "read_committed", "enable.partition.eof": True,
                         "fetch.wait.max.ms": 20})
    consumer.assign([TopicPartition(name, 0, OFFSET_BEGINNING)])
    got: list[bytes] = []
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            m = consumer.poll(0.2)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    break
                continue
            got.append(m.value())
    finally:
        consumer.close()
    assert b"committed" in got
    assert b"aborted" in got, "Tansu now hides aborted records: transactions could be used"
