"""The fraud job as a hand-written confluent-kafka poll loop: the peer with no framework.

Run by ``benchmarks/speed.py`` (settings: the ``PEER_*`` variables, see
:class:`benchmarks.peers.PeerConfig`)::

    PEER_BOOTSTRAP=127.0.0.1:9092 .venv/bin/python -m benchmarks.peers.kafka_loop

One consumer is assigned every partition of the events and the labels topics from offset 0 and
reads batches of up to 1,000 records until every partition reports its end (partition EOF); an
event gets the fraud features (:class:`undertow.features.SpecState`, as the reference loop
computes them), the model's score and a JSON prediction on the predictions topic; a label is
learned by :class:`benchmarks.peers.Learner`. The fetch wait and the producer's linger are the
live dataflow's (20 ms: the embedded broker holds an empty fetch that long; 5 ms), so the two
differ in the work they do, not in how long they wait. It prints one JSON line of counts, and
at exit when it was done (:func:`benchmarks.peers.stamp_done_at_exit`).
"""

from __future__ import annotations

import time

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from benchmarks.peers import Learner, PeerConfig, prediction_json, stamp_done_at_exit
from undertow.features import SpecState, load_spec
from undertow.reference import FRAUD_SPEC


def main() -> int:
    stamp_done_at_exit()
    cfg = PeerConfig.from_env()
    consumer = Consumer({"bootstrap.servers": cfg.bootstrap, "group.id": "kafka-loop",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "fetch.wait.max.ms": 20})
    producer = Producer({"bootstrap.servers": cfg.bootstrap, "linger.ms": 5,
                         "queue.buffering.max.messages": 1_000_000})
    topics = consumer.list_topics(timeout=10).topics
    parts = [TopicPartition(t, p, OFFSET_BEGINNING)
             for t in (cfg.events_topic, cfg.labels_topic) for p in topics[t].partitions]
    consumer.assign(parts)
    reading = {(tp.topic, tp.partition) for tp in parts}
    features = SpecState(load_spec(FRAUD_SPEC))
    learner = Learner(cfg.model)
    events = labels = late = 0
    while reading:
        batch = consumer.consume(1000, 0.1)
        read_at = time.time()
        for msg in batch:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(err)
                reading.discard((msg.topic(), msg.partition()))
                continue
            rec = orjson.loads(msg.value())
            if msg.topic() == cfg.labels_topic:
                labels += 1
                learner.label(rec)
                continue
            events += 1
            feats = features.update(rec, rec["ts"], msg.partition())
            if feats is None:  # late: not served, as in the reference
                late += 1
                continue
            score = learner.score(rec["event_id"], feats)
            value = prediction_json(rec, score, cfg.model, read_at)
            while True:
                try:
                    producer.produce(cfg.predictions_topic, value, msg.key())
                    break
                except BufferError:  # the local queue is full: let it drain
                    producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(30)
    consumer.close()
    print(orjson.dumps({"events": events, "labels": labels, "late": late,
                        "learned": learner.learned, "unflushed": left}).decode(), flush=True)
    return 1 if left else 0


if __name__ == "__main__":
    raise SystemExit(main())
