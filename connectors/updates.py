"""How model updates travel from the trainer to the scoring replicas (replicated mode).

The trainer's :class:`~undertow.replica.ModelUpdate` records go to a sink; every replica polls a
*feed* for the newest one before each batch it serves (:mod:`operators.replicas`). Two
transports, one interface (``sink()`` for the graph, ``feed()`` per replica):

* :class:`KafkaUpdates`: the ``UNDERTOW_MODEL_UPDATES_TOPIC`` topic (one partition, which keeps
  the updates in order). Each replica reads it with its own consumer, from the newest update
  on the broker when it starts (a restarted process serves the trainer's latest models at
  once), with no consumer group. The records are pickles: only the trainer may write to that
  topic (an ACL on a shared cluster), as only undertow writes its checkpoint directory.
* :class:`MemoryUpdates`: in one process (tests, ``-w N`` workers without Kafka): the sink
  keeps the newest update and every feed reads it.

A record that is not an update is logged and skipped: a replica keeps serving the models it
has (and ``undertow_model_updates_applied_total`` stops growing).
"""

from __future__ import annotations

import logging
import pickle
import threading
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Consumer, KafkaError, TopicPartition

from connectors.kafka import (
    EXIT_BAD_SETTING,
    Encoded,
    KafkaFault,
    ProducerSink,
    fail,
    quiet,
)
from connectors.settings import Settings
from undertow.replica import ModelUpdate

log = logging.getLogger("undertow.updates")


def encode_update(u: ModelUpdate) -> Encoded:
    """Keyed by the model step's name; the value is the pickled update."""
    return u.model.encode(), pickle.dumps(u, protocol=pickle.HIGHEST_PROTOCOL), None


def decode_update(value: bytes | None) -> ModelUpdate | None:
    """The update in a record's value, or None (logged) if it is not one."""
    try:
        u = pickle.loads(value or b"")
    except Exception as ex:  # not an update: the replica keeps its models
        log.error("model updates: a record that is not an update (%s: %s)",
                  type(ex).__name__, ex)
        return None
    if not isinstance(u, ModelUpdate):
        log.error("model updates: a record that is not an update (%s)", type(u).__name__)
        return None
    return u


def require_topic(client: Any, settings: Settings, topic: str, timeout_s: float = 10.0) -> Any:
    """The updates topic's metadata; a missing topic is a bad setting, one line, exit 2. All
    topics are listed: asking for one by name may create it (auto-creation), and so would the
    trainer's first update, with the broker's default partitions."""
    md = client.list_topics(timeout=timeout_s)
    t = md.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        why = "it does not exist" if t is None or not t.partitions else t.error.str()
        fail(KafkaFault("bad_setting", f"undertow: bad setting: UNDERTOW_MODEL_UPDATES_TOPIC: "
                        f"cannot read Kafka topic {topic!r} from "
                        f"{settings.kafka_bootstrap_servers}: {why} (replicated mode: create "
                        "it, one partition)", EXIT_BAD_SETTING, topic))
    return t


class _UpdatesSink(ProducerSink[ModelUpdate]):
    """The trainer's sink: the topic must exist before the first update is written."""

    def __init__(self, settings: Settings, topic: str) -> None:
        super().__init__(settings, topic, encode_update)
        self._settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> Any:
        part = super().build(step_id, worker_index, worker_count)
        require_topic(part._producer, self._settings, self._topic)
        return part


class KafkaUpdateFeed:
    """One replica's reader of the updates topic: :meth:`poll` returns the newest update read
    since the last call, or None."""

    def __init__(self, settings: Settings, topic: str, *, timeout_s: float = 10.0) -> None:
        self._topic = topic
        config = {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": "undertow-unused",  # assigned, never subscribed: no group is joined
            "enable.auto.commit": "false",
            "fetch.wait.max.ms": "50",
            **{k: v for k, v in settings.librdkafka().items() if k != "message.timeout.ms"},
        }
        self._consumer = Consumer(quiet(config))
        t = require_topic(self._consumer, settings, topic, timeout_s)
        parts = []
        for p in sorted(t.partitions):
            low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                             timeout=timeout_s)
            parts.append(TopicPartition(topic, p, max(low, high - 1)))  # the newest, on
        self._consumer.assign(parts)

    def poll(self) -> ModelUpdate | None:
        newest = None
        while True:
            msgs = self._consumer.consume(100, 0)
            if not msgs:
                return newest
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.error("model updates: %s", err)
                    continue
                u = decode_update(m.value())
                if u is not None:
                    newest = u

    def close(self) -> None:
        self._consumer.close()


class KafkaUpdates:
    """Model updates over the ``UNDERTOW_MODEL_UPDATES_TOPIC`` topic."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.model_updates_topic

    def sink(self) -> ProducerSink[ModelUpdate]:
        return _UpdatesSink(self.settings, self.topic)

    def feed(self) -> KafkaUpdateFeed:
        return KafkaUpdateFeed(self.settings, self.topic)


class _MemoryFeed:
    def __init__(self, bus: MemoryUpdates) -> None:
        self._bus = bus
        self._seen: ModelUpdate | None = None

    def poll(self) -> ModelUpdate | None:
        u = self._bus.latest
        if u is None or u is self._seen:
            return None
        self._seen = u
        return u

    def close(self) -> None:
        pass


class _MemoryPartition(StatelessSinkPartition[ModelUpdate]):
    def __init__(self, bus: MemoryUpdates) -> None:
        self._bus = bus

    def write_batch(self, items: list[ModelUpdate]) -> None:
        if items:
            with self._bus.lock:
                self._bus.latest = items[-1]


class MemoryUpdates(DynamicSink[ModelUpdate]):
    """Model updates within one process: the newest one, read by every feed."""

    def __init__(self) -> None:
        self.latest: ModelUpdate | None = None
        self.lock = threading.Lock()

    def sink(self) -> MemoryUpdates:
        return self

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _MemoryPartition:
        return _MemoryPartition(self)

    def feed(self) -> Any:
        return _MemoryFeed(self)
