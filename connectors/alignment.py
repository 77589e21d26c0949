"""Event-time alignment of the live Kafka sources: the events never run ahead of the labels.

After downtime both topics hold a backlog. Read as fast as each partition goes, the events
would be scored hours of event time before the labels of those hours were read, so a catch-up
would serve every event with a model that has learned nothing, unlike the replay of the same
records (:mod:`connectors.replay`), which merges both topics in event-time order. Flink solves
this with *watermark alignment*: a source split that runs more than a maximum drift ahead of
the slowest split of its group pauses. This module does the same for the sources of one
dataflow (``UNDERTOW_MAX_SOURCE_LAG_S``, docs/broker.md, Catch-up):

* every partition of the events and labels sources reports its *position* in event time: the
  time of the next record it will emit (a paused events partition), else the newest time it
  emitted (the records' own time field, the stream file's ``[events] time`` / ``[labels]
  time``, the clock the replay and the model step use);
* an events partition emits a record only while the record's time is at most ``max_lag_ms``
  past the slowest *active* partition of the labels and of the other events partitions; it
  pauses otherwise (it returns nothing and is asked again a moment later);
* a partition at its end (partition EOF: nothing is waiting on the broker) or closed is not
  active: it holds nothing back, so a live stream whose labels topic is quiet never stalls;
* labels never wait: they are held by the model step until an event at or after their time has
  been seen, so reading them early costs nothing.

The events are aligned with each other too, not only with the labels: the model step releases
the labels due by each event's own time, so an events partition far behind the others would
be served with the labels of the others' later times (more than the replay learned by then).

One :class:`SourceAlignment` is shared by the events and labels sources of one dataflow; its
partitions are the ones this *process* reads (Bytewax's workers in a process are threads that
share the sources). Several processes (``-i/-a``) align each its own partitions only: a process
that reads no labels partition does not wait for labels (after :data:`START_WAIT_S` at start-up,
while it waits for the label partitions Kafka lists to be built here).

The module imports neither Bytewax nor confluent-kafka: it is a clock and a lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

EVENTS = "events"
LABELS = "labels"

#: How long an events partition waits at start-up for the label partitions Kafka lists to be
#: built in this process (worker threads build their partitions concurrently); a process that
#: reads only some of them (``-i/-a``) goes on with those it has after this.
START_WAIT_S = 3.0

#: What :meth:`SourceAlignment.limit` answers while a partition that holds the events back has
#: no known position yet: below every valid time (epoch ms >= 0), so nothing timed is emitted.
NOTHING = -1


def record_time(value: bytes | None, field: str) -> int | None:
    """The integer time ``field`` of a JSON object record, or None when it cannot be read (a
    malformed record, which the decoder dead-letters: it moves no clock and waits for none).

    >>> record_time(b'{"ts": 5, "x": 1}', "ts"), record_time(b"{oops", "ts")
    (5, None)
    >>> record_time(b'{"ts": "5"}', "ts"), record_time(b"[1]", "ts"), record_time(None, "ts")
    (None, None, None)
    """
    if not value:
        return None
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    ts = obj.get(field) if type(obj) is dict else None
    return ts if type(ts) is int else None


@dataclass
class _Position:
    side: str
    ts: int | None = None  # the partition's position in event time; None: not known yet
    at_end: bool = False  # at its end or closed: holds nothing back


class AlignedPartition:
    """One partition's handle on its :class:`SourceAlignment`: it reports its position and
    (events) asks how far it may go."""

    def __init__(self, alignment: SourceAlignment, key: tuple[str, str], side: str) -> None:
        self._alignment = alignment
        self._key = key
        self.side = side

    def report(self, ts: int | None, *, at_end: bool) -> None:
        """This partition's position now: the time of its next record (or the newest it emitted;
        None if it has emitted nothing timed yet), and whether it is at its end."""
        self._alignment._report(self._key, ts, at_end)

    def limit(self) -> int | None:
        """The latest event time this (events) partition may emit now; None: no limit."""
        return self._alignment._limit(self._key)

    def leave(self) -> None:
        """The partition is closed: it holds nothing back any more."""
        self._alignment._report(self._key, None, True)


class SourceAlignment:
    """The event-time positions of the partitions of one dataflow's events and labels sources,
    in this process. Thread-safe (Bytewax workers are threads of one process).

    >>> a = SourceAlignment(max_lag_ms=10, clock=lambda: 0.0)
    >>> labels, events = a.join(LABELS, "0-labels"), a.join(EVENTS, "0-events")
    >>> events.limit()  # the labels partition has read nothing: no event may pass yet
    -1
    >>> labels.report(100, at_end=False)
    >>> events.limit()  # up to 10 ms past the labels
    110
    >>> labels.report(100, at_end=True)  # caught up: the labels hold nothing back
    >>> events.limit() is None
    True
    """

    def __init__(self, max_lag_ms: int, *, start_wait_s: float = START_WAIT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_lag_ms < 0:
            raise ValueError(f"max_lag_ms must be >= 0, got {max_lag_ms}")
        self.max_lag_ms = max_lag_ms
        self._start_wait_s = start_wait_s
        self._clock = clock
        self._lock = threading.Lock()
        self._positions: dict[tuple[str, str], _Position] = {}
        self._expected: dict[str, int] = {}
        self._started: float | None = None

    def expect(self, side: str, parts: int) -> None:
        """The source of ``side`` lists ``parts`` partitions (all of them, in every process)."""
        with self._lock:
            self._expected[side] = parts
            if self._started is None:
                self._started = self._clock()

    def join(self, side: str, part: str) -> AlignedPartition:
        """A partition of ``side`` (:data:`EVENTS` or :data:`LABELS`) built in this process."""
        if side not in (EVENTS, LABELS):
            raise ValueError(f"side must be {EVENTS!r} or {LABELS!r}, got {side!r}")
        key = (side, part)
        with self._lock:
            self._positions[key] = _Position(side)
        return AlignedPartition(self, key, side)

    def _report(self, key: tuple[str, str], ts: int | None, at_end: bool) -> None:
        with self._lock:
            p = self._positions[key]
            if ts is not None:
                p.ts = ts
            p.at_end = at_end

    def _limit(self, key: tuple[str, str]) -> int | None:
        with self._lock:
            if self._waiting_for_labels():
                return NOTHING
            slowest: int | None = None
            for k, p in self._positions.items():
                if k == key or p.at_end:
                    continue
                if p.ts is None:
                    return NOTHING
                if slowest is None or p.ts < slowest:
                    slowest = p.ts
        return None if slowest is None else slowest + self.max_lag_ms

    def _waiting_for_labels(self) -> bool:
        """True at start-up while fewer label partitions are built here than Kafka lists, for
        at most ``start_wait_s`` (call with the lock held)."""
        expected = self._expected.get(LABELS, 0)
        if not expected:
            return False
        built = sum(1 for side, _ in self._positions if side == LABELS)
        if built >= expected:
            return False
        return self._started is not None and self._clock() - self._started < self._start_wait_s
