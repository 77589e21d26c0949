"""Kafka sources and sinks of the dataflows (confluent-kafka underneath).

The source follows Bytewax's own ``KafkaSource`` (one Bytewax partition per Kafka partition,
offsets kept by Bytewax recovery, no consumer group) with a leaner record type; consumer errors
become values, so they reach the dead-letter topic instead of crashing the dataflow.

Sinks encode records once and flush once per batch, so a batch is on the broker before Bytewax
can close the epoch that produced it (at-least-once; keys make duplicates harmless).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

from bytewax.connectors.kafka import BYTEWAX_CONSUMER_LAG_GAUGE
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from connectors import metrics, summary
from connectors.settings import ConfigError, Settings
from undertow.schema import DeadLetter, Prediction

X = TypeVar("X")

Encoded = tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]


_CONSUMER_DEFAULTS = {
    # A short fetch wait bounds latency on a quiet topic (Tansu answers a waiting fetch only when
    # this runs out; Kafka answers as soon as data arrives). Overridable like any option.
    "fetch.wait.max.ms": "20",
}


class KafkaRecord(NamedTuple):
    """One record read from Kafka, or a consumer error (``error`` set, ``value`` maybe None)."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    error: str | None = None
    seq: int = -1  # position in a replay's merged, time-ordered input; -1 when live


class _RecordPartition(StatefulSourcePartition[KafkaRecord, int]):
    """One Kafka partition, read in batches; its state is the next offset to read."""

    def __init__(
        self, step_id: str, config: dict[str, Any], topic: str, partition: int, offset: int,
        batch_size: int,
    ) -> None:
        self._topic = topic
        self._partition = partition
        self._offset = offset
        self._batch_size = batch_size
        self._eof = False
        self._lag = BYTEWAX_CONSUMER_LAG_GAUGE.labels(
            step_id=step_id, topic=topic, partition=partition
        )
        self._consumer = Consumer({**config, "stats_cb": self._on_stats})
        self._consumer.assign([TopicPartition(topic, partition, offset)])

    def _on_stats(self, stats_json: str) -> None:
        stats = json.loads(stats_json)
        part = stats["topics"].get(self._topic, {}).get("partitions", {}).get(str(self._partition))
        if part is not None and self._offset >= 0 and part["hi_offset"] >= 0:
            self._lag.set(max(0, part["hi_offset"] - self._offset))

    def next_batch(self) -> list[KafkaRecord]:
        if self._eof:
            raise StopIteration
        topic, partition = self._topic, self._partition
        out: list[KafkaRecord] = []
        last = None
        for msg in self._consumer.consume(self._batch_size, 0.001):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof = True  # emit this batch; stop at the next call
                    break
                off = msg.offset()
                out.append(KafkaRecord(msg.key(), msg.value(), topic, partition,
                                       -1 if off is None else off, str(err)))
                continue
            last = msg.offset()
            out.append(KafkaRecord(msg.key(), msg.value(), topic, partition, last))
        if last is not None:
            self._offset = last + 1
        return out

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()


class KafkaRecordSource(FixedPartitionedSource[KafkaRecord, int]):
    """Every partition of some topics, read in batches into lean :class:`KafkaRecord` values.

    Bytewax's own ``KafkaSource`` builds a ``KafkaSourceMessage`` (a frozen dataclass of eight
    fields, with headers, latency and timestamp calls) per record; this source reads only what the
    dataflow uses. Offsets are Bytewax recovery state, as there; no consumer group is used.
    ``tail=False`` stops at the end of each partition (partition EOF, which is exact on Kafka
    and Tansu alike, unlike Tansu's reported high watermark).
    """

    def __init__(
        self,
        brokers: list[str],
        topics: list[str],
        *,
        tail: bool = True,
        starting_offset: int = OFFSET_BEGINNING,
        add_config: dict[str, str] | None = None,
        batch_size: int = 1000,
        setting: str | None = None,
    ) -> None:
        self._setting = setting
        self._brokers = brokers
        self._topics = topics
        self._tail = tail
        self._starting_offset = starting_offset
        self._add_config = dict(add_config or {})
        self._batch_size = batch_size

    def list_parts(self) -> list[str]:
        config = {"bootstrap.servers": ",".join(self._brokers)}
        config.update(
            {k: v for k, v in self._add_config.items()
             if k not in _CONSUMER_DEFAULTS and k not in _FETCH_KEYS}
        )
        # List all topics: a metadata request naming a topic can create it.
        md = AdminClient(config).list_topics(timeout=30)
        parts = []
        for topic in self._topics:
            t = md.topics.get(topic)
            if t is None or t.error is not None:
                why = "it does not exist" if t is None else t.error.str()
                where = f"{self._setting}: " if self._setting else ""
                raise ConfigError(
                    f"{where}cannot read Kafka topic {topic!r} from {config['bootstrap.servers']}:"
                    f" {why}"
                )
            parts.extend(f"{i}-{topic}" for i in sorted(t.partitions))
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _RecordPartition:
        idx, topic = for_part.split("-", 1)
        config = {
            "group.id": "undertow-unused",  # offsets live in Bytewax recovery, not a group
            "enable.auto.commit": "false",
            "bootstrap.servers": ",".join(self._brokers),
            "enable.partition.eof": str(not self._tail).lower(),
            "statistics.interval.ms": 1000,
            **self._add_config,
        }
        offset = self._starting_offset if resume_state is None else resume_state
        return _RecordPartition(step_id, config, topic, int(idx), offset, self._batch_size)


#: librdkafka's defaults of the fetch limits (CONFIGURATION.md).
_FETCH_MESSAGE_MAX_BYTES = 1_048_576
_FETCH_MAX_BYTES = 52_428_800
_RECEIVE_MESSAGE_MAX_BYTES = 100_000_000
_FETCH_KEYS = ("fetch.message.max.bytes", "max.partition.fetch.bytes", "fetch.max.bytes")
#: Room for a record batch's own header and a record's key and headers beside its value.
_BATCH_OVERHEAD = 65_536


def fetch_limits(max_record_bytes: int) -> dict[str, str]:
    """librdkafka's fetch limits for records up to ``max_record_bytes``.

    ``fetch.message.max.bytes`` (alias ``max.partition.fetch.bytes``) is what one partition's
    fetch asks for: at least a record of the limit plus its batch's overhead, so a record under
    the limit is one fetch. It is not a cap: a record batch larger than it is still returned
    whole (KIP-74 on Kafka >= 0.10.1 and Tansu, and librdkafka grows its request on older
    brokers until it fits), so a record over the limit is fetched and made a ``too_large`` dead
    letter by the decode step rather than blocking its partition. ``fetch.max.bytes`` (per fetch
    request, all partitions) must be at least as large, and ``receive.message.max.bytes`` must
    exceed it by 512 (librdkafka checks both at start-up); neither is lowered below its default.

    >>> fetch_limits(1_000_000)["fetch.message.max.bytes"]
    '1065536'
    >>> fetch_limits(200_000_000)["receive.message.max.bytes"]
    '200066048'
    """
    per_partition = max_record_bytes + _BATCH_OVERHEAD
    per_fetch = max(_FETCH_MAX_BYTES, per_partition)
    return {
        "fetch.message.max.bytes": str(max(_FETCH_MESSAGE_MAX_BYTES, per_partition)),
        "fetch.max.bytes": str(per_fetch),
        "receive.message.max.bytes": str(max(_RECEIVE_MESSAGE_MAX_BYTES, per_fetch + 512)),
    }


def kafka_source(settings: Settings, topic: str) -> KafkaRecordSource:
    """A bounded (``tail=False``) or live source over every partition of ``topic``, with
    librdkafka's fetch limits set for ``UNDERTOW_MAX_RECORD_BYTES`` (:func:`fetch_limits`;
    options given in ``UNDERTOW_KAFKA_OPT_*`` win)."""
    opts = settings.librdkafka()
    if "max.partition.fetch.bytes" in opts:  # librdkafka's alias: one of the two, not both
        opts.setdefault("fetch.message.max.bytes", opts.pop("max.partition.fetch.bytes"))
    return KafkaRecordSource(
        settings.brokers,
        [topic],
        tail=settings.tail,
        starting_offset=OFFSET_BEGINNING if settings.start_from == "earliest" else OFFSET_END,
        add_config={**_CONSUMER_DEFAULTS, **fetch_limits(settings.max_record_bytes), **opts},
        batch_size=settings.source_batch_size,
        setting=next(
            (f"UNDERTOW_{name.upper()}"
             for name in ("events_topic", "labels_topic", "control_topic")
             if getattr(settings, name) == topic),
            None,
        ),
    )


def partition_count(settings: Settings, topic: str, timeout: float = 10.0) -> int | None:
    """How many partitions ``topic`` has, or None if the broker does not list it.

    Lists all topics rather than naming one: naming a topic in a metadata request can create it
    (Tansu does, as does Kafka with ``auto.create.topics.enable``).
    """
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers,
                         **settings.librdkafka()})
    md = admin.list_topics(timeout=timeout)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        return None
    return len(t.partitions)


#: librdkafka's default ``message.max.bytes`` (the producer's limit on one record).
_MESSAGE_MAX_BYTES = 1_000_000
#: What librdkafka counts beside key, value and headers in a record's size, with room to spare.
_RECORD_OVERHEAD = 512
#: The header of a dead letter written with its value cut: the original value's length.
TRUNCATED_HEADER = "undertow.error.truncated"
KEY_TRUNCATED_HEADER = "undertow.error.key_truncated"

#: ``shrink(encoded, limit)``: the record cut to at most ``limit`` bytes, or None if it cannot be.
Shrink = Callable[[Encoded, int], "Encoded | None"]


def truncate_dead_letter(enc: Encoded, limit: int) -> Encoded | None:
    """A dead letter cut to fit ``limit`` bytes: its value's first bytes (and its key's, if the
    key alone is over a quarter of the limit), with headers giving the original lengths; None
    if nothing is left to cut.

    >>> key, value, headers = truncate_dead_letter((b"k", b"x" * 5000, []), 2000)
    >>> key, len(value), headers
    (b'k', 1459, [('undertow.error.truncated', b'5000')])
    """
    key, value, headers = enc
    hdrs = list(headers or [])
    names = {h for h, _ in hdrs}
    if key is not None and len(key) > limit // 4:
        if KEY_TRUNCATED_HEADER not in names:
            hdrs.append((KEY_TRUNCATED_HEADER, str(len(key)).encode()))
        key = key[: limit // 4]
    if TRUNCATED_HEADER not in names:
        hdrs.append((TRUNCATED_HEADER, str(len(value or b"")).encode()))
    room = limit - _RECORD_OVERHEAD - len(key or b"") - sum(len(h) + len(v) for h, v in hdrs)
    cut = (value or b"")[: max(0, room)]
    if len(cut) == len(value or b"") and key == enc[0]:
        return None  # nothing was cut: the headers alone are over the limit
    return key, cut, hdrs


def _too_large(ex: KafkaException) -> bool:
    err = ex.args[0] if ex.args else None
    return isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE


class _ProducerPartition(StatelessSinkPartition[X], Generic[X]):
    """One worker's producer. A record over the producer's ``message.max.bytes`` (refused by
    ``produce``) or the broker's limit (refused in its delivery report) never fails the batch:
    ``shrink`` cuts it to fit (dead letters) or, without one, it is dropped; both are counted in
    ``undertow_sink_oversized_total{step,action}``. Any other delivery error fails the batch."""

    def __init__(
        self,
        producer: Producer,
        topic: str,
        encode: Callable[[X], Encoded],
        after_write: Callable[[list[X]], None] | None,
        on_close: Callable[[], None] | None = None,
        *,
        shrink: Shrink | None = None,
        max_bytes: int = _MESSAGE_MAX_BYTES,
        step_id: str = "",
        topic_of: Callable[[X], str | None] | None = None,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._topic_of = topic_of
        self._encode = encode
        self._after_write = after_write
        self._on_close = on_close
        self._shrink = shrink
        self._max_bytes = max_bytes
        self._step_id = step_id
        self._errors: list[str] = []
        # Refused by the broker as too large, with their topic: cut and resent.
        self._refused: list[tuple[Encoded, str]] = []

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            return
        if isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            self._refused.append(((msg.key(), msg.value(), msg.headers()), msg.topic()))
        else:
            self._errors.append(str(err))

    def _oversized(self, enc: Encoded, limit: int) -> Encoded | None:
        """``enc`` cut to ``limit`` bytes, or None (dropped); counted either way."""
        shrunk = self._shrink(enc, limit) if self._shrink is not None else None
        action = "dropped" if shrunk is None else "truncated"
        metrics.SINK_OVERSIZED.labels(step=self._step_id, action=action).inc()
        return shrunk

    def _produce(self, enc: Encoded, topic: str | None = None) -> None:
        key, value, headers = enc
        topic = topic or self._topic
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers,
                                       on_delivery=self._on_delivery)
                return
            except BufferError:  # local queue full: let librdkafka drain it, then retry
                self._producer.poll(0.05)
            except KafkaException as ex:
                if not _too_large(ex):
                    raise
                shrunk = self._oversized((key, value, headers), self._max_bytes)
                if shrunk is None:
                    return
                key, value, headers = shrunk

    def write_batch(self, items: list[X]) -> None:
        encode = self._encode
        topic_of = self._topic_of
        if topic_of is None:
            for item in items:
                self._produce(encode(item))
        else:
            for item in items:
                self._produce(encode(item), topic_of(item))
        self._producer.flush()
        for _ in range(32):  # the broker's limit is not known here: halve until it accepts
            if not self._refused:
                break
            refused, self._refused = self._refused, []
            for enc, topic in refused:
                size = len(enc[0] or b"") + len(enc[1] or b"")
                size += sum(len(h) + len(v or b"") for h, v in enc[2] or [])
                shrunk = self._oversized(enc, min(self._max_bytes, size // 2))
                if shrunk is not None:
                    self._produce(shrunk, topic)
            self._producer.flush()
        if self._errors or self._refused:
            errors, self._errors = self._errors, []
            errors += [f"{len(self._refused)} records refused as too large"] if self._refused \
                else []
            self._refused = []
            raise KafkaException(
                f"could not write {len(errors)} records to {self._topic!r}: {errors[0]}")
        if self._after_write is not None:
            self._after_write(items)

    def close(self) -> None:
        self._producer.flush()
        if self._on_close is not None:  # a bounded run: the last partition prints the summary
            self._on_close()


class ProducerSink(DynamicSink[X], Generic[X]):
    """Write records to one topic through ``encode(record) -> (key, value, headers)``; with
    ``topic_of``, each record to the topic it names (None: the sink's topic)."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        encode: Callable[[X], Encoded],
        after_write: Callable[[list[X]], None] | None = None,
        *,
        shrink: Shrink | None = None,
        topic_of: Callable[[X], str | None] | None = None,
    ) -> None:
        self._shrink = shrink
        self._topic_of = topic_of
        self._config = {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "linger.ms": 5,
            "queue.buffering.max.messages": 1_000_000,
            # The delivery callback runs on this (the worker's) thread: only for failures.
            "delivery.report.only.error": True,
            **settings.librdkafka(),
        }
        self._topic = topic
        self._encode = encode
        self._after_write = after_write
        self._bounded = not settings.tail

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ProducerPartition[X]:
        on_close = (summary.END_OF_RUN.opened(step_id, worker_index, worker_count)
                    if self._bounded else None)
        max_bytes = int(self._config.get("message.max.bytes", _MESSAGE_MAX_BYTES))
        return _ProducerPartition(
            Producer(self._config), self._topic, self._encode, self._after_write, on_close,
            shrink=self._shrink, max_bytes=max_bytes, step_id=step_id, topic_of=self._topic_of,
        )


def encode_prediction(p: Prediction) -> Encoded:
    return p.key.encode(), p.to_json(), None


def encode_dead_letter(d: DeadLetter) -> Encoded:
    """The raw bytes untouched as the value, the error in headers (as Kafka Connect does)."""
    return d.key, d.raw, d.headers()


def observe_processing_latency(predictions: list[Prediction]) -> None:
    """Record read -> prediction written, once the batch is on the broker."""
    now = time.time()
    by_model: dict[str, list[float]] = {}
    for p in predictions:
        by_model.setdefault(p.model, []).append(now - p.read_at)
    for model, values in by_model.items():
        metrics.PROCESSING_LATENCY.observe_many(values, model)


def prediction_sink(settings: Settings) -> ProducerSink[Prediction]:
    return ProducerSink(
        settings, settings.predictions_topic, encode_prediction, observe_processing_latency
    )


def shadow_sink(settings: Settings) -> ProducerSink[Prediction]:
    """The challengers' shadow predictions, to ``UNDERTOW_SHADOW_TOPIC``."""
    return ProducerSink(settings, settings.shadow_topic, encode_prediction)


def window_sink(settings: Settings) -> ProducerSink[Any]:
    """Closed window aggregates, to ``UNDERTOW_FEATURES_TOPIC``, keyed by entity."""
    return ProducerSink(settings, settings.features_topic,
                        lambda w: (w.key.encode(), w.to_json(), None))


def dead_letter_sink(settings: Settings) -> ProducerSink[DeadLetter]:
    """Dead letters, to ``UNDERTOW_DEADLETTER_TOPIC``; one over the producer's or the broker's
    size limit is written with its value cut (:func:`truncate_dead_letter`)."""
    return ProducerSink(settings, settings.deadletter_topic, encode_dead_letter,
                        shrink=truncate_dead_letter)
