"""Serve-then-learn: River models (a champion and its challengers) scoring events and learning
from their delayed labels.

:class:`OnlineLearner` is the pure logic of the model step. It composes the label join
(:class:`~undertow.label_join.LabelJoin`: what was served, early labels, finished ids, the clocks)
and the models (:class:`~undertow.champions.Champions`), and enforces the invariants of
DESIGN.md:

* **Score before learn.** An event is scored before its own label can reach the model.
* **Learn on what was served.** The served feature vector and scores are kept as a
  :class:`~undertow.label_join.PendingPrediction`; ``learn_one`` gets exactly those features, and
  quality metrics use exactly those scores.
* **No label before its time.** A label with ``ts`` later than the event clock waits until an
  event at or after ``ts`` arrives; ties follow ``river.stream.simulate_qa``: a label with
  ``ts <=`` an event's ``ts`` is learned before that event is scored. With pass-through features
  this makes the learner reproduce ``river.evaluate.progressive_val_score(..., moment=, delay=)``.
* **Every state ends.** Pending predictions, early labels and finished ids expire as the label
  join documents; the number of pending predictions is capped (oldest expire first).

Label outcomes that do not teach the model are returned as :class:`~undertow.schema.DeadLetter`
values (reasons ``unknown_event``, ``expired_event``, ``duplicate_label``, ``conflicting_label``),
so every label is accounted for. The documented rule for a conflicting label (same event, other
value): the first label that arrives is learned; later ones are dead-lettered.

:meth:`OnlineLearner.take_report` hands the operator layer a :class:`StepReport` of what happened
since the previous report, which it exports as metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Set
from dataclasses import dataclass, field
from typing import Any

import orjson

from undertow.champions import Champions, ModelSlot, Promotion, PromotionRule
from undertow.drift import ConceptDrift, FeatureDrift
from undertow.ensemble import Ensemble
from undertow.estimate import ConfidenceEstimate
from undertow.label_join import (
    EXPIRY_CAPACITY,
    EXPIRY_TTL,
    LabelJoin,
    Matched,
    PendingPrediction,
    PendingStore,
)
from undertow.schema import (
    DUPLICATE_EVENT,
    FUTURE_EVENT,
    INVALID_RECORD,
    MODEL_ERROR,
    DeadLetter,
    FeaturedEvent,
    Label,
    ModelSummary,
    Outcome,
    Prediction,
)
from undertow.serving import Served, answer_slots, serve_slots
from undertow.targets import Binary, Target
from undertow.watermark import Watermark

__all__ = [
    "EXPIRY_CAPACITY",
    "EXPIRY_TTL",
    "LearnerConfig",
    "LearnerCounts",
    "OnlineLearner",
    "PendingPrediction",
    "PromotionRule",
    "SlotReport",
    "StepReport",
]

TTL_CLOCKS = ("event", "wall")


@dataclass(frozen=True)
class LearnerConfig:
    """How a model step serves and learns (everything but the models and the clocks).

    ``label_ttl_ms``: a served prediction whose label has not come this long after its event
    expires; ``early_label_ttl_ms``: how long a label that came before its event waits;
    ``ttl_clock``: ``"event"`` measures both in event time, ``"wall"`` in wall-clock time from
    when the event was served (for live streams whose labels may never come); ``max_pending``:
    cap on predictions waiting for labels; ``threshold``: a binary decision is
    ``score > threshold``; ``target``: what the labels are (:mod:`undertow.targets`; binary with
    ``threshold`` by default);
    ``quality_window``: window of each model's rolling quality; ``label_partitions`` /
    ``event_partitions``: partitions each watermark waits for before it exists; ``promotion``:
    the rule that promotes a better challenger (None: only by command); ``emit_outcomes``: also
    output an :class:`~undertow.schema.Outcome` per model for every learned label (backtests).

    >>> LearnerConfig(label_ttl_ms=0, early_label_ttl_ms=0)
    Traceback (most recent call last):
    ...
    ValueError: label_ttl_ms must be > 0, got 0
    """

    label_ttl_ms: int
    early_label_ttl_ms: int
    ttl_clock: str = "event"
    max_pending: int = 1_000_000
    threshold: float = 0.5
    quality_window: int = 1000
    label_partitions: int | None = None
    event_partitions: int | None = None
    promotion: PromotionRule | None = None
    emit_outcomes: bool = False
    target: Target | None = None
    #: A label stamped more than this ahead of the model step's clock (the newest event time, or
    #: the wall time it was read if later) is a ``future_event`` dead letter: it would be held
    #: for ever, waiting for its time (None: no limit).
    max_future_skew_ms: int | None = None

    def __post_init__(self) -> None:
        if self.target is None:
            object.__setattr__(self, "target", Binary(self.threshold))
        if self.label_ttl_ms <= 0:
            raise ValueError(f"label_ttl_ms must be > 0, got {self.label_ttl_ms}")
        if self.early_label_ttl_ms < 0:
            raise ValueError(f"early_label_ttl_ms must be >= 0, got {self.early_label_ttl_ms}")
        if self.max_pending <= 0:
            raise ValueError(f"max_pending must be > 0, got {self.max_pending}")
        if self.ttl_clock not in TTL_CLOCKS:
            raise ValueError(f"ttl_clock must be 'event' or 'wall', got {self.ttl_clock!r}")
        if self.quality_window <= 0:
            raise ValueError(f"quality_window must be > 0, got {self.quality_window}")


@dataclass(slots=True)
class LearnerCounts:
    """Monotonic counts of a model step since start."""

    events: int = 0
    labels: int = 0
    learned: int = 0
    duplicate_events: int = 0
    pending_expired: dict[str, int] = field(
        default_factory=lambda: {EXPIRY_TTL: 0, EXPIRY_CAPACITY: 0}
    )
    early_labels: int = 0
    early_expired: int = 0
    label_dead_letters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SlotReport:
    """One model's part of a :class:`StepReport`: counts since the last report, gauges now."""

    name: str
    version: int
    champion: bool
    predictions: int
    labels_learned: int
    #: the target's rolling measures now (binary: accuracy, log_loss, roc_auc).
    quality: dict[str, float]
    last_learn_at: float | None
    #: (stream "error" | "score", detector, direction) -> detections since the last report;
    #: every key a detector has, at 0 when nothing was detected.
    drift_detections: dict[tuple[str, str, str], int]
    #: stream -> ADWIN's estimate now.
    drift_estimates: dict[str, float]
    #: multi-class: class -> (labels, decisions) of that class in the quality window now.
    classes: dict[Any, tuple[int, int]] = field(default_factory=dict)
    #: binary champion: the estimated quality of its last quality-window served predictions
    #: (:class:`~undertow.estimate.Estimate`), None for other slots or before calibration.
    estimate: Any = None


@dataclass(frozen=True, slots=True)
class StepReport:
    """What a model step did since its previous report (counts, observations, promotions), and
    its gauges now: a plain record for the operator layer to export."""

    model: str
    events: int
    labels: int
    learned: int
    duplicate_events: int
    #: reason ("ttl" | "capacity") -> pending predictions expired; both reasons, 0 included.
    pending_expired: dict[str, int]
    early_labels: int
    early_expired: int
    #: reason -> labels dead-lettered (only reasons that occurred).
    label_dead_letters: dict[str, int]
    #: label time - event time (s) of each learned label; served - event time (s) of each event.
    label_delays_s: list[float]
    event_lags_s: list[float]
    promotions: list[Promotion]
    feature_refreshes: int
    #: feature -> (PSI, KS) as last computed.
    feature_drift: dict[str, tuple[float, float]]
    pending: int
    early_waiting: int
    labels_waiting: int
    clock: int | None
    champion: str
    slots: tuple[SlotReport, ...]
    #: replicated mode: per event a replica served, the labels its champion was behind.
    staleness: list[int] = field(default_factory=list)


_DRIFT_STREAMS = ("error", "score")


class OnlineLearner:
    """Models that score events, keep what was served, and learn when the label is due.

    ``model`` is the champion, named ``name``; ``challengers`` (name -> model) are scored in
    shadow on the same events and learn from the same labels; one join serves them all, so they
    are compared on exactly the same data. Models are River classifiers; a score is the
    probability of ``True``. ``config`` holds the options (:class:`LearnerConfig`).
    ``wall_clock`` stamps ``processed_at`` on predictions (and measures the TTLs with
    ``ttl_clock="wall"``); ``None`` stamps them with the event time instead, which makes a
    replay's output reproducible. ``feature_drift`` compares served vectors with a reference
    (a default :class:`~undertow.drift.FeatureDrift` if None); ``pending`` is where pending
    predictions are stored (a ``dict`` if None).

    :meth:`swap`, :meth:`rollback`, :meth:`promote` and :meth:`remove` are the control commands.

    ``ensemble`` (:class:`~undertow.ensemble.Ensemble`) adds a slot of its own, named as the
    ensemble, that is served (the champion; ``name`` stays the step's name): its components (some
    of the models) are scored first, in shadow, then it combines the values they served; it
    learns from each label on those served values. Its slot is always scored last. A swap into
    it must be an :class:`~undertow.ensemble.Ensemble` (a checkpoint of one: its combiner and
    stacker replace the slot's, bound to the live components); a rollback restores the
    previous combiner. A component can be promoted over it (it is then scored in shadow) or
    removed (it then combines the others).
    """

    #: The ensemble slot's name (None: no ensemble).
    ensemble: str | None = None
    #: The newest label time accepted (the labels' clock for the future skew); a class default,
    #: so a learner pickled before it existed resumes.
    _label_newest: int | None = None
    #: The binary champion's quality estimate (undertow/estimate.py), and the (slot, version)
    #: it estimates: a new champion or model starts a new one (class defaults: older pickles).
    _estimate: ConfidenceEstimate | None = None
    _estimate_of: tuple[str, int] | None = None
    #: Replicated mode: per event a replica served, the labels its copy of the champion was
    #: behind this one (None until the first; a class default, so older pickles resume).
    _staleness: list[int] | None = None

    def __init__(
        self,
        name: str,
        model: Any,
        config: LearnerConfig,
        *,
        version: int = 1,
        challengers: dict[str, Any] | None = None,
        feature_drift: FeatureDrift | None = None,
        wall_clock: Callable[[], float] | None = time.time,
        pending: PendingStore | None = None,
        ensemble: Ensemble | None = None,
    ) -> None:
        if config.ttl_clock == "wall" and wall_clock is None:
            raise ValueError("ttl_clock='wall' needs a wall_clock")
        self.name = name
        self.config = config
        self.target: Target = config.target  # type: ignore[assignment]
        self.threshold = config.threshold
        self.emit_outcomes = config.emit_outcomes
        self.wall_clock = wall_clock
        self.wall_ttl = config.ttl_clock == "wall"
        self.join = LabelJoin(
            label_ttl_ms=config.label_ttl_ms,
            early_label_ttl_ms=config.early_label_ttl_ms,
            max_pending=config.max_pending,
            ttl_clock=wall_clock if self.wall_ttl else None,
            label_partitions=config.label_partitions,
            event_partitions=config.event_partitions,
            pending=pending,
        )
        self.champions = Champions(
            name, model, version=version, challengers=challengers,
            quality_window=config.quality_window, rule=config.promotion, target=self.target,
        )
        if ensemble is not None:
            self._add_ensemble(ensemble)
        self.feature_drift = feature_drift if feature_drift is not None else FeatureDrift()
        self._events = 0
        self._labels = 0
        self._learned = 0
        self._duplicates = 0
        self._model_errors = 0
        self._dead_letters: dict[str, int] = {}
        # Observations for histograms, handed over (and cleared) by take_report.
        self._label_delays_s: list[float] = []
        self._event_lags_s: list[float] = []
        # What the last report covered.
        self._reported = LearnerCounts()
        self._reported_slots: dict[str, tuple[ModelSlot, int, int, dict[Any, int]]] = {}
        self._reported_promotions = 0
        self._reported_refreshes = 0

    # -- the champion, for callers that serve one model ----------------------------------------

    @property
    def slots(self) -> dict[str, ModelSlot]:
        return self.champions.slots

    @property
    def champion(self) -> str:
        return self.champions.champion

    @property
    def promotions(self) -> Any:
        """The latest champion changes (a deque of :class:`~undertow.champions.Promotion`)."""
        return self.champions.promotions

    @property
    def model(self) -> Any:
        return self.champions.served.model

    @property
    def version(self) -> int:
        return self.champions.served.version

    @property
    def labels_learned(self) -> int:
        return self.champions.served.labels_learned

    @property
    def served_quality(self) -> Any:
        return self.champions.served.quality

    @property
    def error_drift(self) -> ConceptDrift:
        return self.champions.served.error_drift

    @property
    def score_drift(self) -> ConceptDrift:
        return self.champions.served.score_drift

    @property
    def last_learn_at(self) -> float | None:
        return self.champions.served.last_learn_at

    # -- the join's state, read-only -------------------------------------------------------------

    @property
    def clock(self) -> int | None:
        """The newest event time scored (ms)."""
        return self.join.clock

    @property
    def label_wm(self) -> Watermark:
        return self.join.label_wm

    @property
    def event_wm(self) -> Watermark:
        return self.join.event_wm

    @property
    def pending(self) -> PendingStore:
        return self.join.pending

    @property
    def early(self) -> Set[str]:
        return self.join.early

    @property
    def finished(self) -> Set[str]:
        return self.join.finished

    @property
    def waiting_labels(self) -> int:
        return self.join.waiting_labels

    @property
    def counts(self) -> LearnerCounts:
        """Monotonic counts since start (a copy)."""
        jc = self.join.counts
        return LearnerCounts(
            self._events, self._labels, self._learned, self._duplicates,
            dict(jc.pending_expired), jc.early_labels, jc.early_expired, dict(self._dead_letters),
        )

    # -- the inputs -----------------------------------------------------------------------------

    def on_event(self, fe: FeaturedEvent, out: list[Any]) -> None:
        """Advance the clock to the event, then score it; results are appended to ``out``."""
        ev = fe.event
        self._events += 1
        if not self._advance(ev, out):
            return
        now = self.wall_clock() if self.wall_clock is not None else ev.ts / 1000.0

        def failed(model: str, ex: Exception) -> None:
            self._model_error(ev, model, "score", ex, out)

        champions = self.champions
        served = serve_slots(champions.slots.values(), champions.champion, self.ensemble,
                             self.target, fe, now, out, failed)
        self._record(ev, fe.features, served, now, out)

    def on_served(self, s: Served, out: list[Any]) -> None:
        """An event a scoring replica served (replicated mode, :mod:`undertow.replica`): what
        :meth:`on_event` does but the scoring, on the values the replica served. Its staleness
        (the labels the champion has learned here that the replica's copy had not) is kept for
        the report."""
        ev = s.event
        self._events += 1
        if not self._advance(ev, out):
            return
        now = self.wall_clock() if self.wall_clock is not None else ev.ts / 1000.0
        behind = self.champions.served.labels_learned - s.labels_learned
        if self._staleness is None:
            self._staleness = [behind]
        else:
            self._staleness.append(behind)
        self._record(ev, s.features, s.served, now, out)

    def _advance(self, ev: Any, out: list[Any]) -> bool:
        """Move the clock to the event and learn the labels due by it; False (and a dead
        letter) if the event was already served."""
        join = self.join
        due: list[Any] = []
        join.advance(ev.partition, ev.ts, due)
        if due:
            self._settle(due, out)
        if join.is_served(ev.event_id):
            self._duplicates += 1
            out.append(DeadLetter.of_event(
                ev, DUPLICATE_EVENT,
                f"event {ev.event_id!r} was already scored by model step {self.name!r}",
                self.name))
            return False
        return True

    def _record(self, ev: Any, x: dict[str, float], served: dict[str, Any], now: float,
                out: list[Any]) -> None:
        """Keep what was served (slot name -> value) for the label, and watch it drift."""
        slots = self.champions.slots
        signal = self.target.signal
        scores: dict[str, Any] = {}
        for name, value in served.items():
            slot = slots.get(name)
            if slot is None:  # a replica served a model since removed
                continue
            slot.predictions += 1
            if value is not None:
                scores[name] = value
                slot.score_drift.update(signal(value), ev.ts)
        champion = self.champions.champion
        if self.target.name == "binary" and champion in scores:
            self._champion_estimate().update(scores[champion], ev.key)
        self._event_lags_s.append(now - ev.ts / 1000.0)
        self.feature_drift.update(x, ev.ts)  # event time: the warm-up is measured in it
        due: list[Any] = []
        self.join.serve(ev.event_id, ev.key, x, scores, ev.ts, due)
        if due:
            self._settle(due, out)

    def answer(self, fe: FeaturedEvent) -> Prediction:
        """The champion's prediction for a request's features, as it would serve them now;
        nothing changes: no pending prediction, no count, no drift, no clock (River models do
        not learn in ``predict_*``). An ensemble champion combines its components' values."""
        now = self.wall_clock() if self.wall_clock is not None else fe.event.ts / 1000.0
        return answer_slots(self.champions.slots, self.champions.champion, self.ensemble,
                            self.target, fe, now)

    def describe(self) -> dict[str, Any]:
        """The served model and every slot, for a ``describe`` request."""
        slots = self.champions.slots
        champion = self.champions.champion
        return {
            "model": champion,
            "model_version": slots[champion].version,
            "labels_learned": slots[champion].labels_learned,
            "models": [{"name": s.name, "version": s.version,
                        "labels_learned": s.labels_learned, "champion": s.name == champion}
                       for s in slots.values()],
        }

    def on_label(self, label: Label, out: list[Any]) -> None:
        """Apply a label now if its time has come, else hold it until the clock reaches it."""
        self._labels += 1
        skew = self.config.max_future_skew_ms
        if skew is not None:
            # The labels' own clock (the newest label time accepted, or the wall time the label
            # was read if later), as the first feature step judges events by theirs: a label
            # may well run ahead of the events (a backlog read faster on the labels side).
            newest = self._label_newest
            clock = max(newest or 0, int(label.read_at * 1000))
            if clock and label.ts > clock + skew:
                self._dead_letter(label, FUTURE_EVENT, f"label time {label.ts} is more than "
                                  f"{skew} ms ahead of the labels' clock {clock} "
                                  "(UNDERTOW_MAX_FUTURE_SKEW_S)", out)
                return
            if newest is None or label.ts > newest:
                self._label_newest = label.ts
        due: list[Any] = []
        self.join.on_label(label, due)
        if due:
            self._settle(due, out)

    def on_end(self, out: list[Any]) -> None:
        """End of a bounded input: every held label is due; early labels will never match."""
        due: list[Any] = []
        self.join.on_end(due)
        self._settle(due, out)

    def on_wall_clock(self, out: list[Any]) -> None:
        """With ``ttl_clock="wall"``: expire what the wall clock has passed (call periodically)."""
        if not self.wall_ttl:
            return
        due: list[Any] = []
        self.join.on_wall_clock(due)
        self._settle(due, out)

    # -- the commands -----------------------------------------------------------------------------

    def swap(self, name: str, model: Any, version: int | None = None) -> str:
        """Put ``model`` in slot ``name`` (a new name becomes a challenger); keep the old one for
        :meth:`rollback`. The version is ``version`` or the slot's next one. Pending events
        keep the scores they were served with; the new model learns from their labels."""
        if name == self.ensemble and (not isinstance(model, Ensemble)
                                      or model.target.name != self.target.name):
            raise ValueError(f"model {name!r} is the ensemble: swap in a checkpoint of a "
                             f"{self.target.name} ensemble, or swap its components")
        result = self.champions.swap(name, model, version)
        self._bind_ensemble()
        return result

    def rollback(self, name: str) -> str:
        """Restore the model that the last :meth:`swap` of ``name`` replaced, as it was then."""
        result = self.champions.rollback(name)
        self._bind_ensemble()
        return result

    def promote(self, name: str, *, reason: str = "command") -> str:
        """Serve ``name`` from now on; the old champion becomes a challenger."""
        return self.champions.promote(name, ts=self.join.clock or 0, reason=reason)

    def remove(self, name: str) -> str:
        """Drop the challenger ``name``, and its scores of the pending events."""
        result = self.champions.remove(name)
        for p in self.join.pending.values():
            p.scores.pop(name, None)
        self._bind_ensemble()
        return result

    def _add_ensemble(self, ensemble: Ensemble) -> None:
        """The ensemble's slot, served from the start (no promotion is recorded)."""
        if ensemble.name in self.champions.slots:
            raise ValueError(f"ensemble {ensemble.name!r} has a model's name")
        if ensemble.target.name != self.target.name:
            raise ValueError(f"ensemble {ensemble.name!r} combines {ensemble.target.name} "
                             f"values; the learner's target is {self.target.name}")
        self.champions.swap(ensemble.name, ensemble)
        self.champions.champion = ensemble.name
        self.ensemble = ensemble.name
        self._bind_ensemble()

    def _bind_ensemble(self) -> None:
        """After a command: the ensemble's slot is scored last, and its combiner knows the
        component models now in their slots (what its checkpoint holds beside it)."""
        slots = self.champions.slots
        slot = slots.get(self.ensemble) if self.ensemble is not None else None
        if slot is None:  # removed: a swap of an ensemble under its name brings it back
            return
        slots[slot.name] = slots.pop(slot.name)
        slot.model.bind({n: s.model for n, s in slots.items() if s is not slot})

    # -- learning -------------------------------------------------------------------------------

    def _settle(self, due: list[Any], out: list[Any]) -> None:
        """Learn from each matched label, dead-letter each unusable one, in order."""
        for r in due:
            if type(r) is Matched:
                try:
                    self._learn(r.pending, r.label, out)
                except Exception as ex:  # this label, not the record that made it due, failed
                    self._dead_letter(r.label, INVALID_RECORD,
                                      f"{type(ex).__name__}: {ex}"[:500], out)
            else:
                self._dead_letter(r.label, r.reason, r.detail, out)

    def _learn(self, p: PendingPrediction, label: Label, out: list[Any]) -> None:
        y = label.value
        clock = self.join.clock or label.ts
        now = self.wall_clock() if self.wall_clock is not None else clock / 1000.0
        target = self.target
        scores = p.scores
        x = p.features
        emit = self.emit_outcomes
        ensemble = self.ensemble
        for slot in self.champions.slots.values():
            served = scores.get(slot.name)
            if served is not None:
                slot.quality.observe(y, served)
                slot.error_drift.update(target.error(served, y), clock)
                if emit:
                    out.append(Outcome(slot.name, slot.version, p.event_id, p.event_ts, label.ts,
                                       y, target.true_score(served, y), target.decide(served)))
            try:
                if slot.name == ensemble:  # on the values the components served: no peeking
                    slot.model.learn(scores, y)
                else:
                    slot.model.learn_one(x, y)
            except Exception as ex:  # the others still learn; this model missed one label
                self._model_error(label, slot.name, "learn", ex, out)
                continue
            slot.last_learn_at = now
            slot.labels_learned += 1
            slot.since_swap += 1
        if target.name == "binary":
            served = scores.get(self.champions.champion)
            if served is not None:
                self._champion_estimate().learn(served, y, p.key)
        self._learned += 1
        self._label_delays_s.append((label.ts - p.event_ts) / 1000.0)
        if self.champions.rule is not None:
            self.champions.check(self.join.clock or 0)

    def _champion_estimate(self) -> ConfidenceEstimate:
        """The served model's quality estimate: fed with the scores it serves and, as their
        labels come, calibrated on them; a new one when the champion or its version changes
        (another model's scores mean something else)."""
        slot = self.champions.served
        key = (slot.name, slot.version)
        if self._estimate is None or self._estimate_of != key:
            self._estimate = ConfidenceEstimate(
                self.config.quality_window, threshold=getattr(self.target, "threshold", 0.5))
            self._estimate_of = key
        return self._estimate

    def estimate(self) -> Any:
        """The binary champion's estimated accuracy and ROC AUC over its last quality-window
        served predictions (:class:`~undertow.estimate.Estimate`), or None: another target, too
        few labels yet, or the estimate belongs to a former champion."""
        slot = self.champions.served
        if self._estimate is None or self._estimate_of != (slot.name, slot.version):
            return None
        return self._estimate.get()

    def _model_error(self, record: Any, model: str, what: str, ex: Exception,
                     out: list[Any]) -> None:
        """A model that raised while scoring an event or learning a label: a dead letter that
        names the model (the record keeps its bytes), counted; the step goes on."""
        self._model_errors += 1
        d = self._dead_letters
        d[MODEL_ERROR] = d.get(MODEL_ERROR, 0) + 1
        detail = (f"model {model!r} failed to {what} {record.event_id!r}: "
                  f"{type(ex).__name__}: {ex}")
        make = DeadLetter.of_label if type(record) is Label else DeadLetter.of_event
        out.append(make(record, MODEL_ERROR, detail, self.name))

    def _dead_letter(self, label: Label, reason: str, detail: str, out: list[Any]) -> None:
        d = self._dead_letters
        d[reason] = d.get(reason, 0) + 1
        out.append(DeadLetter.of_label(
            label, reason, f"{detail} (model step {self.name!r}, event {label.event_id!r})",
            self.name))

    # -- read-outs ------------------------------------------------------------------------------

    def quality(self, model: str | None = None) -> dict[str, float]:
        """Rolling quality of one model's served values (the champion's by default), named as
        the target's :attr:`~undertow.targets.Target.metrics`."""
        return self.slots[model if model is not None else self.champion].quality.values()

    def take_report(self) -> StepReport:
        """What happened since the previous call (the first: since start), and the gauges now.

        The histogram observations are handed over, not copied: the learner starts new lists.
        """
        c, s = self.counts, self._reported
        slots = []
        reported: dict[str, tuple[ModelSlot, int, int, dict[Any, int]]] = {}
        champion = self.champion
        for slot in self.slots.values():
            base = self._reported_slots.get(slot.name)
            if base is None or base[0] is not slot:  # new, or removed and added again
                base = (slot, 0, 0, {})
            detections = {
                (stream, det, direction): n
                for stream, cd in zip(_DRIFT_STREAMS, (slot.error_drift, slot.score_drift),
                                      strict=True)
                for (det, direction), n in cd.detections.items()
            }
            seen = base[3]
            slots.append(SlotReport(
                slot.name, slot.version, slot.name == champion,
                slot.predictions - base[1], slot.labels_learned - base[2],
                self.quality(slot.name), slot.last_learn_at,
                {k: n - seen.get(k, 0) for k, n in detections.items()},
                {"error": slot.error_drift.estimate, "score": slot.score_drift.estimate},
                _class_counts(slot.quality),
                self.estimate() if slot.name == champion else None,
            ))
            reported[slot.name] = (slot, slot.predictions, slot.labels_learned, detections)
        promoted = self.champions.promoted
        new_promotions = min(promoted - self._reported_promotions, len(self.promotions))
        fd = self.feature_drift
        report = StepReport(
            model=self.name,
            events=c.events - s.events,
            labels=c.labels - s.labels,
            learned=c.learned - s.learned,
            duplicate_events=c.duplicate_events - s.duplicate_events,
            pending_expired={
                why: n - s.pending_expired.get(why, 0) for why, n in c.pending_expired.items()
            },
            early_labels=c.early_labels - s.early_labels,
            early_expired=c.early_expired - s.early_expired,
            label_dead_letters={
                reason: n - s.label_dead_letters.get(reason, 0)
                for reason, n in c.label_dead_letters.items()
                if n != s.label_dead_letters.get(reason, 0)
            },
            label_delays_s=self._label_delays_s,
            event_lags_s=self._event_lags_s,
            promotions=list(self.promotions)[len(self.promotions) - new_promotions:],
            feature_refreshes=fd.refreshes - self._reported_refreshes,
            feature_drift={k: (float(v[0]), float(v[1])) for k, v in fd.scores.items()},
            pending=len(self.pending),
            early_waiting=len(self.early),
            labels_waiting=self.waiting_labels,
            clock=self.clock,
            champion=champion,
            slots=tuple(slots),
            staleness=self._staleness or [],
        )
        self._label_delays_s = []
        self._event_lags_s = []
        self._staleness = []
        self._reported = c
        self._reported_slots = reported
        self._reported_promotions = promoted
        self._reported_refreshes = fd.refreshes
        return report

    def summaries(self) -> list[ModelSummary]:
        """Each model's state, for the end of a bounded input (backtest reports)."""
        c = self.counts
        counts = {
            "events": c.events, "labels": c.labels, "learned": c.learned,
            "duplicate_events": c.duplicate_events, "pending_expired": dict(c.pending_expired),
            "early_labels": c.early_labels, "early_expired": c.early_expired,
            "label_dead_letters": dict(sorted(c.label_dead_letters.items())),
        }
        fd = {k: (float(v[0]), float(v[1])) for k, v in sorted(self.feature_drift.scores.items())}
        out = []
        for slot in self.slots.values():
            drift = sorted(
                (ts, stream, det, direction)
                for stream, cd in (("error", slot.error_drift), ("score", slot.score_drift))
                for ts, det, direction in cd.history
            )
            out.append(
                ModelSummary(
                    slot.name, slot.version, slot.name == self.champion, counts,
                    self.quality(slot.name), drift, fd, len(self.pending), slot.labels_learned,
                )
            )
        return out


def _class_counts(quality: Any) -> dict[Any, tuple[int, int]]:
    """class -> (labels, decisions) in a multi-class quality window; {} for other targets."""
    labels = getattr(quality, "label_counts", None)
    if labels is None:
        return {}
    decisions = quality.decision_counts
    return {c: (labels.get(c, 0), decisions.get(c, 0)) for c in sorted(quality.seen, key=str)}
