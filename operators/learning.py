"""The model step: one stateful step that receives events and labels, serves and learns.

Bytewax dataflows are acyclic, so "predict now, learn later" cannot send a label back to an
earlier step. Both streams are keyed by the model's name and merged into one ``stateful_batch``
whose state is an :class:`undertow.learning.OnlineLearner` (model, pending predictions, held
labels, quality metrics): all of it is snapshotted by Bytewax recovery together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from connectors import metrics
from undertow.learning import EXPIRY_CAPACITY, EXPIRY_TTL, LearnerCounts, OnlineLearner
from undertow.schema import DeadLetter, FeaturedEvent, Label, Prediction

__all__ = ["LearnOut", "OnlineLearner", "serve_and_learn"]


@dataclass(frozen=True)
class LearnOut:
    """Served predictions, and the labels (or events) that could not be used."""

    predictions: Stream[Prediction]
    errs: Stream[DeadLetter]


class _MetricsPump:
    """Moves a learner's counts and observations into Prometheus after each batch."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.seen = LearnerCounts()
        m = model
        self.predictions = metrics.PREDICTIONS.labels(model=m)
        self.learned = metrics.LABELS_LEARNED.labels(model=m)
        self.expired = {
            why: metrics.PENDING_EXPIRED.labels(model=m, reason=why)
            for why in (EXPIRY_TTL, EXPIRY_CAPACITY)
        }
        self.early = metrics.EARLY_LABELS.labels(model=m)
        self.early_expired = metrics.EARLY_LABELS_EXPIRED.labels(model=m)
        self.duplicates = metrics.DUPLICATE_EVENTS.labels(model=m)
        self.seen_detections: dict[tuple[str, str, str], int] = {}
        self.seen_refreshes = 0

    def pump(self, learner: OnlineLearner, step_id: str) -> None:
        c, s = learner.counts, self.seen
        self.predictions.inc(c.events - c.duplicate_events - (s.events - s.duplicate_events))
        self.learned.inc(c.learned - s.learned)
        for why, counter in self.expired.items():
            counter.inc(c.pending_expired[why] - s.pending_expired[why])
        self.early.inc(c.early_labels - s.early_labels)
        self.early_expired.inc(c.early_expired - s.early_expired)
        self.duplicates.inc(c.duplicate_events - s.duplicate_events)
        self._pump_drift(learner)
        for reason, n in c.label_dead_letters.items():
            d = n - s.label_dead_letters.get(reason, 0)
            if d:
                metrics.DEAD_LETTERS.labels(step=step_id, reason=reason).inc(d)
        if c.duplicate_events != s.duplicate_events:
            metrics.DEAD_LETTERS.labels(step=step_id, reason="duplicate_event").inc(
                c.duplicate_events - s.duplicate_events
            )
        self.seen = _copy_counts(c)
        m = self.model
        metrics.LABEL_DELAY.observe_many(learner.label_delays_s, m)
        learner.label_delays_s.clear()
        metrics.EVENT_LAG.observe_many(learner.event_lags_s, m)
        learner.event_lags_s.clear()
        metrics.PENDING.labels(model=m).set(len(learner.pending))
        metrics.EARLY_WAITING.labels(model=m).set(len(learner.early))
        metrics.LABELS_WAITING.labels(model=m).set(learner.waiting_labels)
        q = learner.quality()
        metrics.ACCURACY.labels(model=m).set(q["accuracy"])
        metrics.LOG_LOSS.labels(model=m).set(q["log_loss"])
        metrics.ROC_AUC.labels(model=m).set(q["roc_auc"])
        metrics.MODEL_VERSION.labels(model=m).set(learner.version)
        if learner.last_learn_at is not None:
            metrics.LAST_LEARN.labels(model=m).set(learner.last_learn_at)
        if learner.clock is not None:
            metrics.MODEL_CLOCK.labels(model=m).set(learner.clock / 1000.0)


    def _pump_drift(self, learner: OnlineLearner) -> None:
        m = self.model
        for stream, cd in (("error", learner.error_drift), ("score", learner.score_drift)):
            for (detector, direction), n in cd.detections.items():
                key = (stream, detector, direction)
                d = n - self.seen_detections.get(key, 0)
                counter = metrics.CONCEPT_DRIFT_DETECTIONS.labels(
                    model=m, detector=detector, stream=stream, direction=direction
                )
                if d:
                    counter.inc(d)
                self.seen_detections[key] = n
            metrics.CONCEPT_DRIFT_ESTIMATE.labels(model=m, detector="adwin", stream=stream).set(
                cd.estimate
            )
        fd = learner.feature_drift
        for feature, (psi, ks) in fd.scores.items():
            metrics.FEATURE_PSI.labels(model=m, feature=feature).set(psi)
            metrics.FEATURE_KS.labels(model=m, feature=feature).set(ks)
        refreshes = metrics.FEATURE_REFERENCE_REFRESHES.labels(model=m)
        if fd.refreshes != self.seen_refreshes:
            refreshes.inc(fd.refreshes - self.seen_refreshes)
            self.seen_refreshes = fd.refreshes


class _LearnerLogic(StatefulBatchLogic[Any, Any, OnlineLearner]):
    def __init__(self, step_id: str, learner: OnlineLearner) -> None:
        self.step_id = step_id
        self.learner = learner
        self.pump = _MetricsPump(learner.name)
        # A resumed learner's counts were exported by the process that snapshotted it.
        self.pump.seen = _copy_counts(learner.counts)
        self.pump.seen_detections = {
            (stream, det, direction): n
            for stream, cd in (("error", learner.error_drift), ("score", learner.score_drift))
            for (det, direction), n in cd.detections.items()
        }
        self.pump.seen_refreshes = learner.feature_drift.refreshes

    def on_batch(self, values: list[Any]) -> tuple[list[Any], bool]:
        out: list[Any] = []
        learner = self.learner
        on_event = learner.on_event
        on_label = learner.on_label
        # Serve each batch in record-time order: a label before an event at the same time (the
        # tie rule of river's simulate_qa), events by id. Upstream grouping by key reorders.
        values.sort(key=_record_order)
        for v in values:
            if type(v) is FeaturedEvent:
                on_event(v, out)
            else:
                on_label(v, out)
        self.pump.pump(learner, self.step_id)
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Any], bool]:
        out: list[Any] = []
        self.learner.on_end(out)
        self.pump.pump(self.learner, self.step_id)
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> OnlineLearner:
        return self.learner


def _record_order(v: FeaturedEvent | Label) -> tuple[int, int, str]:
    if type(v) is FeaturedEvent:
        return (v.event.ts, 1, v.event.event_id)
    return (v.ts, 0, v.event_id)  # type: ignore[union-attr]


def _copy_counts(c: LearnerCounts) -> LearnerCounts:
    return LearnerCounts(
        c.events, c.labels, c.learned, c.duplicate_events, dict(c.pending_expired),
        c.early_labels, c.early_expired, dict(c.label_dead_letters),
    )


@operator
def serve_and_learn(
    step_id: str,
    events: Stream[FeaturedEvent],
    labels: Stream[Label],
    *,
    model_name: str,
    make_learner: Callable[[], OnlineLearner],
) -> LearnOut:
    """Score every event with the learner's model and learn from each label when it is due.

    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSource, TestingSink, run_main
    >>> from river import linear_model
    >>> from undertow.schema import Event
    >>> flow = Dataflow("learn_eg")
    >>> evs = op.input("evs", flow, TestingSource(
    ...     [FeaturedEvent(Event("e1", "c1", 1000, {}), {"x": 1.0})]))
    >>> lbs = op.input("lbs", flow, TestingSource([]))
    >>> out = serve_and_learn("model", evs, lbs, model_name="m", make_learner=lambda: OnlineLearner(
    ...     "m", linear_model.LogisticRegression(), label_ttl_ms=60_000,
    ...     early_label_ttl_ms=0, wall_clock=lambda: 0.0))
    >>> preds = []
    >>> op.output("out", out.predictions, TestingSink(preds))
    >>> run_main(flow)
    >>> [(p.event_id, p.score, p.predicted, p.model) for p in preds]
    [('e1', 0.5, True, 'm')]
    """
    name = model_name
    metrics.declare_reasons(step_id)
    ke = op.key_on("key_events", events, lambda _: name)
    kl = op.key_on("key_labels", labels, lambda _: name)
    merged = op.merge("merge", ke, kl)

    def build(resume: OnlineLearner | None) -> _LearnerLogic:
        learner = resume if resume is not None else make_learner()
        if learner.name != name:
            raise ValueError(
                f"serve_and_learn {step_id!r}: learner is named {learner.name!r}, "
                f"expected {name!r}"
            )
        return _LearnerLogic(step_id, learner)

    out = op.key_rm("unkey", op.stateful_batch("learner", merged, build))
    split = op.branch("split", out, lambda x: type(x) is Prediction)
    return LearnOut(split.trues, split.falses)  # type: ignore[arg-type]
