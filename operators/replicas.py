"""The scoring replicas of replicated mode: every worker serves the events it has, no exchange.

:func:`serve_replicas` is a stateless Bytewax step: it runs on whichever worker a featured event
is on (the worker of its last feature shard), so decoding, features and serving scale with the
workers and processes. Each process keeps one :class:`~undertow.replica.Replica`, built on
first use and shared by its workers, and before each batch polls its *feed*
(:mod:`connectors.updates`) for the newest model update. A replica's state is derived: after a
restart it starts from the newest update on the feed, so Bytewax need not snapshot it.

Each batch comes out as one bundle (predictions, shadow predictions, served records, replies,
dead letters), split into streams by list, not record by record.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from connectors import metrics
from operators.learning import answer_request
from undertow.replica import Replica
from undertow.requests import Reply
from undertow.schema import DeadLetter, FeaturedEvent, Prediction
from undertow.serving import Served

class _Bundle(NamedTuple):
    predictions: list[Prediction]
    shadow: list[Prediction]
    served: list[Served]
    replies: list[Reply]
    errs: list[DeadLetter]


@dataclass(frozen=True)
class ReplicaOut:
    """The champion's predictions, the challengers' shadow predictions, what was served (for
    the trainer: one list per batch, so that a batch crosses to the trainer's process as one
    item, not one per record), replies to requests, and dead letters (a model that failed to
    score)."""

    predictions: Stream[Prediction]
    shadow: Stream[Prediction]
    served: Stream[list[Served]]
    replies: Stream[Reply]
    errs: Stream[DeadLetter]


class _Worker:
    """One process's replica and feed."""

    def __init__(self, replica: Replica, feed: Any, reply_extra: dict[str, Any]) -> None:
        self.replica = replica
        self.feed = feed
        self.reply_extra = reply_extra
        self._applied = metrics.UPDATES_APPLIED.labels(model=replica.name)

    def on_batch(self, batch: list[FeaturedEvent]) -> _Bundle:
        r = self.replica
        update = self.feed.poll()
        if update is not None:
            r.apply(update)
            self._applied.inc()
        preds: list[Prediction] = []
        shadow: list[Prediction] = []
        served: list[Served] = []
        replies: list[Reply] = []
        errs: list[DeadLetter] = []
        out: list[Any] = []
        for fe in batch:
            if fe.request is not None:
                replies.append(answer_request(r.answer, fe, self.reply_extra))
                continue
            served.append(r.serve(fe, out))
            for x in out:
                if type(x) is Prediction:
                    (preds if x.served else shadow).append(x)
                else:
                    errs.append(x)
            out.clear()
        return _Bundle(preds, shadow, served, replies, errs)


@operator
def serve_replicas(
    step_id: str,
    featured: Stream[FeaturedEvent],
    *,
    make_replica: Callable[[], Replica],
    make_feed: Callable[[], Any],
    reply_extra: dict[str, Any] | None = None,
) -> ReplicaOut:
    """Serve every featured event on the worker it is on, with its process's replica.

    ``make_replica`` builds the replica (at run time, on a worker), ``make_feed`` its feed of
    model updates (``poll() -> ModelUpdate | None``). Requests are answered with the replica's
    champion (``reply_extra`` goes into every reply).
    """
    # One replica per process, shared by its workers under a lock: Bytewax may call a step
    # from another thread at each activation (seen with -i/-a), so a thread-local would be
    # built anew per batch, and the workers of one process share the GIL anyway.
    replicas: dict[int, _Worker] = {}
    lock = threading.Lock()
    extra = reply_extra or {}

    def serve_batch(batch: list[FeaturedEvent]) -> list[_Bundle]:
        with lock:
            w = replicas.get(os.getpid())
            if w is None:
                w = replicas[os.getpid()] = _Worker(make_replica(), make_feed(), extra)
            return [w.on_batch(batch)]

    bundles = op.flat_map_batch("serve", featured, serve_batch)
    return ReplicaOut(
        op.flat_map("predictions", bundles, lambda b: b.predictions),
        op.flat_map("shadow", bundles, lambda b: b.shadow),
        op.flat_map("served", bundles, lambda b: [b.served] if b.served else []),
        op.flat_map("replies", bundles, lambda b: b.replies),
        op.flat_map("errs", bundles, lambda b: b.errs),
    )
