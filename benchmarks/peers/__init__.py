"""The peers of ``benchmarks/speed.py``: the fraud job as a user writes it without undertow.

Two programs do the same job as the live dataflow (``dataflows.stream`` on ``streams/fraud.toml``):
read the events and their delayed labels from Kafka, compute the fraud features, score each event
with the same River model, learn from each label, write one JSON prediction per event:

* :mod:`benchmarks.peers.kafka_loop`: one confluent-kafka consumer poll loop, no framework;
* :mod:`benchmarks.peers.naive_bytewax`: Bytewax's own Kafka connectors and operators
  (``stateful_map`` per card, per merchant and for one global model key).

What they share lives here, so that both do the same work: their settings (``PEER_*`` variables,
set by the benchmark), the model step (:class:`Learner`) and the prediction's wire form
(:func:`prediction_json`), which carries ``read_at`` (epoch s, when the event's batch was read)
so the benchmark measures read -> prediction written from the predictions' own stamps; and
:func:`stamp_done_at_exit`, which says when a process's work was done.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import orjson

from undertow.models import make_model
from undertow.targets import Binary

__all__ = ["DONE_AT", "Learner", "PeerConfig", "prediction_json", "stamp_done_at_exit"]

#: The line :func:`stamp_done_at_exit` prints: ``{"done_at": <epoch s>}``.
DONE_AT = "done_at"


@dataclass(frozen=True)
class PeerConfig:
    """Where a peer reads and writes, and its model: the ``PEER_*`` environment variables."""

    bootstrap: str
    events_topic: str
    labels_topic: str
    predictions_topic: str
    model: str

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> PeerConfig:
        e = os.environ if env is None else env
        return cls(
            bootstrap=e.get("PEER_BOOTSTRAP", "127.0.0.1:9092"),
            events_topic=e.get("PEER_EVENTS_TOPIC", "events"),
            labels_topic=e.get("PEER_LABELS_TOPIC", "labels"),
            predictions_topic=e.get("PEER_PREDICTIONS_TOPIC", "predictions"),
            model=e.get("PEER_MODEL", "logreg"),
        )

    def env(self) -> dict[str, str]:
        """The variables that give this configuration to a peer's process."""
        return {"PEER_BOOTSTRAP": self.bootstrap, "PEER_EVENTS_TOPIC": self.events_topic,
                "PEER_LABELS_TOPIC": self.labels_topic,
                "PEER_PREDICTIONS_TOPIC": self.predictions_topic, "PEER_MODEL": self.model}


class Learner:
    """One model, what it served per event id, and the labels that came before their event.

    As :func:`undertow.reference.run_reference` does: score an event (``P(True)``), keep its
    features, learn once from them when its label comes. A label read before its event (the two
    topics are read side by side, not merged by time) waits for it and is learned right after
    the event is scored, so every label is learned once, as in the reference.

    >>> learner = Learner("logreg")
    >>> learner.label({"event_id": "e1", "is_fraud": True})
    >>> learner.score("e1", {"amount": 1.0}), learner.learned
    (0.5, 1)
    """

    def __init__(self, model: str) -> None:
        self.model = make_model(model)
        self.serve = Binary().serve
        self.served: dict[str, dict[str, float]] = {}
        self.early: dict[str, bool] = {}
        self.learned = 0

    def score(self, event_id: str, features: dict[str, float]) -> float:
        score = self.serve(self.model, features)
        y = self.early.pop(event_id, None)
        if y is None:
            self.served[event_id] = features
        else:
            self.model.learn_one(features, y)
            self.learned += 1
        return score

    def label(self, record: dict[str, Any]) -> None:
        features = self.served.pop(record["event_id"], None)
        if features is None:
            self.early[record["event_id"]] = record["is_fraud"]
        else:
            self.model.learn_one(features, record["is_fraud"])
            self.learned += 1


def prediction_json(event: dict[str, Any], score: float, model: str, read_at: float) -> bytes:
    """One prediction as the peers write it: undertow's fields, plus ``read_at``."""
    return orjson.dumps({
        "event_id": event["event_id"], "key": event["card_id"], "score": score,
        "predicted": score > 0.5, "model": model, "event_ts": event["ts"],
        "processed_at": time.time(), "read_at": read_at,
    })


def stamp_done_at_exit() -> None:
    """Print ``{"done_at": <epoch s>}`` to stdout when the interpreter starts to exit: after the
    program (a ``main``, ``bytewax.run``'s run of a dataflow) has returned, before the modules
    and objects are torn down. The benchmark's rate ends there, for every process alike."""
    atexit.register(lambda: print(orjson.dumps({DONE_AT: time.time()}).decode(), flush=True,
                                  file=sys.stdout))
