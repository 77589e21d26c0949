"""Kafka sources and sinks of the dataflows (confluent-kafka underneath).

Sources are Bytewax's own :class:`~bytewax.connectors.kafka.KafkaSource`: one Bytewax partition
per Kafka partition, offsets kept by Bytewax recovery (no consumer group), consumer errors turned
into values (``raise_on_errors=False``) so they reach the dead-letter topic instead of crashing.

Sinks encode records once and flush once per batch, so a batch is on the broker before Bytewax
can close the epoch that produced it (at-least-once; keys make duplicates harmless).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

from bytewax.connectors.kafka import KafkaSource
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from connectors import metrics
from connectors.settings import Settings
from undertow.schema import DeadLetter, Prediction

X = TypeVar("X")

Encoded = tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]


_CONSUMER_DEFAULTS = {
    # A short fetch wait bounds latency on a quiet topic (Tansu answers a waiting fetch only when
    # this runs out; Kafka answers as soon as data arrives). Overridable like any option.
    "fetch.wait.max.ms": "20",
}


class _Source(KafkaSource):
    """Bytewax's KafkaSource, listing partitions without the consumer-only options (which the
    admin client would warn about)."""

    def list_parts(self) -> list[str]:
        consumer_only = self._add_config
        self._add_config = {k: v for k, v in consumer_only.items() if k not in _CONSUMER_DEFAULTS}
        try:
            return super().list_parts()
        finally:
            self._add_config = consumer_only


def kafka_source(settings: Settings, topic: str) -> KafkaSource:
    """A bounded (``tail=False``) or live source over every partition of ``topic``."""
    return _Source(
        settings.brokers,
        [topic],
        tail=settings.tail,
        starting_offset=OFFSET_BEGINNING if settings.start_from == "earliest" else OFFSET_END,
        add_config={**_CONSUMER_DEFAULTS, **settings.librdkafka()},
        batch_size=settings.source_batch_size,
        raise_on_errors=False,
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


class _ProducerPartition(StatelessSinkPartition[X], Generic[X]):
    def __init__(
        self,
        producer: Producer,
        topic: str,
        encode: Callable[[X], Encoded],
        after_write: Callable[[list[X]], None] | None,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._encode = encode
        self._after_write = after_write
        self._errors: list[str] = []

    def _on_delivery(self, err: object, _msg: object) -> None:
        if err is not None:
            self._errors.append(str(err))

    def write_batch(self, items: list[X]) -> None:
        produce = self._producer.produce
        topic = self._topic
        encode = self._encode
        cb = self._on_delivery
        for item in items:
            key, value, headers = encode(item)
            while True:
                try:
                    produce(topic, value, key, headers=headers, on_delivery=cb)
                    break
                except BufferError:  # local queue full: let librdkafka drain it, then retry
                    self._producer.poll(0.05)
        self._producer.flush()
        if self._errors:
            errors, self._errors = self._errors, []
            raise KafkaException(f"could not write {len(errors)} records to {topic!r}: {errors[0]}")
        if self._after_write is not None:
            self._after_write(items)

    def close(self) -> None:
        self._producer.flush()


class ProducerSink(DynamicSink[X], Generic[X]):
    """Write records to one topic through ``encode(record) -> (key, value, headers)``."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        encode: Callable[[X], Encoded],
        after_write: Callable[[list[X]], None] | None = None,
    ) -> None:
        self._config = {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "linger.ms": 5,
            "queue.buffering.max.messages": 1_000_000,
            **settings.librdkafka(),
        }
        self._topic = topic
        self._encode = encode
        self._after_write = after_write

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ProducerPartition[X]:
        return _ProducerPartition(
            Producer(self._config), self._topic, self._encode, self._after_write
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


def dead_letter_sink(settings: Settings) -> ProducerSink[DeadLetter]:
    return ProducerSink(settings, settings.deadletter_topic, encode_dead_letter)
