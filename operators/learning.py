"""The model step: one stateful step that receives events and labels, serves and learns.

Bytewax dataflows are acyclic, so "predict now, learn later" cannot send a label back to an
earlier step. Both streams are keyed by the model step's name and merged into one
``stateful_batch`` whose state is an :class:`undertow.learning.OnlineLearner` (the champion and
its challengers, pending predictions, held labels, quality metrics): all of it is snapshotted by
Bytewax recovery together. Commands from a control stream (swap in a checkpoint, roll back,
promote, remove) are applied when they arrive, before the batch they came with.

In *ordered* mode (replays) every record carries ``seq``, its position in the replay's merged
input, and the step processes records strictly in ``seq`` order through a reorder buffer; the
records that never reach it (decode dead letters, late events) are fed in as *gaps* so the order
never waits for them. What the models see is then fixed by the data alone, not by how Bytewax
happened to batch or interleave the two branches on this machine.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from connectors import metrics
from undertow.learning import (
    EXPIRY_CAPACITY,
    EXPIRY_TTL,
    LearnerConfig,
    OnlineLearner,
    SlotReport,
    StepReport,
)
from undertow.replica import ModelUpdate, UpdatePolicy, pack
from undertow.requests import Reply, Request, answer, described, error_reply
from undertow.serving import Served
from undertow.schema import (
    BAD_CONTROL,
    CONTROL_COMMANDS,
    INVALID_RECORD,
    MODEL_ERROR,
    Control,
    DeadLetter,
    FeaturedEvent,
    Label,
    ModelSummary,
    Outcome,
    Prediction,
)

__all__ = ["LearnOut", "LearnerConfig", "OnlineLearner", "serve_and_learn"]

log = logging.getLogger("undertow.model")


@dataclass(frozen=True)
class LearnOut:
    """The champion's predictions, the challengers' shadow predictions, the records that could
    not be used, (for backtests) outcomes of learned labels and end-of-input summaries, and the
    replies to requests."""

    predictions: Stream[Prediction]
    shadow: Stream[Prediction]
    errs: Stream[DeadLetter]
    outcomes: Stream[Outcome]
    summaries: Stream[ModelSummary]
    replies: Stream[Reply]
    #: replicated mode: the trainer's model updates (:mod:`undertow.replica`), else empty
    updates: Stream[ModelUpdate]


@dataclass
class ModelStepState:
    """What Bytewax snapshots: the learner, and in ordered mode the reorder buffer."""

    learner: OnlineLearner
    next_seq: int = 0
    buffer: list[tuple[int, int, Any]] = field(default_factory=list)  # (seq, tiebreak, record)
    tiebreak: int = 0
    #: replicated mode: the model updates published (a restart goes on counting)
    updates: int = 0


class _ReportExporter:
    """Exports a learner's :class:`~undertow.learning.StepReport` to Prometheus after each batch.

    Join counts (expiries, early labels, duplicates) are the step's, labelled with the step's
    model name; predictions, learned labels, quality, drift and version are per model slot.
    """

    def __init__(self, model: str) -> None:
        self.name = m = model
        # Series exist at zero from the start, so dashboards show 0 and rate() sees the first count.
        self.expired = {
            why: metrics.PENDING_EXPIRED.labels(model=m, reason=why)
            for why in (EXPIRY_TTL, EXPIRY_CAPACITY)
        }
        self.early = metrics.EARLY_LABELS.labels(model=m)
        self.early_expired = metrics.EARLY_LABELS_EXPIRED.labels(model=m)
        self.duplicates = metrics.DUPLICATE_EVENTS.labels(model=m)
        #: the model whose estimated quality is exported (None: none yet)
        self.estimated: str | None = None

    def export(self, r: StepReport) -> None:
        m = self.name
        for why, counter in self.expired.items():
            counter.inc(r.pending_expired.get(why, 0))
        self.early.inc(r.early_labels)
        self.early_expired.inc(r.early_expired)
        self.duplicates.inc(r.duplicate_events)
        # The dead letters themselves (r.label_dead_letters, duplicates) are counted once, by
        # the graph's dead-letter tap, under the step their records name.
        metrics.LABEL_DELAY.observe_many(r.label_delays_s, m)
        if r.staleness:
            metrics.REPLICA_STALENESS.observe_many(r.staleness, m)
        metrics.EVENT_LAG.observe_many(r.event_lags_s, m)
        metrics.PENDING.labels(model=m).set(r.pending)
        metrics.EARLY_WAITING.labels(model=m).set(r.early_waiting)
        metrics.LABELS_WAITING.labels(model=m).set(r.labels_waiting)
        if r.clock is not None:
            metrics.MODEL_CLOCK.labels(model=m).set(r.clock / 1000.0)
        for slot in r.slots:
            self._export_slot(slot)
        self._export_estimate(r)
        for feature, (psi, ks) in r.feature_drift.items():
            metrics.FEATURE_PSI.labels(model=m, feature=feature).set(psi)
            metrics.FEATURE_KS.labels(model=m, feature=feature).set(ks)
        refreshes = metrics.FEATURE_REFERENCE_REFRESHES.labels(model=m)
        if r.feature_refreshes:
            refreshes.inc(r.feature_refreshes)
        for pr in r.promotions:
            metrics.PROMOTIONS.labels(model=m).inc()
            log.warning("model step %r: promoted %r over %r at event time %d (%s)",
                        m, pr.new, pr.old, pr.ts, pr.reason)
        for slot in r.slots:
            metrics.CHAMPION.labels(model=slot.name).set(1.0 if slot.champion else 0.0)

    def _export_estimate(self, r: StepReport) -> None:
        """The champion's estimated quality (only the champion has one): a former champion's
        series are removed, so no stale estimate stays beside the new one's."""
        est = next((s for s in r.slots if s.estimate is not None), None)
        name = est.name if est is not None else None
        if self.estimated is not None and self.estimated != name:
            for gauge in metrics.ESTIMATE_GAUGES.values():
                try:
                    gauge.remove(self.estimated)
                except KeyError:
                    pass
        self.estimated = name
        if est is not None:
            for measure, value in est.estimate.values().items():
                metrics.ESTIMATE_GAUGES[measure].labels(model=est.name).set(value)

    @staticmethod
    def _export_slot(s: SlotReport) -> None:
        n = s.name
        metrics.PREDICTIONS.labels(model=n).inc(s.predictions)
        metrics.LABELS_LEARNED.labels(model=n).inc(s.labels_learned)
        for measure, value in s.quality.items():
            metrics.QUALITY_GAUGES[measure].labels(model=n).set(value)
        for c, (labels, decisions) in list(s.classes.items())[:metrics.MAX_CLASSES_EXPORTED]:
            metrics.CLASS_LABELS.labels(model=n, **{"class": str(c)}).set(labels)
            metrics.CLASS_DECISIONS.labels(model=n, **{"class": str(c)}).set(decisions)
        metrics.MODEL_VERSION.labels(model=n).set(s.version)
        if s.last_learn_at is not None:
            metrics.LAST_LEARN.labels(model=n).set(s.last_learn_at)
        for (stream, detector, direction), d in s.drift_detections.items():
            counter = metrics.CONCEPT_DRIFT_DETECTIONS.labels(
                model=n, detector=detector, stream=stream, direction=direction
            )
            if d:
                counter.inc(d)
        for stream, estimate in s.drift_estimates.items():
            metrics.CONCEPT_DRIFT_ESTIMATE.labels(model=n, detector="adwin", stream=stream).set(
                estimate
            )


#: Loads a checkpoint path into (model, version or None) for the ``swap`` command.
ModelLoader = Callable[[str], tuple[Any, int | None]]

_WALL_TICK_S = 1.0
#: How often the model step exports its report (counts, gauges, histograms) to the metrics, at
#: most: Prometheus scrapes every few seconds; exporting per batch cost ~350 us a batch.
REPORT_EVERY_S = 0.5


class _LearnerLogic(StatefulBatchLogic[Any, Any, ModelStepState]):
    def __init__(
        self,
        step_id: str,
        state: ModelStepState,
        *,
        ordered: bool,
        load_model: ModelLoader | None,
        after_batch: Callable[[OnlineLearner], None] | None,
        reply_extra: dict[str, Any] | None = None,
        describe_extra: dict[str, Any] | None = None,
        publish: UpdatePolicy | None = None,
    ) -> None:
        self.step_id = step_id
        self.publish = publish
        # Replicated mode: what the last update had learned, and when a label was first
        # learned since (monotonic); None: publish at the first batch (a restarted trainer's
        # replicas get its models at once).
        self._published_learned: int | None = None
        self._learned_since: float | None = None
        self.reply_extra = reply_extra or {}
        self.describe_extra = describe_extra or {}
        self.state = state
        self.ordered = ordered
        self.load_model = load_model
        self.after_batch = after_batch
        self.exporter = _ReportExporter(state.learner.name)
        # Reports are exported at most every REPORT_EVERY_S (and at the end): a small batch
        # must not pay for the quality estimate and a hundred gauge look-ups.
        self._next_report = 0.0
        self._owed = False
        # What a resumed learner did was exported by the process that snapshotted it, and a
        # model started from a checkpoint brings its labels with it: only what happens from
        # now on is news.
        state.learner.take_report()

    def on_batch(self, values: list[Any]) -> tuple[list[Any], bool]:
        out: list[Any] = []
        learner = self.state.learner
        if self.publish is not None:  # replicated mode: records come a list per batch
            values = [x for v in values for x in (v if type(v) is list else (v,))]
        if self.ordered:
            self._ordered(values, out)
        else:
            # Serve each batch in record-time order: a label before an event at the same time
            # (the tie rule of river's simulate_qa). Upstream grouping by key reorders.
            values.sort(key=_record_order)
            dispatch = self._dispatch
            for v in values:
                if type(v) is Control:
                    self._control(v, out)
                else:
                    dispatch(learner, v, out)
        if self.publish is not None:
            self._maybe_publish(out)
        self._finish_batch(out)
        return out, StatefulBatchLogic.RETAIN

    def _maybe_publish(self, out: list[Any], *, force: bool = False) -> None:
        """Replicated mode: a model update when the policy says one is due."""
        learner = self.state.learner
        learned = learner.counts.learned
        now = time.monotonic()
        if self._published_learned is not None and not force:
            since = learned - self._published_learned
            if since <= 0:
                return
            if self._learned_since is None:
                self._learned_since = now
            if not self.publish.due(since, (now - self._learned_since) * 1000):  # type: ignore
                return
        self.state.updates += 1
        update = pack(learner, self.state.updates, time.time())
        self._published_learned, self._learned_since = learned, None
        metrics.UPDATES_PUBLISHED.labels(model=learner.name).inc()
        metrics.UPDATE_BYTES.labels(model=learner.name).set(len(update.models))
        out.append(update)

    def _ordered(self, values: list[Any], out: list[Any]) -> None:
        st = self.state
        buf = st.buffer
        for v in values:
            t = type(v)
            if t is Control:
                self._control(v, out)
                continue
            seq = v.event.seq if t is FeaturedEvent else v.seq
            st.tiebreak += 1
            heapq.heappush(buf, (seq, st.tiebreak, v))
        learner = st.learner
        while buf and buf[0][0] <= st.next_seq:
            seq, _, v = heapq.heappop(buf)
            if seq == st.next_seq:
                st.next_seq += 1
            self._dispatch(learner, v, out)

    def _dispatch(self, learner: OnlineLearner, v: Any, out: list[Any]) -> None:
        t = type(v)
        if t is FeaturedEvent and v.request is not None or t is Request:
            out.append(self._answer(learner, v))
            return
        try:
            if t is FeaturedEvent:
                learner.on_event(v, out)
            elif t is Label:
                learner.on_label(v, out)
            elif t is Served:
                learner.on_served(v, out)
            # a DeadLetter is a gap: its seq is used up, nothing reaches the models
        except Exception as ex:  # no record may crash the step: this one is a dead letter
            detail = f"{type(ex).__name__}: {ex}"[:500]
            if t is FeaturedEvent or t is Served:
                out.append(DeadLetter.of_event(v.event, INVALID_RECORD, detail, self.step_id))
            else:
                out.append(DeadLetter.of_label(v, INVALID_RECORD, detail, self.step_id))
            log.error("model step %r: record %r failed: %s", self.step_id,
                      v.event.event_id if t is not Label else v.event_id, detail)

    def _answer(self, learner: OnlineLearner, v: FeaturedEvent | Request) -> Reply:
        """The reply to a request: scored by the champion, described, or the error that stopped
        it; never a pending prediction, never a crash."""
        extra = self.reply_extra
        if type(v) is Request:
            return described(v, {**extra, **learner.describe(), **self.describe_extra})
        return answer_request(learner.answer, v, extra)

    def _control(self, c: Control, out: list[Any]) -> None:
        learner = self.state.learner
        try:
            if c.command == "swap":
                if self.load_model is None:
                    raise ValueError("no model directory is configured (UNDERTOW_MODEL_DIR)")
                model, version = self.load_model(c.checkpoint or "")
                result = learner.swap(c.model, model, version)
            elif c.command == "rollback":
                result = learner.rollback(c.model)
            elif c.command == "promote":
                result = learner.promote(c.model)
            else:
                result = learner.remove(c.model)
        except Exception as ex:  # a bad command is answered, never fatal
            metrics.CONTROL_COMMANDS.labels(command=c.command, result="error").inc()
            out.append(DeadLetter.of_bytes(BAD_CONTROL, f"{type(ex).__name__}: {ex}", c.raw,
                                           topic=c.topic, partition=c.partition,
                                           offset=c.offset, step=self.step_id))
            log.error("model step %r: control %s %r failed: %s", self.step_id, c.command,
                      c.model, ex)
            return
        metrics.CONTROL_COMMANDS.labels(command=c.command, result="ok").inc()
        log.warning("model step %r: %s", self.step_id, result)
        if self.publish is not None:  # the replicas serve what the command made at once
            self._maybe_publish(out, force=True)

    def _finish_batch(self, out: list[Any], *, export: bool = False) -> None:
        learner = self.state.learner
        if learner.wall_ttl:
            learner.on_wall_clock(out)
        now = time.monotonic()
        if export or now >= self._next_report:
            self.exporter.export(learner.take_report())
            if self.ordered:
                metrics.REORDER_BUFFER.labels(model=learner.name).set(len(self.state.buffer))
            self._next_report = now + REPORT_EVERY_S
            self._owed = False
        else:
            self._owed = True
        if self.after_batch is not None:
            self.after_batch(learner)

    def on_notify(self) -> tuple[list[Any], bool]:
        out: list[Any] = []
        self._finish_batch(out)
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> Any:
        # A wall-clock TTL needs waking up when no records come, and so does a report owed.
        wall = datetime.now(UTC)
        at = wall + timedelta(seconds=_WALL_TICK_S) if self.state.learner.wall_ttl else None
        if self._owed:
            owed = wall + timedelta(seconds=max(0.0, self._next_report - time.monotonic()))
            at = owed if at is None else min(at, owed)
        return at

    def on_eof(self) -> tuple[list[Any], bool]:
        out: list[Any] = []
        st = self.state
        learner = st.learner
        if st.buffer:
            # Every seq should have arrived by now; whatever is left is served in seq order.
            log.error("model step %r: %d records left in the reorder buffer at the end "
                      "(missing seq %d)", self.step_id, len(st.buffer), st.next_seq)
            while st.buffer:
                _, _, v = heapq.heappop(st.buffer)
                self._dispatch(learner, v, out)
        learner.on_end(out)
        out.extend(learner.summaries())
        self._finish_batch(out, export=True)
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> ModelStepState:
        return self.state


def answer_request(score: Callable[[FeaturedEvent], Prediction], v: FeaturedEvent,
                   extra: dict[str, Any]) -> Reply:
    """The reply to a featured ``predict`` request: ``score``'s prediction, or the error that
    stopped it (before or while scoring); never a crash."""
    req = v.request
    if req.error is not None:
        return error_reply(req.correlation_id, req.reply_to, *req.error, req.read_at, **extra)
    try:
        return answer(req, score(v), v.features, **extra)
    except Exception as ex:
        return error_reply(req.correlation_id, req.reply_to, MODEL_ERROR,
                           f"{type(ex).__name__}: {ex}"[:500], req.read_at, **extra)


def _record_order(v: Any) -> tuple[int, int, str]:
    """Time, a label before an event; events of one time by id (they reach the step from many
    feature shards, in no fixed order); labels of one time keep their order of arrival (the
    sort is stable), as ``simulate_qa`` reveals answers of one time in the order asked."""
    t = type(v)
    if t is FeaturedEvent or t is Served:
        return (v.event.ts, 1, v.event.event_id)
    if t is Label:
        return (v.ts, 0, "")
    return (-1, -1, "")  # commands (and describe requests) first: they apply to the batch


@operator
def serve_and_learn(
    step_id: str,
    events: Stream[FeaturedEvent] | None,
    labels: Stream[Label],
    *,
    model_name: str,
    make_learner: Callable[[], OnlineLearner],
    controls: Stream[Control] | None = None,
    gaps: Stream[DeadLetter] | None = None,
    ordered: bool = False,
    load_model: ModelLoader | None = None,
    after_batch: Callable[[OnlineLearner], None] | None = None,
    requests: Stream[Request] | None = None,
    reply_extra: dict[str, Any] | None = None,
    describe_extra: dict[str, Any] | None = None,
    served: Stream[list[Served]] | None = None,
    publish: UpdatePolicy | None = None,
) -> LearnOut:
    """Score every event with the learner's models and learn from each label when it is due.

    Events that carry a request (:mod:`undertow.requests`) are answered on ``replies`` with
    the champion's prediction, and so are the ``requests`` that need no features (``describe``);
    ``reply_extra`` goes into every reply, ``describe_extra`` into describe replies.
    ``controls`` are commands for the models; in ``ordered`` mode (replays) records are
    processed in ``seq`` order and ``gaps`` are the dead letters of records that will never
    arrive. ``load_model`` reads a checkpoint for ``swap``; ``after_batch`` runs after every
    batch (checkpointing).

    Replicated mode (:mod:`undertow.replica`): ``served`` are the events scoring replicas
    served, a list per batch (``events`` is then None), learned on as served; with ``publish``
    labels may come a list per batch too, and the step
    emits a :class:`~undertow.replica.ModelUpdate` on ``updates`` when the policy says, after
    every command, and at its first batch.

    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSource, TestingSink, run_main
    >>> from river import linear_model
    >>> from undertow.schema import Event
    >>> flow = Dataflow("learn_eg")
    >>> evs = op.input("evs", flow, TestingSource(
    ...     [FeaturedEvent(Event("e1", "c1", 1000, {}), {"x": 1.0})]))
    >>> lbs = op.input("lbs", flow, TestingSource([]))
    >>> config = LearnerConfig(label_ttl_ms=60_000, early_label_ttl_ms=0)
    >>> out = serve_and_learn("model", evs, lbs, model_name="m", make_learner=lambda: OnlineLearner(
    ...     "m", linear_model.LogisticRegression(), config, wall_clock=lambda: 0.0))
    >>> preds = []
    >>> op.output("out", out.predictions, TestingSink(preds))
    >>> run_main(flow)
    >>> [(p.event_id, p.score, p.predicted, p.model) for p in preds]
    [('e1', 0.5, False, 'm')]
    """
    name = model_name
    metrics.declare_reasons(step_id)  # control dead letters name the step
    metrics.declare_reasons(name)  # the learner's name the model
    # Series exist at zero from the start, so dashboards show 0 and rate() sees the first count.
    metrics.PROMOTIONS.labels(model=name)
    metrics.REORDER_BUFFER.labels(model=name).set(0)
    for command in CONTROL_COMMANDS:
        for result in ("ok", "error"):
            metrics.CONTROL_COMMANDS.labels(command=command, result=result)
    keyed = [] if events is None else [op.key_on("key_events", events, lambda _: name)]
    keyed.append(op.key_on("key_labels", labels, lambda _: name))
    if controls is not None:
        keyed.append(op.key_on("key_controls", controls, lambda _: name))
    if requests is not None:
        keyed.append(op.key_on("key_requests", requests, lambda _: name))
    if served is not None:
        keyed.append(op.key_on("key_served", served, lambda _: name))
    metrics.declare_replicated(name)
    if gaps is not None:
        if not ordered:
            raise ValueError(f"serve_and_learn {step_id!r}: gaps are only used in ordered mode")
        with_seq = op.filter("gaps_with_seq", gaps, lambda d: d.seq >= 0)
        keyed.append(op.key_on("key_gaps", with_seq, lambda _: name))
    merged = op.merge("merge", *keyed)

    def build(resume: ModelStepState | None) -> _LearnerLogic:
        if resume is not None:
            resume.learner.join.attach()  # a join on disk reopens as of the snapshot
        state = resume if resume is not None else ModelStepState(make_learner())
        if state.learner.name != name:
            raise ValueError(
                f"serve_and_learn {step_id!r}: learner is named {state.learner.name!r}, "
                f"expected {name!r}"
            )
        return _LearnerLogic(
            step_id, state, ordered=ordered, load_model=load_model, after_batch=after_batch,
            reply_extra=reply_extra, describe_extra=describe_extra, publish=publish,
        )

    out = op.key_rm("unkey", op.stateful_batch("learner", merged, build))
    preds = op.branch("split_predictions", out, lambda x: type(x) is Prediction)
    champion = op.branch("split_served", preds.trues, lambda p: p.served)
    rest = op.branch("split_errs", preds.falses, lambda x: type(x) is DeadLetter)
    outs = op.branch("split_outcomes", rest.falses, lambda x: type(x) is Outcome)
    ends = op.branch("split_replies", outs.falses, lambda x: type(x) is Reply)
    tail = op.branch("split_updates", ends.falses, lambda x: type(x) is ModelUpdate)
    return LearnOut(
        champion.trues,  # type: ignore[arg-type]
        champion.falses,  # type: ignore[arg-type]
        rest.trues,  # type: ignore[arg-type]
        outs.trues,  # type: ignore[arg-type]
        tail.falses,  # type: ignore[arg-type]
        ends.trues,  # type: ignore[arg-type]
        tail.trues,  # type: ignore[arg-type]
    )
