"""The label join: what was served for each event, kept until its label comes or its time runs out.

A model step scores an event now and learns from its label later (seconds to days). The join
keeps, by event id:

* **pending predictions**: the served feature vector and scores of an event
  (:class:`PendingPrediction`), until its label comes or its TTL passes;
* **early labels**: a label that came before its event, for a bounded wait;
* **finished ids**: events learned or expired, remembered for the label TTL so that a second
  label is told apart (duplicate, conflicting, or too late) from a label for an unknown event.

An id is in one of these states at a time, so one :class:`DeadlineMap` holds them all: id ->
(state, deadline, value). The join also holds the labels whose time has not come yet (a label is
usable at its own ``ts``: it waits until an event at or after ``ts`` has been seen, the tie rule of
``river.stream.simulate_qa``), the event clock (the newest event time seen) and two
:class:`~undertow.watermark.Watermark`\\ s:

* a pending prediction expires ``label_ttl_ms`` after its event once the event clock *and* the
  label watermark (the slowest label partition) have passed its deadline, so a label stream
  that lags behind the events never causes a false expiry (``max_pending`` caps the memory when
  labels stop altogether: the oldest expire first);
* an early label expires ``early_label_ttl_ms`` after its own time once the *event* watermark
  (the slowest event partition) has passed it, so a lagging events partition keeps its labels;
* a finished id is forgotten ``label_ttl_ms`` after it finished, by the event clock.

With a wall-clock TTL (``ttl_clock``) every deadline is wall time instead, from when the event
was served or the label held. The join knows ids, times, served features and label values, and
nothing of models: label values are opaque (compared for equality only), and what comes out is
:class:`Matched` (learn from this) or :class:`Unusable` (dead-letter this, with a reason).

>>> join = LabelJoin(label_ttl_ms=1000, early_label_ttl_ms=0)
>>> due = []
>>> join.advance(0, 100, due)
>>> join.serve("e1", "k", {"x": 1.0}, {"m": 0.5}, 100, due)
>>> join.on_label(Label("e1", "k", 150, "yes"), due)  # its time has not come: held
>>> join.advance(0, 150, due)
>>> [(type(r).__name__, r.pending.features, r.label.value) for r in due]
[('Matched', {'x': 1.0}, 'yes')]
>>> due.clear(); join.on_label(Label("e1", "k", 150, "no"), due)
>>> [(r.reason, r.detail) for r in due]
[('conflicting_label', "event was already learned with 'yes'")]
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Set
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from undertow.schema import (
    CONFLICTING_LABEL,
    DUPLICATE_LABEL,
    EXPIRED_EVENT,
    UNKNOWN_EVENT,
    Label,
)
from undertow.watermark import Watermark

# Why a pending prediction ended without teaching the model.
EXPIRY_TTL = "ttl"
EXPIRY_CAPACITY = "capacity"

#: The states of an id in the :class:`DeadlineMap` of a join.
PENDING = 0
EARLY = 1
FINISHED = 2

# What a finished id's value says: learned (with its label value) or expired.
_LEARNED = 1
_EXPIRED = 2

UNKNOWN_DETAIL = (
    "no event with this id is known: never seen, or finished longer than the label TTL ago"
)
TOO_LATE_DETAIL = "label came after the label TTL"


@dataclass(slots=True)
class PendingPrediction:
    """What was served for one event, kept until its label comes or its TTL passes.

    ``scores`` holds each model's score of the event (the champion's was served, the others were
    shadow scores); all models later learn on the same ``features``.
    """

    event_id: str
    key: str
    features: dict[str, float]
    scores: dict[str, Any]
    event_ts: int


class PendingStore(Protocol):
    """Where pending predictions are kept, by event id: a ``dict`` does (the default).

    A store that also keeps the deadline map (``connectors.store.RocksJoinState``, on disk) has
    a ``deadlines`` attribute (a :class:`DeadlineStore`); the join then uses that one too, so
    nothing it holds per id stays in memory.
    """

    def __setitem__(self, event_id: str, p: PendingPrediction, /) -> None: ...
    def get(self, event_id: str, /) -> PendingPrediction | None: ...
    def pop(self, event_id: str, /) -> PendingPrediction: ...
    def __contains__(self, event_id: object, /) -> bool: ...
    def __iter__(self) -> Iterator[str]: ...
    def __len__(self) -> int: ...
    def values(self) -> Any: ...


class DeadlineStore(Protocol):
    """What the join needs of its deadline map: :class:`DeadlineMap` in memory is the model."""

    def __len__(self) -> int: ...
    def get(self, key: str, /) -> tuple[int, int, Any] | None: ...
    def put(self, key: str, state: int, deadline: int, value: Any = None, /) -> None: ...
    def pop(self, key: str, /) -> tuple[int, int, Any] | None: ...
    def count(self, state: int, /) -> int: ...
    def contains(self, state: int, key: str, /) -> bool: ...
    def iter_ids(self, state: int, /) -> Iterator[str]: ...
    def pop_due(self, horizons: tuple[int | None, ...], /) -> tuple[str, int, int, Any] | None: ...
    def pop_oldest(self, state: int, /) -> tuple[str, int, int, Any] | None: ...
    def clear(self, state: int, /) -> list[tuple[str, Any]]: ...


class Matched(NamedTuple):
    """A label that found what was served for its event, in time: learn from it."""

    pending: PendingPrediction
    label: Label


class Unusable(NamedTuple):
    """A label that cannot be learned: dead-letter it with ``reason`` and ``detail``."""

    label: Label
    reason: str
    detail: str


class DeadlineMap:
    """Ids with a state, a deadline and a value; what is due comes out in deadline order.

    Each state is judged on its own clock (a pending prediction on the event clock and the label
    watermark, an early label on the event watermark, ...), so the order is kept per state and
    :meth:`pop_due` takes one horizon per state: it removes and returns the entry with the
    earliest deadline before its state's horizon. Entries replaced or removed stay in the order
    until they come up, and are skipped then.

    >>> dm = DeadlineMap(2)
    >>> dm.put("a", 0, 30); dm.put("b", 1, 10); dm.put("c", 0, 20)
    >>> dm.put("a", 1, 25)  # replaced: one entry per id
    >>> [dm.pop_due((100, 100)) for _ in range(4)]
    [('b', 1, 10, None), ('c', 0, 20, None), ('a', 1, 25, None), None]
    """

    __slots__ = ("entries", "_order", "_sizes")

    def __init__(self, states: int) -> None:
        #: id -> (state, deadline, value)
        self.entries: dict[str, tuple[int, int, Any]] = {}
        self._order: list[list[tuple[int, str]]] = [[] for _ in range(states)]
        self._sizes = [0] * states

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> tuple[int, int, Any] | None:
        return self.entries.get(key)

    def put(self, key: str, state: int, deadline: int, value: Any = None) -> None:
        """Set ``key``'s state, deadline and value (replacing what it had)."""
        old = self.entries.get(key)
        if old is not None:
            self._sizes[old[0]] -= 1
        self.entries[key] = (state, deadline, value)
        self._sizes[state] += 1
        heapq.heappush(self._order[state], (deadline, key))

    def pop(self, key: str) -> tuple[int, int, Any] | None:
        """Remove ``key``; its entry, or None."""
        old = self.entries.pop(key, None)
        if old is not None:
            self._sizes[old[0]] -= 1
        return old

    def count(self, state: int) -> int:
        return self._sizes[state]

    def ids(self, state: int) -> Set[str]:
        """A live, read-only view of the ids in ``state``."""
        return _Ids(self, state)

    def contains(self, state: int, key: str) -> bool:
        e = self.entries.get(key)
        return e is not None and e[0] == state

    def iter_ids(self, state: int) -> Iterator[str]:
        return (k for k, e in self.entries.items() if e[0] == state)

    def _head(self, state: int) -> tuple[int, str] | None:
        order = self._order[state]
        entries = self.entries
        while order:
            deadline, key = order[0]
            e = entries.get(key)
            if e is not None and e[0] == state and e[1] == deadline:
                return order[0]
            heapq.heappop(order)  # replaced or removed since
        return None

    def pop_due(self, horizons: tuple[int | None, ...]) -> tuple[str, int, int, Any] | None:
        """Remove and return ``(id, state, deadline, value)`` of the earliest entry whose
        deadline is before its state's horizon (a horizon of None: nothing of that state is
        due); None when nothing is due."""
        entries = self.entries
        order = self._order
        best: tuple[int, str] | None = None
        best_state = -1
        for state, horizon in enumerate(horizons):
            if horizon is None:
                continue
            heap = order[state]
            while heap and heap[0][0] < horizon:
                head = heap[0]
                e = entries.get(head[1])
                if e is not None and e[0] == state and e[1] == head[0]:
                    if best is None or head < best:
                        best, best_state = head, state
                    break
                heapq.heappop(heap)  # replaced or removed since
        if best is None:
            return None
        heapq.heappop(order[best_state])
        key = best[1]
        state, deadline, value = entries.pop(key)
        self._sizes[state] -= 1
        return key, state, deadline, value

    def pop_oldest(self, state: int) -> tuple[str, int, int, Any] | None:
        """Remove and return the entry of ``state`` with the earliest deadline."""
        head = self._head(state)
        if head is None:
            return None
        heapq.heappop(self._order[state])
        key = head[1]
        _, deadline, value = self.entries.pop(key)
        self._sizes[state] -= 1
        return key, state, deadline, value

    def clear(self, state: int) -> list[tuple[str, Any]]:
        """Remove every entry of ``state``; their ``(id, value)`` in the order they were added."""
        gone = [(k, e[2]) for k, e in self.entries.items() if e[0] == state]
        for k, _ in gone:
            del self.entries[k]
        self._sizes[state] = 0
        self._order[state].clear()
        return gone


class _Ids(Set[str]):
    """A live, read-only view of the ids in one state of a deadline map."""

    __slots__ = ("_map", "_state")

    def __init__(self, dm: DeadlineStore, state: int) -> None:
        self._map = dm
        self._state = state

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._map.contains(self._state, key)

    def __iter__(self) -> Iterator[str]:
        return self._map.iter_ids(self._state)

    def __len__(self) -> int:
        return self._map.count(self._state)


@dataclass(slots=True)
class JoinCounts:
    """Monotonic counts of the join since start."""

    pending_expired: dict[str, int] = field(
        default_factory=lambda: {EXPIRY_TTL: 0, EXPIRY_CAPACITY: 0}
    )
    early_labels: int = 0
    early_expired: int = 0


class LabelJoin:
    """Pending predictions, early labels and finished ids of one model step, with their clocks.

    Every method that can release labels appends what they became to ``results``, in order:
    :class:`Matched` or :class:`Unusable`. ``ttl_clock`` (a wall-clock getter, seconds) measures
    the TTLs in wall time from when an event was served or a label held; None, in event time.
    ``pending`` is where pending predictions are stored (a new ``dict`` by default); if it
    has a ``deadlines`` attribute, that is the deadline map (else a new :class:`DeadlineMap`).
    """

    def __init__(
        self,
        *,
        label_ttl_ms: int,
        early_label_ttl_ms: int,
        max_pending: int = 1_000_000,
        ttl_clock: Callable[[], float] | None = None,
        label_partitions: int | None = None,
        event_partitions: int | None = None,
        pending: PendingStore | None = None,
    ) -> None:
        if label_ttl_ms <= 0:
            raise ValueError(f"label_ttl_ms must be > 0, got {label_ttl_ms}")
        if early_label_ttl_ms < 0:
            raise ValueError(f"early_label_ttl_ms must be >= 0, got {early_label_ttl_ms}")
        if max_pending <= 0:
            raise ValueError(f"max_pending must be > 0, got {max_pending}")
        self.label_ttl_ms = label_ttl_ms
        self.early_label_ttl_ms = early_label_ttl_ms
        self.max_pending = max_pending
        self.ttl_clock = ttl_clock
        #: The newest event time seen (ms): labels are due by it.
        self.clock: int | None = None
        self.label_wm = Watermark(expected=label_partitions)
        self.event_wm = Watermark(expected=event_partitions)
        self.pending: PendingStore = pending if pending is not None else {}
        store_deadlines = getattr(self.pending, "deadlines", None)
        self.deadlines: DeadlineStore = (
            DeadlineMap(3) if store_deadlines is None else store_deadlines
        )
        self._waiting: list[tuple[int, int, Label]] = []  # (ts, seq, label): time not yet come
        self._seq = 0
        self.counts = JoinCounts()

    # -- read-outs ------------------------------------------------------------------------------

    @property
    def early(self) -> Set[str]:
        """Ids of the events whose label came first and waits."""
        return _Ids(self.deadlines, EARLY)

    @property
    def finished(self) -> Set[str]:
        """Ids of the events learned or expired, remembered for the label TTL."""
        return _Ids(self.deadlines, FINISHED)

    @property
    def waiting_labels(self) -> int:
        """Labels held until the event clock reaches their time."""
        return len(self._waiting)

    def is_served(self, event_id: str) -> bool:
        """True if an event with this id is pending or finished (a new one is a duplicate)."""
        e = self.deadlines.get(event_id)
        return e is not None and e[0] != EARLY

    def attach(self) -> None:
        """After a resume from a snapshot: a store on disk reopens itself as of that snapshot
        (a ``dict`` needs nothing)."""
        attach = getattr(self.pending, "attach", None)
        if attach is not None:
            attach()

    # -- the inputs -----------------------------------------------------------------------------

    def advance(self, partition: Any, ts: int, results: list[Any]) -> None:
        """An event at ``ts`` came on ``partition``: move the clocks, release the labels due by
        ``ts``, then expire what the clocks have passed."""
        self.event_wm.update(partition, ts)
        clock = self.clock
        if clock is None or ts > clock:
            self.clock = clock = ts
        # An out-of-order event never moves the clock back, but labels due by it are released.
        waiting = self._waiting
        while waiting and waiting[0][0] <= ts:
            _, _, label = heapq.heappop(waiting)
            self._apply(label, results)
        if self.ttl_clock is not None:
            self.on_wall_clock(results)
            return
        label_wm = self.label_wm.value
        self._expire(
            (None if label_wm is None else min(clock, label_wm), self.event_wm.value, clock),
            results,
        )

    def serve(
        self,
        event_id: str,
        key: str,
        features: dict[str, float],
        scores: dict[str, Any],
        ts: int,
        results: list[Any],
    ) -> None:
        """Keep what was served for a new event (call :meth:`advance` first, and serve only if
        not :meth:`is_served`); the label that came early for it, if any, is matched now."""
        dm = self.deadlines
        held = dm.get(event_id)
        if held is not None:
            if held[0] != EARLY:
                raise ValueError(f"event {event_id!r} was already served")
            dm.pop(event_id)
        start = self._wall_ms() if self.ttl_clock is not None else ts
        self.pending[event_id] = PendingPrediction(event_id, key, features, scores, ts)
        dm.put(event_id, PENDING, start + self.label_ttl_ms)
        if len(self.pending) > self.max_pending:
            oldest = dm.pop_oldest(PENDING)
            if oldest is not None:
                self._expired(oldest[0], oldest[2], EXPIRY_CAPACITY)
        if held is not None:
            self._apply(held[2], results)

    def on_label(self, label: Label, results: list[Any]) -> None:
        """Apply a label now if its time has come, else hold it until the clock reaches it."""
        if self.label_wm.update((label.topic, label.partition), label.ts) and (
            self.ttl_clock is None
        ):
            clock, label_wm = self.clock, self.label_wm.value
            if clock is not None and label_wm is not None:
                self._expire((min(clock, label_wm), None, None), results)
        if self.clock is None or label.ts > self.clock:
            self._seq += 1
            heapq.heappush(self._waiting, (label.ts, self._seq, label))
        else:
            self._apply(label, results)

    def on_end(self, results: list[Any]) -> None:
        """End of a bounded input: every held label is due; early labels will never match."""
        while self._waiting:
            _, _, label = heapq.heappop(self._waiting)
            self._apply(label, results)
        for _, label in self.deadlines.clear(EARLY):
            self.counts.early_expired += 1
            results.append(Unusable(label, UNKNOWN_EVENT, UNKNOWN_DETAIL))

    def on_wall_clock(self, results: list[Any]) -> None:
        """With a wall-clock TTL: expire what the wall clock has passed (call periodically)."""
        if self.ttl_clock is None:
            return
        now_ms = self._wall_ms()
        self._expire((now_ms, now_ms, now_ms), results)

    # -- internals ------------------------------------------------------------------------------

    def _wall_ms(self) -> int:
        assert self.ttl_clock is not None
        return int(self.ttl_clock() * 1000)

    def _expire(self, horizons: tuple[int | None, int | None, int | None],
                results: list[Any]) -> None:
        """Everything whose deadline is before its state's horizon ends, in deadline order."""
        pop_due = self.deadlines.pop_due
        while (due := pop_due(horizons)) is not None:
            event_id, state, deadline, value = due
            if state == PENDING:
                self._expired(event_id, deadline, EXPIRY_TTL)
            elif state == EARLY:
                self.counts.early_expired += 1
                results.append(Unusable(value, UNKNOWN_EVENT, UNKNOWN_DETAIL))
            # a finished id is forgotten: a label for it is now for an unknown event

    def _expired(self, event_id: str, deadline: int, why: str) -> None:
        """A pending prediction ends unlearned; its id is remembered as expired."""
        del self.pending[event_id]
        self.counts.pending_expired[why] += 1
        self.deadlines.put(event_id, FINISHED, deadline + self.label_ttl_ms, (_EXPIRED, None))

    def _apply(self, label: Label, results: list[Any]) -> None:
        dm = self.deadlines
        event_id = label.event_id
        e = dm.get(event_id)
        if e is None or e[0] != PENDING:
            self._unmatched(label, e, results)
            return
        if self.ttl_clock is None and label.ts > e[1]:
            self._expired(event_id, e[1], EXPIRY_TTL)
            results.append(Unusable(label, EXPIRED_EVENT, TOO_LATE_DETAIL))
            return
        p = self.pending.pop(event_id)
        since = self._wall_ms() if self.ttl_clock is not None else max(label.ts, p.event_ts)
        dm.put(event_id, FINISHED, since + self.label_ttl_ms, (_LEARNED, label.value))
        results.append(Matched(p, label))

    def _unmatched(self, label: Label, e: tuple[int, int, Any] | None,
                   results: list[Any]) -> None:
        if e is not None:
            if e[0] == FINISHED:
                kind, value = e[2]
                if kind == _EXPIRED:
                    results.append(Unusable(label, EXPIRED_EVENT, TOO_LATE_DETAIL))
                elif value == label.value:
                    results.append(Unusable(label, DUPLICATE_LABEL, "event was already learned"))
                else:
                    results.append(Unusable(label, CONFLICTING_LABEL,
                                            f"event was already learned with {value!r}"))
            else:  # EARLY: a label for this event already waits
                reason = DUPLICATE_LABEL if e[2].value == label.value else CONFLICTING_LABEL
                results.append(Unusable(label, reason, "a label for this event is already waiting"))
            return
        self.counts.early_labels += 1
        since = self._wall_ms() if self.ttl_clock is not None else label.ts
        self.deadlines.put(label.event_id, EARLY, since + self.early_label_ttl_ms, label)
