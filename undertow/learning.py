"""Serve-then-learn: River models (a champion and its challengers) scoring events and learning
from their delayed labels.

:class:`OnlineLearner` is the pure logic of the model step. It keeps an event-time *clock* (the
largest event time it has scored) and enforces the invariants of DESIGN.md:

* **Score before learn.** An event is scored before its own label can reach the model.
* **Learn on what was served.** The served feature vector and score are kept as a
  :class:`PendingPrediction`; ``learn_one`` gets exactly those features, and quality metrics use
  exactly that score.
* **No label before its time.** A label with ``ts`` later than the clock waits until an event at
  or after ``ts`` arrives; ties follow ``river.stream.simulate_qa``: a label with ``ts <=`` an
  event's ``ts`` is learned before that event is scored. With pass-through features this makes the
  learner reproduce ``river.evaluate.progressive_val_score(..., moment=, delay=)``.
* **Every state ends.** A pending prediction expires ``label_ttl_ms`` of event time after its event,
  judged on both streams: once the event clock *and* the label watermark (the least, over the label
  partitions seen, of the newest label time) have passed its deadline, so a label stream that lags
  behind the events never causes a false expiry (when labels stop altogether, ``max_pending``
  bounds the memory). Given ``label_partitions``, there is no label watermark until every label
  partition has sent a label, so a slow-starting partition cannot be overtaken either;
  a label whose event has not been seen (an *early* label) waits ``early_label_ttl_ms`` after its
  own time, judged on the *event* watermark (the slowest event partition), so an events
  partition that lags behind the others does not lose its labels; ids of finished events are
  remembered for ``label_ttl_ms`` to catch duplicates; the number of pending predictions is
  capped (oldest expire first).

Label outcomes that do not teach the model are returned as :class:`~undertow.schema.DeadLetter`
values (reasons ``unknown_event``, ``expired_event``, ``duplicate_label``, ``conflicting_label``),
so every label is accounted for. The documented rule for a conflicting label (same event, other
value): the first label that arrives is learned; later ones are dead-lettered.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from undertow.drift import ConceptDrift, FeatureDrift
from undertow.quality import RollingQuality
from undertow.schema import (
    CONFLICTING_LABEL,
    DUPLICATE_EVENT,
    DUPLICATE_LABEL,
    EXPIRED_EVENT,
    UNKNOWN_EVENT,
    DeadLetter,
    FeaturedEvent,
    Label,
    ModelSummary,
    Outcome,
    Prediction,
)

# Why a pending prediction or an early label ended without teaching the model.
EXPIRY_TTL = "ttl"
EXPIRY_CAPACITY = "capacity"

_UNKNOWN_DETAIL = (
    "no event with this id is known: never seen, or finished longer than the label TTL ago"
)

_LEARNED = 1
_EXPIRED = 2


class PartitionWatermark:
    """The newest time seen on the slowest partition of a stream.

    Given ``expected`` partitions, there is no watermark until each has delivered a record, so a
    partition that starts late cannot be overtaken.

    >>> wm = PartitionWatermark(expected=2)
    >>> wm.update(0, 50), wm.value
    (False, None)
    >>> wm.update(1, 20), wm.value
    (True, 20)
    """

    __slots__ = ("expected", "newest", "value")

    def __init__(self, expected: int | None = None) -> None:
        self.expected = expected
        self.newest: dict[Any, int] = {}
        self.value: int | None = None

    def update(self, partition: Any, ts: int) -> bool:
        """Record a time on a partition; True if the watermark advanced."""
        newest = self.newest
        if ts <= newest.get(partition, -1):
            return False
        newest[partition] = ts
        if self.expected is not None and len(newest) < self.expected:
            return False
        wm = min(newest.values())
        if self.value is None or wm > self.value:
            self.value = wm
            return True
        return False


@dataclass(slots=True)
class PendingPrediction:
    """What was served for one event, kept until its label comes or its TTL passes.

    ``scores`` holds each model's score of the event (the champion's was served, the others were
    shadow scores); all models later learn on the same ``features``.
    """

    event_id: str
    key: str
    features: dict[str, float]
    scores: dict[str, float]
    event_ts: int
    deadline: int


@dataclass(slots=True)
class LearnerCounts:
    """Monotonic counts since start, drained into Prometheus by the operator layer."""

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


@dataclass(slots=True)
class ModelSlot:
    """One named model of the step: the champion (served) or a challenger (shadow-scored).

    Each slot has its own quality and concept-drift state, computed on its own scores of the same
    events and labels. ``previous`` keeps the models swapped out, newest last, for ``rollback``.
    """

    name: str
    model: Any
    version: int
    quality: RollingQuality
    error_drift: ConceptDrift = field(default_factory=ConceptDrift)
    score_drift: ConceptDrift = field(default_factory=ConceptDrift)
    labels_learned: int = 0
    since_swap: int = 0
    predictions: int = 0
    last_learn_at: float | None = None
    previous: list[tuple[Any, int]] = field(default_factory=list)


@dataclass(frozen=True)
class PromotionRule:
    """Swap in a challenger that beats the champion by ``margin`` on ``metric``.

    Checked every ``every`` learned labels; a challenger is eligible once it and the champion
    have each learned ``min_labels`` labels since they were put in their slots, and both rolling
    windows are full, so both are judged on the same last ``quality_window`` labels.
    """

    metric: str = "roc_auc"
    margin: float = 0.01
    min_labels: int = 1000
    every: int = 500

    def __post_init__(self) -> None:
        if self.metric not in ("roc_auc", "accuracy", "log_loss"):
            raise ValueError(f"promotion metric must be roc_auc, accuracy or log_loss, "
                             f"got {self.metric!r}")
        if self.margin < 0 or self.min_labels < 0 or self.every <= 0:
            raise ValueError("promotion margin and min_labels must be >= 0, every > 0")


class Promotion(NamedTuple):
    """A champion change, by rule or by command, at an event time."""

    ts: int
    old: str
    new: str
    reason: str
    old_value: float
    new_value: float


_KEEP_PREVIOUS = 3
_KEEP_PROMOTIONS = 100


class OnlineLearner:
    """Models that score events, keep what was served, and learn when the label is due.

    ``model`` is the champion, named ``name``; ``challengers`` (name -> model) are scored in
    shadow on the same events and learn from the same labels; one join serves them all, so they
    are compared on exactly the same data. Models are River classifiers; a score is the
    probability of ``True``. ``wall_clock`` stamps ``processed_at`` on predictions; ``None``
    stamps them with the event time instead, which makes a replay's output reproducible.
    ``ttl_clock="wall"`` measures the label TTL (and the early label wait) in wall-clock time from
    when the event was served, for live streams whose labels may never come; the default,
    ``"event"``, measures it in event time.

    A :class:`PromotionRule` makes a challenger that beats the champion the new champion;
    :meth:`swap`, :meth:`rollback`, :meth:`promote` and :meth:`remove` are the control commands.
    """

    def __init__(
        self,
        name: str,
        model: Any,
        *,
        label_ttl_ms: int,
        early_label_ttl_ms: int,
        max_pending: int = 1_000_000,
        threshold: float = 0.5,
        quality_window: int = 1000,
        feature_drift: FeatureDrift | None = None,
        version: int = 1,
        label_partitions: int | None = None,
        event_partitions: int | None = None,
        wall_clock: Callable[[], float] | None = time.time,
        challengers: dict[str, Any] | None = None,
        promotion: PromotionRule | None = None,
        ttl_clock: str = "event",
        emit_outcomes: bool = False,
    ) -> None:
        if label_ttl_ms <= 0:
            raise ValueError(f"label_ttl_ms must be > 0, got {label_ttl_ms}")
        if early_label_ttl_ms < 0:
            raise ValueError(f"early_label_ttl_ms must be >= 0, got {early_label_ttl_ms}")
        if max_pending <= 0:
            raise ValueError(f"max_pending must be > 0, got {max_pending}")
        if ttl_clock not in ("event", "wall"):
            raise ValueError(f"ttl_clock must be 'event' or 'wall', got {ttl_clock!r}")
        if ttl_clock == "wall" and wall_clock is None:
            raise ValueError("ttl_clock='wall' needs a wall_clock")
        self.name = name
        self.label_ttl_ms = label_ttl_ms
        self.early_label_ttl_ms = early_label_ttl_ms
        self.max_pending = max_pending
        self.threshold = threshold
        self.quality_window = quality_window
        self.wall_clock = wall_clock
        self.wall_ttl = ttl_clock == "wall"
        self.emit_outcomes = emit_outcomes
        self.promotion = promotion
        self.slots: dict[str, ModelSlot] = {}
        self.champion = name
        self._add_slot(name, model, version)
        for cname, cmodel in (challengers or {}).items():
            if cname in self.slots:
                raise ValueError(f"challenger {cname!r} has the champion's name")
            self._add_slot(cname, cmodel, 1)
        self.promotions: deque[Promotion] = deque(maxlen=_KEEP_PROMOTIONS)
        self.clock: int | None = None
        self.label_wm = PartitionWatermark(label_partitions)
        self.event_wm = PartitionWatermark(event_partitions)
        self.pending: dict[str, PendingPrediction] = {}
        self._pending_heap: list[tuple[int, str]] = []  # (deadline, event_id); lazy deletion
        self._waiting: list[tuple[int, int, Label]] = []  # labels whose time has not come yet
        self._seq = 0
        self.early: dict[str, tuple[Label, int]] = {}  # event_id -> (label, deadline)
        self._early_heap: list[tuple[int, str]] = []
        self.finished: dict[str, tuple[int, bool | None]] = {}  # event_id -> (kind, label value)
        self._finished_heap: list[tuple[int, str]] = []
        self.feature_drift = feature_drift if feature_drift is not None else FeatureDrift()
        self.counts = LearnerCounts()
        # Observations for histograms, drained by the operator after each batch.
        self.label_delays_s: list[float] = []
        self.event_lags_s: list[float] = []

    def _add_slot(self, name: str, model: Any, version: int) -> ModelSlot:
        slot = ModelSlot(name, model, version, RollingQuality(self.quality_window))
        self.slots[name] = slot
        return slot

    # -- the champion, for callers that serve one model ----------------------------------------

    @property
    def model(self) -> Any:
        return self.slots[self.champion].model

    @property
    def version(self) -> int:
        return self.slots[self.champion].version

    @property
    def labels_learned(self) -> int:
        return self.slots[self.champion].labels_learned

    @property
    def served_quality(self) -> RollingQuality:
        return self.slots[self.champion].quality

    @property
    def error_drift(self) -> ConceptDrift:
        return self.slots[self.champion].error_drift

    @property
    def score_drift(self) -> ConceptDrift:
        return self.slots[self.champion].score_drift

    @property
    def last_learn_at(self) -> float | None:
        return self.slots[self.champion].last_learn_at

    # -- the two inputs -------------------------------------------------------------------------

    def on_event(self, fe: FeaturedEvent, out: list[Any]) -> None:
        """Advance the clock to the event, then score it; results are appended to ``out``."""
        ev = fe.event
        self.counts.events += 1
        self.event_wm.update(ev.partition, ev.ts)
        self._advance(ev.ts, out)
        if ev.event_id in self.pending or ev.event_id in self.finished:
            self.counts.duplicate_events += 1
            out.append(
                DeadLetter(
                    DUPLICATE_EVENT,
                    f"event {ev.event_id!r} was already scored by model step {self.name!r}",
                    orjson.dumps(ev.fields),
                    ev.key.encode(),
                    step=self.name,
                )
            )
            return
        x = fe.features
        now = self.wall_clock() if self.wall_clock is not None else ev.ts / 1000.0
        threshold = self.threshold
        champion = self.champion
        scores: dict[str, float] = {}
        for slot in self.slots.values():
            score = float(slot.model.predict_proba_one(x).get(True, 0.0))
            scores[slot.name] = score
            slot.predictions += 1
            out.append(
                Prediction(
                    ev.event_id,
                    ev.key,
                    score,
                    score >= threshold,
                    slot.name,
                    slot.version,
                    slot.labels_learned,
                    ev.ts,
                    now,
                    ev.read_at,
                    slot.name == champion,
                )
            )
            slot.score_drift.update(score, ev.ts)
        self.event_lags_s.append(now - ev.ts / 1000.0)
        self.feature_drift.update(x)
        deadline = (self._wall_ms() if self.wall_ttl else ev.ts) + self.label_ttl_ms
        self.pending[ev.event_id] = PendingPrediction(
            ev.event_id, ev.key, x, scores, ev.ts, deadline
        )
        heapq.heappush(self._pending_heap, (deadline, ev.event_id))
        if len(self.pending) > self.max_pending:
            self._expire_oldest(out)
        early = self.early.pop(ev.event_id, None)
        if early is not None:
            self._apply(early[0], out)

    def on_label(self, label: Label, out: list[Any]) -> None:
        """Apply a label now if its time has come, else hold it until the clock reaches it."""
        self.counts.labels += 1
        if self.label_wm.update((label.topic, label.partition), label.ts) and not self.wall_ttl:
            self._expire_due()
        self._hold_or_apply(label, out)

    def _hold_or_apply(self, label: Label, out: list[Any]) -> None:
        if self.clock is None or label.ts > self.clock:
            self._seq += 1
            heapq.heappush(self._waiting, (label.ts, self._seq, label))
        else:
            self._apply(label, out)

    def on_end(self, out: list[Any]) -> None:
        """End of a bounded input: every held label is due; early labels will never match."""
        while self._waiting:
            _, _, label = heapq.heappop(self._waiting)
            self._apply(label, out)
        for event_id in list(self.early):
            label, _ = self.early.pop(event_id)
            self.counts.early_expired += 1
            self._dead_letter(label, UNKNOWN_EVENT, _UNKNOWN_DETAIL, out)
        self._early_heap.clear()

    def on_wall_clock(self, out: list[Any]) -> None:
        """With ``ttl_clock="wall"``: expire what the wall clock has passed (call periodically)."""
        if not self.wall_ttl:
            return
        now_ms = self._wall_ms()
        self._expire_pending(now_ms)
        self._expire_early(now_ms, out)
        self._forget_finished(now_ms)

    # -- models: commands and promotion ---------------------------------------------------------

    def swap(self, name: str, model: Any, version: int | None = None) -> str:
        """Put ``model`` in slot ``name`` (a new name becomes a challenger); keep the old one for
        :meth:`rollback`. The version is ``version`` or the slot's next one. Pending events
        keep the scores they were served with; the new model learns from their labels."""
        slot = self.slots.get(name)
        if slot is None:
            self._add_slot(name, model, version if version is not None else 1)
            return f"added challenger {name!r}"
        slot.previous.append((slot.model, slot.version))
        del slot.previous[:-_KEEP_PREVIOUS]
        slot.model = model
        slot.version = version if version is not None else slot.version + 1
        slot.since_swap = 0
        return f"swapped model {name!r} to version {slot.version}"

    def rollback(self, name: str) -> str:
        """Restore the model that the last :meth:`swap` of ``name`` replaced, as it was then."""
        slot = self.slots.get(name)
        if slot is None:
            raise ValueError(f"no model named {name!r}")
        if not slot.previous:
            raise ValueError(f"model {name!r} has no previous version to roll back to")
        slot.model, slot.version = slot.previous.pop()
        slot.since_swap = 0
        return f"rolled model {name!r} back to version {slot.version}"

    def promote(self, name: str, *, reason: str = "command") -> str:
        """Serve ``name`` from now on; the old champion becomes a challenger."""
        if name not in self.slots:
            raise ValueError(f"no model named {name!r}")
        if name == self.champion:
            return f"model {name!r} is already the champion"
        old = self.champion
        metric = self.promotion.metric if self.promotion is not None else "roc_auc"
        self.promotions.append(
            Promotion(
                self.clock or 0, old, name, reason,
                _metric(self.slots[old], metric), _metric(self.slots[name], metric),
            )
        )
        self.champion = name
        return f"promoted {name!r} over {old!r} ({reason})"

    def remove(self, name: str) -> str:
        if name not in self.slots:
            raise ValueError(f"no model named {name!r}")
        if name == self.champion:
            raise ValueError(f"model {name!r} is the champion; promote another one first")
        del self.slots[name]
        for p in self.pending.values():
            p.scores.pop(name, None)
        return f"removed challenger {name!r}"

    def _check_promotion(self) -> None:
        rule = self.promotion
        champ = self.slots[self.champion]
        if rule is None or len(self.slots) < 2 or champ.labels_learned % rule.every:
            return
        window = self.quality_window
        if champ.since_swap < rule.min_labels or len(champ.quality) < window:
            return
        sign = -1.0 if rule.metric == "log_loss" else 1.0  # higher is better after the sign
        best, best_gain = None, rule.margin
        champ_value = sign * _metric(champ, rule.metric)
        for slot in self.slots.values():
            if slot is champ or slot.since_swap < rule.min_labels or len(slot.quality) < window:
                continue
            gain = sign * _metric(slot, rule.metric) - champ_value
            if gain > best_gain:
                best, best_gain = slot.name, gain
        if best is not None:
            self.promote(best, reason=f"{rule.metric} better by {best_gain:.4f} > {rule.margin}")

    # -- internals ------------------------------------------------------------------------------

    def _wall_ms(self) -> int:
        if self.wall_clock is None:
            return self.clock or 0
        return int(self.wall_clock() * 1000)

    def _advance(self, ts: int, out: list[Any]) -> None:
        if self.clock is not None and ts <= self.clock:
            # Out-of-order event: the clock never goes back, but labels due by it are released.
            clock = self.clock
        else:
            clock = self.clock = ts
        waiting = self._waiting
        while waiting and waiting[0][0] <= ts:
            _, _, label = heapq.heappop(waiting)
            self._apply(label, out)
        if self.wall_ttl:
            self.on_wall_clock(out)
            return
        self._expire_due()
        event_wm = self.event_wm.value
        if event_wm is not None:
            self._expire_early(event_wm, out)
        self._forget_finished(clock)

    def _expire_early(self, horizon: int, out: list[Any]) -> None:
        early_heap = self._early_heap
        while early_heap and early_heap[0][0] < horizon:
            deadline, event_id = heapq.heappop(early_heap)
            held = self.early.get(event_id)
            if held is not None and held[1] == deadline:
                del self.early[event_id]
                self.counts.early_expired += 1
                self._dead_letter(held[0], UNKNOWN_EVENT, _UNKNOWN_DETAIL, out)

    def _forget_finished(self, horizon: int) -> None:
        fin = self._finished_heap
        while fin and fin[0][0] < horizon:
            _, event_id = heapq.heappop(fin)
            self.finished.pop(event_id, None)

    def _expire_due(self) -> None:
        """Expire pending predictions whose deadline both clocks have passed."""
        label_wm = self.label_wm.value
        if self.clock is None or label_wm is None:
            return
        self._expire_pending(min(self.clock, label_wm))

    def _expire_pending(self, horizon: int) -> None:
        heap = self._pending_heap
        while heap and heap[0][0] < horizon:
            deadline, event_id = heapq.heappop(heap)
            p = self.pending.get(event_id)
            if p is not None and p.deadline == deadline:
                self._expire(p, EXPIRY_TTL)

    def _expire(self, p: PendingPrediction, why: str) -> None:
        del self.pending[p.event_id]
        self.counts.pending_expired[why] += 1
        self._finish(p.event_id, _EXPIRED, None, p.deadline)

    def _expire_oldest(self, out: list[Any]) -> None:
        heap = self._pending_heap
        while heap:
            deadline, event_id = heapq.heappop(heap)
            p = self.pending.get(event_id)
            if p is not None and p.deadline == deadline:
                self._expire(p, EXPIRY_CAPACITY)
                return

    def _finish(self, event_id: str, kind: int, value: bool | None, since: int) -> None:
        self.finished[event_id] = (kind, value)
        heapq.heappush(self._finished_heap, (since + self.label_ttl_ms, event_id))

    def _apply(self, label: Label, out: list[Any]) -> None:
        p = self.pending.get(label.event_id)
        if p is None:
            self._unmatched(label, out)
            return
        if not self.wall_ttl and label.ts > p.deadline:
            self._expire(p, EXPIRY_TTL)
            self._dead_letter(label, EXPIRED_EVENT, "label came after the label TTL", out)
            return
        del self.pending[label.event_id]
        y = label.value
        clock = self.clock or label.ts
        now = self.wall_clock() if self.wall_clock is not None else clock / 1000.0
        threshold = self.threshold
        scores = p.scores
        x = p.features
        emit = self.emit_outcomes
        for slot in self.slots.values():
            score = scores.get(slot.name)
            if score is not None:
                predicted = score >= threshold
                slot.quality.update(y, score, predicted)
                slot.error_drift.update(abs(float(y) - score), clock)
                if emit:
                    out.append(Outcome(slot.name, slot.version, p.event_id, p.event_ts, label.ts,
                                       y, score, predicted))
            slot.model.learn_one(x, y)
            slot.last_learn_at = now
            slot.labels_learned += 1
            slot.since_swap += 1
        self.counts.learned += 1
        self.label_delays_s.append((label.ts - p.event_ts) / 1000.0)
        since = self._wall_ms() if self.wall_ttl else max(label.ts, p.event_ts)
        self._finish(label.event_id, _LEARNED, y, since)
        if self.promotion is not None:
            self._check_promotion()

    def _unmatched(self, label: Label, out: list[Any]) -> None:
        done = self.finished.get(label.event_id)
        if done is not None:
            kind, value = done
            if kind == _EXPIRED:
                self._dead_letter(label, EXPIRED_EVENT, "label came after the label TTL", out)
            elif value == label.value:
                self._dead_letter(label, DUPLICATE_LABEL, "event was already learned", out)
            else:
                self._dead_letter(
                    label, CONFLICTING_LABEL, f"event was already learned with {value!r}", out
                )
            return
        held = self.early.get(label.event_id)
        if held is not None:
            reason = DUPLICATE_LABEL if held[0].value == label.value else CONFLICTING_LABEL
            self._dead_letter(label, reason, "a label for this event is already waiting", out)
            return
        self.counts.early_labels += 1
        since = self._wall_ms() if self.wall_ttl else label.ts
        deadline = since + self.early_label_ttl_ms
        self.early[label.event_id] = (label, deadline)
        heapq.heappush(self._early_heap, (deadline, label.event_id))

    def _dead_letter(self, label: Label, reason: str, detail: str, out: list[Any]) -> None:
        d = self.counts.label_dead_letters
        d[reason] = d.get(reason, 0) + 1
        out.append(
            DeadLetter(
                reason,
                f"{detail} (model step {self.name!r}, event {label.event_id!r})",
                label.raw,
                label.key.encode(),
                label.topic,
                label.partition,
                label.offset,
                step=self.name,
            )
        )

    # -- read-outs for metrics -------------------------------------------------------------------

    @property
    def waiting_labels(self) -> int:
        return len(self._waiting)

    def quality(self, model: str | None = None) -> dict[str, float]:
        """Rolling quality of one model's scores (the champion's by default)."""
        q = self.slots[model if model is not None else self.champion].quality
        return {"accuracy": q.accuracy, "log_loss": q.log_loss, "roc_auc": q.roc_auc}

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


def _metric(slot: ModelSlot, metric: str) -> float:
    q = slot.quality
    return float(getattr(q, metric))
