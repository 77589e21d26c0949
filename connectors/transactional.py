"""Exactly-once predictions after a crash: a sink that remembers where it stopped writing.

``UNDERTOW_DELIVERY=exactly_once`` writes predictions (and shadow predictions) through
:class:`ResumableSink` instead of :class:`connectors.kafka.ProducerSink`. Why not Kafka
transactions, and what is guaranteed, with the measurements, is in docs/lifecycle.md ("Delivery
after a crash"); in short:

* The sink is a Bytewax ``FixedPartitionedSink`` with one partition (a *lane*) per partition of
  the output topic. A prediction goes to the lane of its record key (``crc32(key) % partitions``,
  the Kafka partition librdkafka's default partitioner picks for it too), and each lane is the
  only writer of its Kafka partition.
* A lane's Bytewax state is the next offset of its Kafka partition, taken at every snapshot
  (``snapshot()`` runs at each epoch's end, after the epoch's records were flushed by
  ``write_batch``). Records are on the broker before the state that counts them is durable.
* A crash leaves records past that offset: written after the last durable snapshot, by events
  that the restarted dataflow reads and scores again. On resume a lane reads them back (its
  partition, from the snapshot's offset to the end) and drops each prediction whose
  ``undertow.prediction_id`` header (``model:event_id``, stable across runs) is among them,
  instead of writing it a second time. Ids not met again yet stay in the lane's state, so a
  second crash during the replay still drops them.

Any broker works (Tansu included: nothing here uses transactions) and consumers need no setting.
The price: delivery reports for every record (the lane tracks its offsets), a key step and an
exchange before the sink, and a read of one snapshot interval's output at each restart.
"""

from __future__ import annotations

import sys
import time
import zlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from connectors.kafka import (
    _CONSUMER_DEFAULTS,
    EXIT_BAD_SETTING,
    PREDICTION_ID_HEADER,
    Encoded,
    KafkaFault,
    ProducerSink,
    _ProducerPartition,
    bad_option,
    connect,
    encode_prediction,
    fail,
    observe_processing_latency,
    prediction_id,
    quiet,
)
from connectors.settings import Settings
from undertow.schema import Prediction

X = TypeVar("X")

#: A lane's state: the next offset of its Kafka partition, and the ids written past the
#: previous durable snapshot by a dead run that have not been met again yet.
LaneState = tuple[int, tuple[bytes, ...]]

#: How long a resuming lane may take to read back its partition's tail before it fails.
TAIL_READ_TIMEOUT_S = 30.0


def lane_name(partition: int) -> str:
    """The Bytewax partition key of the lane writing Kafka partition ``partition``: zero-padded,
    so that Bytewax's ordered set of keys is in partition order (``part_fn`` indexes it).

    >>> [lane_name(p) for p in (0, 2, 10)]
    ['p00000', 'p00002', 'p00010']
    """
    return f"p{partition:05d}"


def key_partition(key: str, partitions: int) -> int:
    """The partition of a record key: ``crc32(key) % partitions``, as librdkafka's default
    ``consistent_random`` partitioner places a non-empty key (so a key lands on the same
    partition with either delivery).

    >>> key_partition("c1", 3), key_partition("c2", 3)
    (2, 1)
    """
    return zlib.crc32(key.encode()) % partitions


def prediction_key(p: Prediction) -> str:
    """The key that routes a prediction to its lane: its record key (the entity)."""
    return p.key


class _LaneProducer:
    """A producer pinned to one partition that records the next offset of every record it has
    delivered; everything else is the wrapped ``Producer``'s (what ``_ProducerPartition`` calls:
    ``produce``, ``poll``, ``flush``). Delivery reports for successes come because the lane's
    producer runs with ``delivery.report.only.error=false``; failures go on to the caller's
    callback as before."""

    def __init__(self, producer: Producer, partition: int, next_offset: int) -> None:
        self._producer = producer
        self.partition = partition
        self.next_offset = next_offset

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, *,
                headers: Any = None, on_delivery: Callable[[Any, Any], None] | None = None) -> None:
        def delivered(err: Any, msg: Any) -> None:
            if err is None:
                self.next_offset = max(self.next_offset, msg.offset() + 1)
            elif on_delivery is not None:
                on_delivery(err, msg)

        self._producer.produce(topic, value, key, partition=self.partition, headers=headers,
                               on_delivery=delivered)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)


def read_ids_after(config: dict[str, Any], topic: str, partition: int, offset: int,
                   header: str, timeout: float = TAIL_READ_TIMEOUT_S) -> tuple[int, list[bytes]]:
    """The end offset of ``topic``/``partition`` and the ``header`` values of its records from
    ``offset`` on, read to the partition's end (partition EOF, right on Tansu and Kafka alike;
    Tansu's ``ListOffsets`` watermark is too low, docs/broker.md)."""
    consumer = Consumer(quiet({
        **_CONSUMER_DEFAULTS, **config, "group.id": "undertow-sink-resume",
        "enable.auto.commit": False, "enable.partition.eof": True,
    }))
    ids: list[bytes] = []
    end = offset
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    return max(end, msg.offset()), ids
                raise KafkaException(err)
            end = msg.offset() + 1
            value = dict(msg.headers() or []).get(header)
            if value is not None:
                ids.append(value)
        raise KafkaException(f"could not read {topic!r} partition {partition} from offset "
                             f"{offset} to its end in {timeout:g} s")
    finally:
        consumer.close()


class ResumableLane(StatefulSinkPartition[X, LaneState], Generic[X]):
    """One lane: a ``_ProducerPartition`` (batching, oversized records, bounded flushes and
    delivery faults as in every sink) writing one Kafka partition, which drops the records whose
    id is in ``skip`` (written by a run that died after the snapshot this one resumed from)."""

    def __init__(self, inner: _ProducerPartition[X], producer: _LaneProducer,
                 ident: Callable[[X], bytes], skip: set[bytes]) -> None:
        self._inner = inner
        self._producer = producer
        self._ident = ident
        self._skip = skip
        #: Records dropped because a dead run had written them (for tests and the resume line).
        self.skipped = 0

    def write_batch(self, values: list[X]) -> None:
        if self._skip:
            kept = []
            for v in values:
                ident = self._ident(v)
                if ident in self._skip:
                    self._skip.discard(ident)
                    self.skipped += 1
                else:
                    kept.append(v)
            values = kept
        if values:
            self._inner.write_batch(values)

    def snapshot(self) -> LaneState:
        return self._producer.next_offset, tuple(sorted(self._skip))

    def close(self) -> None:
        self._inner.close()


class ResumableSink(FixedPartitionedSink[X, LaneState], Generic[X]):
    """Write ``(key, record)`` pairs to ``topic``, one lane per partition, each record once
    across crashes and restarts on the same recovery directory (module docstring). ``ident``
    is a record's stable id, written in the ``header`` header."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        encode: Callable[[X], Encoded],
        ident: Callable[[X], bytes],
        after_write: Callable[[list[X]], None] | None = None,
        *,
        header: str = PREDICTION_ID_HEADER,
        setting: str = "UNDERTOW_PREDICTIONS_TOPIC",
    ) -> None:
        self._settings = settings
        self._base = ProducerSink(settings, topic, encode, after_write)
        self._topic = topic
        self._ident = ident
        self._header = header
        self._setting = setting
        self._partitions: int | None = None

    def partitions(self) -> int:
        """How many partitions the topic has (asked once); a missing topic is one line, exit 2:
        the lanes need the count, so the topic must exist before the dataflow starts."""
        if self._partitions is None:
            config = {"bootstrap.servers": self._settings.kafka_bootstrap_servers,
                      **self._settings.librdkafka()}
            config.pop("message.timeout.ms", None)  # a producer's option
            md = connect(self._settings.brokers, config)
            t = md.topics.get(self._topic)
            if t is None or t.error is not None or not t.partitions:
                fail(KafkaFault(
                    "missing_topic",
                    f"undertow: bad setting: {self._setting}: the topic {self._topic!r} does not "
                    "exist on the broker; UNDERTOW_DELIVERY=exactly_once writes one lane per "
                    "partition, so create the topic first", EXIT_BAD_SETTING, self._topic))
            self._partitions = len(t.partitions)
        return self._partitions

    def list_parts(self) -> list[str]:
        return [lane_name(p) for p in range(self.partitions())]

    def part_fn(self, item_key: str) -> int:
        return zlib.crc32(item_key.encode())

    def build_part(self, step_id: str, for_part: str,
                   resume_state: LaneState | None) -> ResumableLane[X]:
        partition = int(for_part[1:])
        base = self._base
        config = {
            **base._config,
            # Offsets of delivered records (the lane's state), and no duplicates from retries.
            "delivery.report.only.error": False,
            "enable.idempotence": True,
        }
        offset, skip = 0, set()
        if resume_state is not None:
            offset, pending = resume_state
            consumer_config = {"bootstrap.servers": self._settings.kafka_bootstrap_servers,
                               **self._settings.librdkafka()}
            consumer_config.pop("message.timeout.ms", None)  # a producer's option
            end, written = read_ids_after(consumer_config, self._topic, partition, offset,
                                          self._header)
            skip = set(pending) | set(written)
            if written or pending:
                print(f"undertow: {step_id}: partition {partition} of {self._topic!r} resumed at "
                      f"offset {offset}: {len(written)} records written after it by the last "
                      f"run, {len(pending)} still awaited from before; each is dropped when it "
                      "is produced again", file=sys.stderr, flush=True)
            offset = end
        try:
            producer = Producer(quiet(config))
        except KafkaException as ex:
            fail(bad_option(ex))
        lane_producer = _LaneProducer(producer, partition, offset)
        inner: _ProducerPartition[X] = _ProducerPartition(
            lane_producer,  # type: ignore[arg-type]
            self._topic, base._encode, base._after_write, None,
            max_bytes=int(config.get("message.max.bytes", 1_000_000)), step_id=step_id,
            bootstrap=str(config["bootstrap.servers"]),
            message_timeout_ms=float(config["message.timeout.ms"]),
        )
        return ResumableLane(inner, lane_producer, self._ident, skip)


def resumable_prediction_sink(settings: Settings, *, shadow: bool = False
                              ) -> ResumableSink[Prediction]:
    """Predictions (``shadow``: the challengers' shadow predictions) through a
    :class:`ResumableSink`: ``UNDERTOW_DELIVERY=exactly_once``."""
    if shadow:
        return ResumableSink(settings, settings.shadow_topic, encode_prediction, prediction_id,
                             setting="UNDERTOW_SHADOW_TOPIC")
    return ResumableSink(settings, settings.predictions_topic, encode_prediction, prediction_id,
                         observe_processing_latency)
