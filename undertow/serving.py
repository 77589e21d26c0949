"""Serving one event with a set of model slots: the champion, its challengers, an ensemble.

One function scores an event with every slot and writes one :class:`~undertow.schema.Prediction`
per slot, in the exact mode's model step (:class:`~undertow.learning.OnlineLearner`) and on a
scoring replica (:mod:`undertow.replica`) alike, so both serve by the same rule: each model in
slot order, the ensemble's slot last, combining what the others served; a model that fails is
named in a dead letter and the others still serve. A slot is anything with ``name``, ``model``,
``version`` and ``labels_learned``.

:class:`Served` is what a replica hands the trainer for each event it served: the features and
values it served them with, so the trainer learns on exactly what was served.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from undertow.ensemble import NoComponentScored
from undertow.schema import Event, FeaturedEvent, Prediction
from undertow.targets import Target


class Served(NamedTuple):
    """One event as a scoring replica served it: ``served`` is slot name -> the value it
    served (None: a cold regressor that predicts nothing yet; a slot that failed is absent),
    ``labels_learned`` the champion's labels learned in the replica's copy (which names the
    model update it served with: the trainer's count minus it is the replica's staleness)."""

    event: Event
    features: dict[str, float]
    served: dict[str, Any]
    labels_learned: int


def serve_slots(
    slots: Iterable[Any],
    champion: str,
    ensemble: str | None,
    target: Target,
    fe: FeaturedEvent,
    now: float,
    out: list[Any],
    on_error: Callable[[str, Exception], None],
) -> dict[str, Any]:
    """Score ``fe`` with every slot (``ensemble`` must be the last), append a prediction per
    slot that scored to ``out``, and return slot name -> served value (None included); a slot
    that raised is passed to ``on_error`` and left out."""
    ev = fe.event
    x = fe.features
    serve, decide = target.serve, target.decide
    kind = target.name
    served_by: dict[str, Any] = {}
    scores: dict[str, Any] = {}  # what the ensemble combines: the values, not the Nones
    for slot in slots:
        name = slot.name
        try:
            if name == ensemble:  # the last slot: combines what the others served
                served = slot.model.combine(scores)
                if served is None:
                    raise NoComponentScored("no component scored the event")
            else:
                served = serve(slot.model, x)
        except Exception as ex:  # a model that fails is named; the others still serve
            on_error(name, ex)
            continue
        served_by[name] = served
        if served is None:  # a cold regressor that predicts nothing yet (River's None)
            predicted = None
        else:
            scores[name] = served
            predicted = decide(served)
        out.append(
            Prediction(
                ev.event_id,
                ev.key,
                served if kind == "binary" else None,
                predicted,
                name,
                slot.version,
                slot.labels_learned,
                ev.ts,
                now,
                ev.read_at,
                name == champion,
                served if kind == "multiclass" else None,
            )
        )
    return served_by


def answer_slots(
    slots: dict[str, Any],
    champion: str,
    ensemble: str | None,
    target: Target,
    fe: FeaturedEvent,
    now: float,
) -> Prediction:
    """The champion's prediction for a request's features, as it would serve them now; nothing
    changes (River models do not learn in ``predict_*``). An ensemble champion combines its
    components' values."""
    ev, x = fe.event, fe.features
    slot = slots[champion]
    if champion == ensemble:
        scores = {}
        for name, s in slots.items():
            if name != champion:
                value = target.serve(s.model, x)
                if value is not None:
                    scores[name] = value
        served = slot.model.combine(scores)
    else:
        served = target.serve(slot.model, x)
    kind = target.name
    return Prediction(
        ev.event_id, ev.key, served if kind == "binary" else None,
        None if served is None else target.decide(served), champion, slot.version,
        slot.labels_learned, ev.ts, now, ev.read_at, True,
        served if kind == "multiclass" else None,
    )
