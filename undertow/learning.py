"""Serve-then-learn: one River model scoring events and learning from their delayed labels.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    """What was served for one event, kept until its label comes or its TTL passes."""

    event_id: str
    key: str
    features: dict[str, float]
    score: float
    predicted: bool
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


class OnlineLearner:
    """One model: score events, keep what was served, learn when the label is due.

    ``model`` is any River classifier; ``score`` is its probability of ``True``. ``wall_clock``
    stamps ``processed_at`` on predictions (inject a fixed clock for reproducible replays).
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
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if label_ttl_ms <= 0:
            raise ValueError(f"label_ttl_ms must be > 0, got {label_ttl_ms}")
        if early_label_ttl_ms < 0:
            raise ValueError(f"early_label_ttl_ms must be >= 0, got {early_label_ttl_ms}")
        if max_pending <= 0:
            raise ValueError(f"max_pending must be > 0, got {max_pending}")
        self.name = name
        self.model = model
        self.version = version
        self.label_ttl_ms = label_ttl_ms
        self.early_label_ttl_ms = early_label_ttl_ms
        self.max_pending = max_pending
        self.threshold = threshold
        self.wall_clock = wall_clock
        self.clock: int | None = None
        self.label_wm = PartitionWatermark(label_partitions)
        self.event_wm = PartitionWatermark(event_partitions)
        self.labels_learned = 0
        self.pending: dict[str, PendingPrediction] = {}
        self._pending_heap: list[tuple[int, str]] = []  # (deadline, event_id); lazy deletion
        self._waiting: list[tuple[int, int, Label]] = []  # labels whose time has not come yet
        self._seq = 0
        self.early: dict[str, tuple[Label, int]] = {}  # event_id -> (label, deadline)
        self._early_heap: list[tuple[int, str]] = []
        self.finished: dict[str, tuple[int, bool | None]] = {}  # event_id -> (kind, label value)
        self._finished_heap: list[tuple[int, str]] = []
        self.served_quality = RollingQuality(quality_window)
        #: Concept drift on the served absolute error and on the served scores.
        self.error_drift = ConceptDrift()
        self.score_drift = ConceptDrift()
        self.feature_drift = feature_drift if feature_drift is not None else FeatureDrift()
        self.last_learn_at: float | None = None
        self.counts = LearnerCounts()
        # Observations for histograms, drained by the operator after each batch.
        self.label_delays_s: list[float] = []
        self.event_lags_s: list[float] = []

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
                    f"event {ev.event_id!r} was already scored by model {self.name!r}",
                    orjson.dumps(ev.fields),
                    ev.key.encode(),
                    step=self.name,
                )
            )
            return
        x = fe.features
        proba = self.model.predict_proba_one(x)
        score = float(proba.get(True, 0.0))
        predicted = score >= self.threshold
        now = self.wall_clock()
        out.append(
            Prediction(
                ev.event_id,
                ev.key,
                score,
                predicted,
                self.name,
                self.version,
                self.labels_learned,
                ev.ts,
                now,
                ev.read_at,
            )
        )
        self.event_lags_s.append(now - ev.ts / 1000.0)
        self.score_drift.update(score, ev.ts)
        self.feature_drift.update(x)
        deadline = ev.ts + self.label_ttl_ms
        self.pending[ev.event_id] = PendingPrediction(
            ev.event_id, ev.key, x, score, predicted, ev.ts, deadline
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
        if self.label_wm.update((label.topic, label.partition), label.ts):
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

    # -- internals ------------------------------------------------------------------------------

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
        self._expire_due()
        early_heap = self._early_heap
        event_wm = self.event_wm.value
        while early_heap and event_wm is not None and early_heap[0][0] < event_wm:
            deadline, event_id = heapq.heappop(early_heap)
            held = self.early.get(event_id)
            if held is not None and held[1] == deadline:
                del self.early[event_id]
                self.counts.early_expired += 1
                self._dead_letter(held[0], UNKNOWN_EVENT, _UNKNOWN_DETAIL, out)
        fin = self._finished_heap
        while fin and fin[0][0] < clock:
            _, event_id = heapq.heappop(fin)
            self.finished.pop(event_id, None)

    def _expire_due(self) -> None:
        """Expire pending predictions whose deadline both clocks have passed."""
        label_wm = self.label_wm.value
        if self.clock is None or label_wm is None:
            return
        horizon = min(self.clock, label_wm)
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
        if label.ts > p.deadline:
            self._expire(p, EXPIRY_TTL)
            self._dead_letter(label, EXPIRED_EVENT, "label came after the label TTL", out)
            return
        del self.pending[label.event_id]
        y = label.value
        self.served_quality.update(y, p.score, p.predicted)
        self.error_drift.update(abs(float(y) - p.score), self.clock or label.ts)
        self.model.learn_one(p.features, y)
        self.last_learn_at = self.wall_clock()
        self.labels_learned += 1
        self.counts.learned += 1
        self.label_delays_s.append((label.ts - p.event_ts) / 1000.0)
        self._finish(label.event_id, _LEARNED, y, max(label.ts, p.event_ts))

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
        deadline = label.ts + self.early_label_ttl_ms
        self.early[label.event_id] = (label, deadline)
        heapq.heappush(self._early_heap, (deadline, label.event_id))

    def _dead_letter(self, label: Label, reason: str, detail: str, out: list[Any]) -> None:
        d = self.counts.label_dead_letters
        d[reason] = d.get(reason, 0) + 1
        out.append(
            DeadLetter(
                reason,
                f"{detail} (model {self.name!r}, event {label.event_id!r})",
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

    def quality(self) -> dict[str, float]:
        """Rolling quality of served predictions."""
        q = self.served_quality
        return {"accuracy": q.accuracy, "log_loss": q.log_loss, "roc_auc": q.roc_auc}
