"""Event-time features from a declarative spec, one sharded step per entity key.

:func:`spec_features` chains one step per key group of a :class:`~undertow.features.FeatureSpec`
and a final map that adds the pass-through and one-hot features and applies the transforms. Each
step returns the featured events, the closed tumbling/hopping windows, and the late records.

Entity state is grouped into ``shards`` keys (``crc32(entity) % shards``) rather than one Bytewax
key per entity: a per-entity key costs ~6.6 us per event in Bytewax's ``stateful_batch`` against
~0.6-1 us for a shard key (measured with 50k entities, 200k events), and the shard logic evicts
idle entities itself. Shards are spread over the workers by Bytewax's own key routing, so more
processes (``-i/-a``) share the entity space. Between the steps of :func:`spec_features` records
travel in chunks (one per batch and shard), so routing them is one Python call per batch and step
rather than several per event. Within a batch, records are taken in event-time
order (ties by replay position, then event id), the order the data happened.
"""

from __future__ import annotations

import itertools
import os
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from connectors import metrics
from undertow.features import (
    FeatureSpec,
    GroupState,
    KeyGroup,
    WindowAggregate,
    entity_of,
    finish,
)
from undertow.schema import (  # noqa: F401
    FUTURE_EVENT,
    INVALID_RECORD,
    LATE_EVENT,
    DeadLetter,
    Event,
    FeaturedEvent,
)


@dataclass(frozen=True)
class FeaturesOut:
    """Featured events, closed window aggregates, and late records (as dead letters)."""

    featured: Stream[FeaturedEvent]
    windows: Stream[WindowAggregate]
    late: Stream[DeadLetter]


#: How often a shard exports its metrics (state sizes, late, evicted, closed windows), at most.
REPORT_EVERY_S = 0.5


def _event_order(fe: FeaturedEvent) -> tuple[int, int, str]:
    ev = fe.event
    return (ev.ts, ev.seq, ev.event_id)


def shard_of(entity: str, shards: int) -> str:
    """The shard key of an entity: stable across processes (unlike ``hash``)."""
    # surrogatepass: any str hashes (a lone surrogate too), and valid text as plain UTF-8.
    return str(zlib.crc32(entity.encode("utf-8", "surrogatepass")) % shards)


#: What a shard emits per call: its featured events (requests too), closed windows and dead
#: letters (late, too far ahead, unusable), each in order.
_Out = tuple[list[FeaturedEvent], list[WindowAggregate], list[DeadLetter]]


class _ShardLogic(StatefulBatchLogic[FeaturedEvent, Any, GroupState]):
    def __init__(self, step_id: str, shard: str, state: GroupState,
                 max_future_skew_ms: int | None = None) -> None:
        self.step_id = step_id
        self.max_future_skew_ms = max_future_skew_ms
        self.shard = shard
        self.via = f"{os.getpid()}.{shard}"  # unique per shard instance: a path to the next step
        self.state = state
        self._late = state.late
        self._evicted = state.evicted_entities
        self._misses = state.window_misses
        self._closed = metrics.WINDOWS_CLOSED.labels(step=step_id)
        # The shard's metrics are exported at most every REPORT_EVERY_S, and at the end.
        self._closed_owed = 0
        self._next_report = 0.0
        self._owed = False  # a batch since the last export

    def on_batch(self, values: list[FeaturedEvent]) -> tuple[list[Any], bool]:
        out: list[Any] = []
        windows: list[WindowAggregate] = []
        self._serve(values, out, out, windows)
        out.extend(windows)
        return out, StatefulBatchLogic.RETAIN

    def _serve(self, values: list[FeaturedEvent], featured: list[FeaturedEvent],
               late: list[DeadLetter], windows: list[WindowAggregate]) -> None:
        """Serve a batch: featured events (requests too) to ``featured``, dead letters to
        ``late`` (the same list keeps them in event order), closed windows to ``windows``."""
        update = self.state.update
        via = self.via
        # Upstream steps group their output by key, so a batch can arrive out of event-time order;
        # serve it in event-time order, which is the order the data happened.
        values.sort(key=_event_order)
        skew = self.max_future_skew_ms
        newest = max(self.state.wm.newest.values(), default=None) if skew is not None else None
        for fe in values:
            ev = fe.event
            if fe.request is not None:
                featured.append(self._request(fe, newest))
                continue
            if skew is not None:
                # The shard's clock (its newest time, or the wall clock when the record was read
                # if that is later: a stream that pauses longer than the skew resumes) bounds how
                # far ahead a record may be; beyond it, it moves no clock. No clock yet: accepted.
                clock = max(newest or 0, int(ev.read_at * 1000))
                if clock and ev.ts > clock + skew:
                    late.append(DeadLetter.of_event(
                        ev, FUTURE_EVENT,
                        f"event time {ev.ts} is more than {skew} ms ahead of the clock {clock} "
                        f"at step {self.step_id!r} (UNDERTOW_MAX_FUTURE_SKEW_S)", self.step_id,
                    ))
                    continue
                if newest is None or ev.ts > newest:
                    newest = ev.ts
            try:
                feats = update(ev.fields, ev.ts, (ev.partition, fe.via), windows)
            except Exception as ex:  # no record may crash the step: this one is a dead letter
                late.append(DeadLetter.of_event(
                    ev, INVALID_RECORD, f"{type(ex).__name__}: {ex}"[:500], self.step_id))
                continue
            if feats is None:
                late.append(DeadLetter.of_event(
                    ev, LATE_EVENT,
                    f"event time {ev.ts} is older than the watermark minus the allowed lateness "
                    f"at step {self.step_id!r}", self.step_id,
                ))
                continue
            # feats is a new dict of this record's: the first step's can be passed on as it is.
            featured.append(FeaturedEvent(ev, {**fe.features, **feats} if fe.features else feats,
                                          via))
        self._report(len(windows))

    def on_notify(self) -> tuple[list[Any], bool]:
        self._report(0)
        return [], StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if not self._owed:
            return None
        wait = self._next_report - time.monotonic()
        return datetime.now(UTC) + timedelta(seconds=max(0.0, wait))

    def _request(self, fe: FeaturedEvent, newest: int | None) -> FeaturedEvent:
        """A request with this step's features as of its time, the state untouched; or with the
        error that stops it being scored (late, too far ahead, a record the features cannot
        use), which the model step answers."""
        req = fe.request
        if req.error is not None:
            return fe
        ev = fe.event
        skew = self.max_future_skew_ms
        error = None
        if skew is not None:
            clock = max(newest or 0, int(ev.read_at * 1000))
            if clock and ev.ts > clock + skew:
                error = (FUTURE_EVENT, f"event time {ev.ts} is more than {skew} ms ahead of the "
                         f"clock {clock} at step {self.step_id!r} (UNDERTOW_MAX_FUTURE_SKEW_S)")
        if error is None:
            try:
                feats = self.state.peek(ev.fields, ev.ts)
            except Exception as ex:
                feats, error = None, (INVALID_RECORD, f"{type(ex).__name__}: {ex}"[:500])
            else:
                if feats is None:
                    error = (LATE_EVENT, f"event time {ev.ts} is older than the watermark minus "
                             f"the allowed lateness at step {self.step_id!r}")
        if error is not None:
            return FeaturedEvent(ev, fe.features, self.via, req._replace(error=error))
        merged = dict(fe.features)
        merged.update(feats)  # type: ignore[arg-type]
        return FeaturedEvent(ev, merged, self.via, req)

    def on_eof(self) -> tuple[list[Any], bool]:
        windows: list[WindowAggregate] = []
        self.state.flush(windows)
        self._report(len(windows), force=True)
        return windows, StatefulBatchLogic.RETAIN

    def _report(self, closed: int, *, force: bool = False) -> None:
        self._closed_owed += closed
        now = time.monotonic()
        if not force and now < self._next_report:
            self._owed = True
            return
        self._next_report = now + REPORT_EVERY_S
        self._owed = False
        closed, self._closed_owed = self._closed_owed, 0
        st = self.state
        if st.late != self._late:
            metrics.LATE_EVENTS.labels(step=self.step_id).inc(st.late - self._late)
            self._late = st.late
        if st.evicted_entities != self._evicted:
            metrics.ENTITIES_EVICTED.labels(step=self.step_id).inc(
                st.evicted_entities - self._evicted
            )
            self._evicted = st.evicted_entities
        if closed:
            self._closed.inc(closed)
        if st.window_misses != self._misses:
            metrics.WINDOW_MISSES.labels(step=self.step_id).inc(st.window_misses - self._misses)
            self._misses = st.window_misses
        metrics.STATE_SIZES.set(self.step_id, self.shard, len(st), st.records, st.open_windows)

    def snapshot(self) -> GroupState:
        return self.state


class _ChunkedShardLogic(_ShardLogic):
    """A shard as the feature steps run it: its values come in chunks (one per upstream batch
    and shard, :func:`_by_shard`), and each call emits one output (:data:`_Out`) rather than an
    item per record, so nothing downstream runs per record to route them."""

    def on_batch(  # type: ignore[override]
        self, values: list[list[FeaturedEvent]]
    ) -> tuple[list[Any], bool]:
        batch = values[0] if len(values) == 1 else [fe for chunk in values for fe in chunk]
        featured: list[FeaturedEvent] = []
        windows: list[WindowAggregate] = []
        late: list[DeadLetter] = []
        self._serve(batch, featured, late, windows)
        return [(featured, windows, late)], StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Any], bool]:
        windows, _ = super().on_eof()
        return ([([], windows, [])] if windows else []), StatefulBatchLogic.RETAIN


@dataclass(frozen=True)
class _GroupOut:
    """One key group's steps: the shards' outputs (``outs``: ``(shard, _Out)``, one per shard
    and batch, for the next step to regroup), and the closed windows and dead letters taken
    out of them."""

    outs: Stream[tuple[str, _Out]]
    windows: Stream[WindowAggregate]
    late: Stream[DeadLetter]


def _by_shard(
    key: tuple[str, ...], shards: int, unpack: Callable[[list[Any]], Iterable[FeaturedEvent]]
) -> Callable[[list[Any]], list[tuple[str, list[FeaturedEvent]]]]:
    """A batch mapper: the featured events ``unpack`` finds in a batch, one chunk per shard
    (in their order), keyed by shard. One Python call per batch instead of one per event."""

    def regroup(batch: list[Any]) -> list[tuple[str, list[FeaturedEvent]]]:
        chunks: dict[str, list[FeaturedEvent]] = {}
        for fe in unpack(batch):
            shard = shard_of(entity_of(fe.event.fields, key), shards)
            chunk = chunks.get(shard)
            if chunk is None:
                chunks[shard] = [fe]
            else:
                chunk.append(fe)
        return list(chunks.items())

    return regroup


def _windows_of(batch: list[tuple[str, _Out]]) -> list[WindowAggregate]:
    return [w for _, out in batch for w in out[1]]


def _late_of(batch: list[tuple[str, _Out]]) -> list[DeadLetter]:
    return [d for _, out in batch for d in out[2]]


def _featured_of(batch: list[tuple[str, _Out]]) -> Iterator[FeaturedEvent]:
    return (fe for _, out in batch for fe in out[0])


def _group_steps(
    step_id: str,
    up: Stream[Any],
    unpack: Callable[[list[Any]], Iterable[FeaturedEvent]],
    group: KeyGroup,
    shards: int,
    allowed_lateness_ms: int,
    idle_ms: int,
    partitions: Callable[[], int | None] | None,
    max_future_skew_ms: int | None,
) -> _GroupOut:
    """The steps of one key group, in the scope of the operator that calls it (its state is
    ``<operator>.state``): regroup by shard, the shards' state, windows and dead letters."""
    if shards <= 0:
        raise ValueError(f"group_features {step_id!r}: shards must be > 0, got {shards}")
    # Series exist at zero from the start, so dashboards show 0 and rate() sees the first count.
    metrics.LATE_EVENTS.labels(step=step_id)
    metrics.ENTITIES_EVICTED.labels(step=step_id)
    metrics.WINDOWS_CLOSED.labels(step=step_id)
    metrics.WINDOW_MISSES.labels(step=step_id)
    metrics.declare_reasons(step_id)
    keyed = op.flat_map_batch("shard", up, _by_shard(group.key, shards, unpack))

    def build(resume: GroupState | None) -> _ShardLogic:
        # Bytewax does not hand the key to the builder; an instance number names the shard's
        # contribution to the state-size gauges instead.
        state = resume if resume is not None else GroupState(
            group, allowed_lateness_ms=allowed_lateness_ms, idle_ms=idle_ms,
            partitions=partitions() if partitions is not None else None,
        )
        return _ChunkedShardLogic(step_id, str(next(_instances)), state, max_future_skew_ms)

    out = op.stateful_batch("state", keyed, build)
    return _GroupOut(out, op.flat_map_batch("windows", out, _windows_of),
                     op.flat_map_batch("late", out, _late_of))


@operator
def group_features(
    step_id: str,
    up: Stream[FeaturedEvent],
    *,
    group: KeyGroup,
    shards: int,
    allowed_lateness_ms: int,
    idle_ms: int,
    partitions: Callable[[], int | None] | None = None,
    max_future_skew_ms: int | None = None,
) -> FeaturesOut:
    """Add one key group's rolling features to each event, as of its time; emit closed windows.

    ``partitions`` (called at run time, on the worker) gives the number of source partitions the
    watermark waits for; pass it for the first step only. Later steps receive records along
    several paths (one per upstream shard), each in order but interleaved with the others, and
    keep one watermark per (source partition, path), so processing skew between workers never
    makes a record late or closes a window early.

    ``max_future_skew_ms`` (the first step only): a record more than this ahead of the shard's
    clock is a ``future_event`` dead letter on ``late`` and moves no watermark (see
    :class:`_ShardLogic`).
    """
    out = _group_steps(step_id, up, _same, group, shards, allowed_lateness_ms, idle_ms,
                       partitions, max_future_skew_ms)
    return FeaturesOut(op.flat_map_batch("featured", out.outs, _featured_of),
                       out.windows, out.late)


@operator
def _group_step(
    step_id: str,
    up: Stream[Any],
    *,
    unpack: Callable[[list[Any]], Iterable[FeaturedEvent]],
    group: KeyGroup,
    shards: int,
    allowed_lateness_ms: int,
    idle_ms: int,
    partitions: Callable[[], int | None] | None = None,
    max_future_skew_ms: int | None = None,
) -> _GroupOut:
    """:func:`group_features` on the batches ``unpack`` reads featured events from, leaving its
    featured events in the shards' outputs: :func:`spec_features` chains key groups so, with
    one Python call per batch between them rather than several per event."""
    return _group_steps(step_id, up, unpack, group, shards, allowed_lateness_ms, idle_ms,
                        partitions, max_future_skew_ms)


def _same(batch: list[FeaturedEvent]) -> list[FeaturedEvent]:
    return batch


def _started(batch: list[Any]) -> Iterator[FeaturedEvent]:
    # Requests come as featured events already (with their request, and no features yet).
    return (ev if type(ev) is FeaturedEvent else FeaturedEvent(ev, {}) for ev in batch)


@operator
def spec_features(
    step_id: str,
    up: Stream[Event],
    *,
    spec: FeatureSpec,
    shards: int,
    allowed_lateness_ms: int | None = None,
    partitions: Callable[[], int | None] | None = None,
    max_future_skew_ms: int | None = None,
) -> FeaturesOut:
    """Every feature of ``spec`` for each event, as of its own time; with
    ``max_future_skew_ms``, an event that far ahead of the first step's clock is a
    ``future_event`` dead letter on ``late`` instead.

    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSource, TestingSink, run_main
    >>> from undertow.features import Rolling
    >>> spec = FeatureSpec("eg", rolling=(Rolling("n_10m", ("card",), "count", 600_000),
    ...                                   Rolling("sum_10m", ("card",), "sum", 600_000, "x")))
    >>> evs = [Event(f"e{i}", "c1", ts, {"card": "c1", "x": x})
    ...        for i, (ts, x) in enumerate([(0, 10.0), (60_000, 20.0)])]
    >>> flow = Dataflow("spec_eg")
    >>> out = spec_features("features", op.input("in", flow, TestingSource(evs)), spec=spec,
    ...                     shards=4)
    >>> got = []
    >>> op.output("out", out.featured, TestingSink(got))
    >>> run_main(flow)
    >>> [fe.features for fe in got]
    [{'n_10m': 1, 'sum_10m': 10.0}, {'n_10m': 2, 'sum_10m': 30.0}]
    """
    lateness = spec.allowed_lateness_ms if allowed_lateness_ms is None else allowed_lateness_ms
    # The key groups' steps pass their featured events on in the shards' outputs, which the
    # next step regroups (and "finish" unpacks) a batch at a time.
    chained: Stream[Any] = up
    unpack: Callable[[list[Any]], Iterable[FeaturedEvent]] = _started
    windows: list[Stream[WindowAggregate]] = []
    late: list[Stream[DeadLetter]] = []
    for i, group in enumerate(spec.groups()):
        name = "_".join(group.key)
        out = _group_step(
            f"{name}_features", chained, unpack=unpack, group=group, shards=shards,
            allowed_lateness_ms=lateness, idle_ms=spec.idle_ms,
            partitions=partitions if i == 0 else None,
            max_future_skew_ms=max_future_skew_ms if i == 0 else None,
        )
        chained, unpack = out.outs, _featured_of
        windows.append(out.windows)
        late.append(out.late)

    transforms = spec.transforms()

    def done(fe: FeaturedEvent) -> FeaturedEvent:
        req = fe.request
        if req is None:
            return FeaturedEvent(fe.event, finish(spec, fe.features, fe.event.fields, transforms))
        if req.error is not None:
            return fe
        try:
            return FeaturedEvent(fe.event, finish(spec, fe.features, fe.event.fields, transforms),
                                 "", req)
        except Exception as ex:  # a request is answered, never a crash
            return fe._replace(request=req._replace(
                error=(INVALID_RECORD, f"{type(ex).__name__}: {ex}"[:500])))

    def done_batch(batch: list[Any]) -> list[FeaturedEvent]:
        return [done(fe) for fe in unpack(batch)]

    return FeaturesOut(
        op.flat_map_batch("finish", chained, done_batch),
        op.merge("windows", *windows) if windows else op.filter("no_windows", up, _never),
        op.merge("late", *late) if late else op.filter("no_late", up, _never),
    )


def _never(_: Any) -> bool:
    return False


_instances = itertools.count()
