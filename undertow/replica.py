"""Scoring replicas and the model updates that keep them current (replicated mode).

In replicated mode (``UNDERTOW_MODEL_MODE=replicated``, docs/scaling.md) every worker serves
the events its feature shards produce with a :class:`Replica`: copies of the trainer's models
that score and never learn. One trainer (the model step, :class:`~undertow.learning.OnlineLearner`
fed :class:`~undertow.serving.Served` records) joins the labels with what was served, learns,
and publishes a :class:`ModelUpdate` every N labels or T ms (:class:`UpdatePolicy`); each
replica swaps in the newest one it has read.

* **Replicas never learn.** They call only the target's ``serve`` (River's ``predict_*``, which
  leaves a pipeline's unsupervised steps untouched outside ``compose.learn_during_predict``).
* **Every prediction names the version that made it**: ``model_version`` and ``labels_learned``
  are those of the copy that served it.
* **Staleness** is the labels the trainer's champion has learned that the replica's copy had
  not when it served; the trainer measures it on every served record
  (``undertow_replica_staleness_labels``).
"""

from __future__ import annotations

import pickle
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from undertow.schema import MODEL_ERROR, DeadLetter, FeaturedEvent, Prediction
from undertow.serving import Served, answer_slots, serve_slots
from undertow.targets import Target


class ModelUpdate(NamedTuple):
    """The trainer's models at one moment: ``slots`` are (name, version, labels learned) in
    slot order, ``models`` their models (name -> model, pickled together so an ensemble keeps
    its components, then zlib-compressed); ``seq`` counts the trainer's updates."""

    model: str
    seq: int
    champion: str
    ensemble: str | None
    slots: tuple[tuple[str, int, int], ...]
    models: bytes
    published_at: float

    def load(self) -> dict[str, Any]:
        """The models, name -> model."""
        return pickle.loads(zlib.decompress(self.models))


def pack(learner: Any, seq: int, now: float) -> ModelUpdate:
    """A :class:`ModelUpdate` of the slots of ``learner``, an
    :class:`~undertow.learning.OnlineLearner`."""
    slots = learner.champions.slots
    blob = zlib.compress(pickle.dumps({n: s.model for n, s in slots.items()},
                                      protocol=pickle.HIGHEST_PROTOCOL), 1)
    return ModelUpdate(learner.name, seq, learner.champions.champion, learner.ensemble,
                       tuple((n, s.version, s.labels_learned) for n, s in slots.items()),
                       blob, now)


@dataclass(frozen=True)
class UpdatePolicy:
    """Publish after ``every_labels`` labels learned, or ``every_ms`` after the first label
    learned since the last update, whichever comes first (nothing learned: nothing to publish)."""

    every_labels: int = 500
    every_ms: int = 1000

    def due(self, learned_since: int, since_first_ms: float) -> bool:
        return learned_since >= self.every_labels or (
            learned_since > 0 and since_first_ms >= self.every_ms)


@dataclass
class ReplicaSlot:
    """A replica's copy of one of the trainer's slots."""

    name: str
    model: Any
    version: int
    labels_learned: int


class Replica:
    """Copies of a model step's models on one worker, serving events and requests.

    >>> from undertow.learning import LearnerConfig, OnlineLearner
    >>> from undertow.schema import Event
    >>> from river import linear_model
    >>> trainer = OnlineLearner("m", linear_model.LogisticRegression(),
    ...                         LearnerConfig(label_ttl_ms=60_000, early_label_ttl_ms=0))
    >>> r = Replica.of(trainer, wall_clock=lambda: 0.0)
    >>> out = []
    >>> s = r.serve(FeaturedEvent(Event("e1", "c1", 1000, {}), {"x": 1.0}), out)
    >>> [(p.event_id, p.score, p.model, p.labels_learned) for p in out], s.served
    ([('e1', 0.5, 'm', 0)], {'m': 0.5})
    """

    def __init__(self, name: str, target: Target, slots: list[ReplicaSlot], champion: str,
                 ensemble: str | None = None,
                 wall_clock: Callable[[], float] | None = time.time) -> None:
        self.name = name
        self.target = target
        self.slots = {s.name: s for s in slots}
        self.champion = champion
        self.ensemble = ensemble
        self.wall_clock = wall_clock
        #: the seq of the update in use (0: the models the replica started with)
        self.seq = 0
        self.published_at: float | None = None
        self.model_errors = 0

    @classmethod
    def of(cls, learner: Any, *, wall_clock: Callable[[], float] | None = time.time) -> Replica:
        """A replica of ``learner``'s slots, sharing its models: give it a learner of its own
        (a fresh one from the same settings starts from the same models)."""
        slots = [ReplicaSlot(s.name, s.model, s.version, s.labels_learned)
                 for s in learner.champions.slots.values()]
        return cls(learner.name, learner.target, slots, learner.champions.champion,
                   learner.ensemble, wall_clock)

    def apply(self, update: ModelUpdate) -> None:
        """Swap in the models of ``update`` (the newest the replica has read)."""
        models = update.load()
        self.slots = {name: ReplicaSlot(name, models[name], version, learned)
                      for name, version, learned in update.slots}
        self.champion = update.champion
        self.ensemble = update.ensemble
        self.seq = update.seq
        self.published_at = update.published_at

    @property
    def labels_learned(self) -> int:
        """The labels the served copy of the champion has learned."""
        return self.slots[self.champion].labels_learned

    def serve(self, fe: FeaturedEvent, out: list[Any]) -> Served:
        """Score ``fe`` with every copy (predictions to ``out``, a dead letter for a model that
        fails) and return what the trainer needs to learn on it."""
        ev = fe.event
        now = self.wall_clock() if self.wall_clock is not None else ev.ts / 1000.0

        def failed(model: str, ex: Exception) -> None:
            self.model_errors += 1
            out.append(DeadLetter.of_event(
                ev, MODEL_ERROR,
                f"model {model!r} failed to score {ev.event_id!r}: {type(ex).__name__}: {ex}",
                self.name))

        served = serve_slots(self.slots.values(), self.champion, self.ensemble, self.target,
                             fe, now, out, failed)
        return Served(ev, fe.features, served, self.labels_learned)

    def answer(self, fe: FeaturedEvent) -> Prediction:
        """The champion's prediction for a request's features; nothing changes."""
        now = self.wall_clock() if self.wall_clock is not None else fe.event.ts / 1000.0
        return answer_slots(self.slots, self.champion, self.ensemble, self.target, fe, now)
