"""The per-entity state that computes a feature spec exactly, in event time.

:class:`GroupState` holds one key group's entities (their kept records, :class:`History`) and
open windows (panes, :mod:`undertow.features.aggregates`), with its
:class:`~undertow.watermark.Watermark`; one instance per shard of a dataflow's feature step.
:class:`SpecState` holds every group of a spec in one object, for plain loops (the reference, the
tests, bulk jobs). The rules of time and state are in :mod:`undertow.features`.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterable
from heapq import heappop, heappush
from typing import Any, NamedTuple

import orjson

from undertow.features.aggregates import (
    BY_VALUES,
    PaneAggregate,
    decayed_mean,
    pane_for,
    ratio_of_sum,
)
from undertow.features.spec import FeatureSpec, KeyGroup
from undertow.watermark import Watermark

# -- records --------------------------------------------------------------------------------------


class WindowAggregate(NamedTuple):
    """A closed tumbling/hopping window's aggregate for one entity."""

    spec: str
    feature: str
    key: str
    start: int
    end: int
    value: float
    count: int

    def to_json(self) -> bytes:
        return orjson.dumps(self._asdict())


def entity_of(fields: dict[str, Any], key: tuple[str, ...]) -> str:
    """The entity of a record: its key field, or the key fields joined by ``|``.

    >>> entity_of({"user": "u1", "page": 7}, ("user", "page"))
    'u1|7'
    """
    if len(key) == 1:
        return str(fields[key[0]])
    return "|".join(str(fields[k]) for k in key)


# -- per-entity history ---------------------------------------------------------------------------

class History:
    """The kept records of one entity, sorted by ``ts`` (ties in arrival order)."""

    __slots__ = ("ts", "cols")

    def __init__(self, fields: tuple[str, ...]) -> None:
        self.ts: list[int] = []
        self.cols: dict[str, list[Any]] = {f: [] for f in fields}

    def __len__(self) -> int:
        return len(self.ts)

    def insert(self, ts: int, fields: dict[str, Any]) -> int:
        tss = self.ts
        if not tss or ts >= tss[-1]:
            tss.append(ts)
            for f, col in self.cols.items():
                col.append(fields.get(f))
            return len(tss) - 1
        idx = bisect_right(tss, ts)
        tss.insert(idx, ts)
        for f, col in self.cols.items():
            col.insert(idx, fields.get(f))
        return idx

    def remove(self, idx: int) -> None:
        """Drop the record at ``idx`` (one :meth:`insert` returned)."""
        del self.ts[idx]
        for col in self.cols.values():
            del col[idx]

    def evict_through(self, horizon: int) -> int:
        """Drop the records with ``ts <= horizon``; return how many."""
        n = bisect_right(self.ts, horizon)
        if n:
            del self.ts[:n]
            for col in self.cols.values():
                del col[:n]
        return n


# -- one key group --------------------------------------------------------------------------------

# How :meth:`GroupState._rolling` computes each rolling feature (the others: BY_VALUES).
_COUNT, _SUM, _MEAN, _RATIO, _SINCE_PREV, _LAST, _DISTINCT, _EWM, _BY_VALUES = range(9)
_KINDS = {"count": _COUNT, "sum": _SUM, "mean": _MEAN, "ratio": _RATIO,
          "since_prev": _SINCE_PREV, "last": _LAST, "distinct": _DISTINCT, "ewm": _EWM}
_NO_SUMS: list[Any] = []


def _rolling_plan(group: KeyGroup, widths: list[int]
                  ) -> tuple[list[tuple[str, int, int, Any, int, Any]], int]:
    """Per rolling feature, in order: (name, kind, index of its width, field, slot of its
    window's sum or -1, the feature); and the number of sum slots (one per field and width
    that a sum, a mean or a ratio reads)."""
    slots: dict[tuple[str, int], int] = {}
    plan = []
    for f in group.rolling:
        kind = _KINDS.get(f.agg, _BY_VALUES)
        slot = -1
        if kind in (_SUM, _MEAN, _RATIO):
            slot = slots.setdefault((f.field, f.window_ms), len(slots))  # type: ignore[arg-type]
        plan.append((f.name, kind, widths.index(f.window_ms), f.field, slot, f))
    return plan, len(slots)


class GroupState:
    """The state of one key group (of one shard): entity histories and open windows.

    Invariants, after every call: no entity has an empty history; ``records`` is the number of
    records kept; every kept record is newer than the eviction horizon as of the last time its
    entity was touched (entities untouched since are dropped, front first, once their newest
    record is behind it).
    """

    def __init__(self, group: KeyGroup, *, allowed_lateness_ms: int, idle_ms: int,
                 partitions: int | None = None) -> None:
        self.group = group
        self.lateness = allowed_lateness_ms
        self.wm = Watermark(idle_ms, partitions)
        self.entities: OrderedDict[str, History] = OrderedDict()
        self.records = 0
        self.late = 0
        self.evicted_entities = 0
        self.window_misses = 0
        #: Records served at or behind the eviction horizon (their partition lags more than the
        #: idle limit): served over themselves alone, and not kept.
        self.behind_horizon = 0
        self.panes: dict[tuple[int, str, int], PaneAggregate] = {}  # (feature, entity, start)
        self._scheduled: set[tuple[int, str, int]] = set()  # open windows (feature, entity, start)
        self._closing: list[tuple[int, int, str, int]] = []  # (end, feature index, entity, start)
        # Rolling features by window width, so each window's bounds are found once per event.
        self._widths = sorted({f.window_ms for f in group.rolling})
        self._windowed = [(i, w.hop_ms, w.size_ms, w.field, w.agg, w.distinct_bound)
                          for i, w in enumerate(group.windowed)]
        self._plan = _rolling_plan(group, self._widths)

    # A snapshot holds the state, not the plan (derived from the group): snapshots from before
    # the plan existed restore, and the plan is rebuilt on restore.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_plan", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._plan = _rolling_plan(self.group, self._widths)

    # -- the one entry point ----------------------------------------------------------------------

    def update(
        self, fields: dict[str, Any], ts: int, partition: Any, out_windows: list[WindowAggregate]
    ) -> dict[str, float] | None:
        """Add one record; return its rolling features as of ``ts``, or None if it is late.
        Windows the watermark closes are appended to ``out_windows``."""
        g = self.group
        wm = self.wm.value
        if wm is None:
            closed_upto = horizon = None
        else:
            closed_upto = wm - self.lateness
            horizon = closed_upto - g.longest_ms  # records at or before it are in no window
            if ts < closed_upto:
                # Behind the watermark: late, unless its own path is not behind by that much (a
                # path that appears after the others, or lags more than the idle limit).
                newest = self.wm.newest.get(partition)
                if newest is not None and ts < newest - self.lateness:
                    self.late += 1
                    return None
        key = g.key
        entity = str(fields[key[0]]) if len(key) == 1 else entity_of(fields, key)
        if horizon is not None and ts <= horizon:
            # Nothing it could be served with is kept, and every window it is in has closed: it
            # is served over itself alone and not kept (keeping it would hold a record that no
            # later record's window can reach).
            self.behind_horizon += 1
            alone = History(g.fields)
            alone.insert(ts, fields)
            feats = self._rolling(alone, 0, ts, fields) if g.rolling else {}
        else:
            hist = self.entities.get(entity)
            if hist is None:
                hist = self.entities[entity] = History(g.fields)
            else:
                self.entities.move_to_end(entity)
                if horizon is not None and hist.ts[0] <= horizon:
                    # Records evicted lazily (the entity was not at the back when the horizon
                    # passed them) go before it is read, so its values never depend on the order
                    # entities were touched in.
                    self.records -= hist.evict_through(horizon)
            idx = hist.insert(ts, fields)
            self.records += 1
            try:
                feats = self._rolling(hist, idx, ts, fields) if g.rolling else {}
            except Exception:  # a record the features cannot use must not stay to poison them
                hist.remove(idx)
                self.records -= 1
                if not hist:
                    del self.entities[entity]
                raise
        if self._windowed:
            self._add_to_panes(entity, ts, fields, closed_upto)
        clock = self.wm
        clock.update(partition, ts)
        wm = clock.value
        if wm is not None:
            closed_upto = wm - self.lateness
            closing = self._closing
            if closing and closing[0][0] <= closed_upto:  # else _close has nothing to do
                self._close(closed_upto, out_windows)
            self._evict(closed_upto - g.longest_ms)
        return feats

    def peek(self, fields: dict[str, Any], ts: int) -> dict[str, float] | None:
        """The rolling features :meth:`update` would serve a record now, changing nothing (no
        record kept, no clock moved, no pane, no eviction order); None if it would be late.

        A record is served over the kept records up to its time, and no kept record it would
        not be served with is read: records before ``ts`` minus a window are outside it, and
        those :meth:`update` would evict first are before the oldest window of any record that
        is not late. So the answer equals :meth:`update`'s, without its side effects.
        """
        g = self.group
        wm = self.wm.value
        horizon = None
        if wm is not None:
            closed_upto = wm - self.lateness
            if ts < closed_upto:
                return None
            horizon = closed_upto - g.longest_ms
        if not g.rolling:
            return {}
        key = g.key
        entity = str(fields[key[0]]) if len(key) == 1 else entity_of(fields, key)
        hist = self.entities.get(entity)
        if hist is None or (horizon is not None and ts <= horizon):
            alone = History(g.fields)
            alone.insert(ts, fields)
            return self._rolling(alone, 0, ts, fields)
        idx = hist.insert(ts, fields)
        try:
            return self._rolling(hist, idx, ts, fields)
        finally:
            hist.remove(idx)

    def flush(self, out_windows: list[WindowAggregate]) -> None:
        """End of a bounded input: emit every open window."""
        self._close(None, out_windows)

    @property
    def open_windows(self) -> int:
        return len(self._scheduled)

    def __len__(self) -> int:
        return len(self.entities)

    # -- internals --------------------------------------------------------------------------

    def _rolling(self, hist: History, idx: int, ts: int, fields: dict[str, Any]
                 ) -> dict[str, float]:
        tss = hist.ts
        hi = idx + 1
        lows = [bisect_right(tss, ts - w, 0, hi) for w in self._widths]
        out: dict[str, float] = {}
        cols = hist.cols
        plan, n_sums = self._plan
        # The sum of one field's window is taken once, for its sum, mean and ratio features.
        sums: list[Any] = [None] * n_sums if n_sums else _NO_SUMS
        for name, kind, wi, fld, slot, f in plan:
            lo = lows[wi]
            if kind == _COUNT:
                v: float = hi - lo
            elif kind == _SUM or kind == _MEAN:
                total = sums[slot]
                if total is None:
                    total = sums[slot] = sum(cols[fld][lo:hi])
                v = total if kind == _SUM else total / (hi - lo)
            elif kind == _RATIO:
                x = fields[fld]
                total = sums[slot]
                if total is None:
                    total = sums[slot] = sum(cols[fld][lo:hi])
                v = ratio_of_sum(x, total, hi - lo)
            elif kind == _SINCE_PREV:
                window = f.window_ms
                gap = ts - tss[idx - 1] if idx > lo else window
                v = (gap if gap < window else window) / 1000.0
            elif kind == _LAST:
                v = float(cols[fld][idx - 1]) if idx > lo else f.default
            elif kind == _DISTINCT:
                v = len(set(cols[fld][lo:hi]))
            elif kind == _EWM:
                v = decayed_mean(cols[fld][lo:hi], tss[lo:hi], ts,
                                 f.half_life_ms)  # type: ignore[arg-type]
            else:
                v = BY_VALUES[f.agg](cols[fld][lo:hi])
            out[name] = v
        return out

    def _add_to_panes(self, entity: str, ts: int, fields: dict[str, Any],
                      closed_upto: int | None) -> None:
        # Hopping windows are built from panes of one hop: a record updates one pane, and a
        # window is the merge of its panes when it closes.
        for i, hop, size, wfield, agg, bound in self._windowed:
            pstart = ts // hop * hop
            pkey = (i, entity, pstart)
            if closed_upto is not None and pstart + hop <= closed_upto:
                # Windows holding this pane that are closed and emitted already miss the record.
                closed = sum(1 for s in range(pstart - size + hop, pstart + 1, hop)
                             if s + size <= closed_upto)
                self.window_misses += closed
                if closed == size // hop:
                    continue
            pane = self.panes.get(pkey)
            if pane is None:
                for s in range(pstart - size + hop, pstart + 1, hop):
                    wkey = (i, entity, s)
                    if (closed_upto is None or s + size > closed_upto) and (
                            wkey not in self._scheduled):
                        self._scheduled.add(wkey)
                        heappush(self._closing, (s + size, i, entity, s))
                pane = self.panes[pkey] = pane_for(agg, bound)
            pane.add(ts, fields.get(wfield) if wfield else None)

    def _close(self, horizon: int | None, out: list[WindowAggregate]) -> None:
        closing = self._closing
        g = self.group
        panes = self.panes
        while closing and (horizon is None or closing[0][0] <= horizon):
            end, i, entity, start = heappop(closing)
            self._scheduled.discard((i, entity, start))
            w = g.windowed[i]
            agg = pane_for(w.agg, w.distinct_bound)
            for p in range(start, end, w.hop_ms):
                pane = panes.get((i, entity, p))
                if pane is not None:
                    agg.merge(pane)
            # The window starting at a pane is the last one that holds it.
            panes.pop((i, entity, start), None)
            out.append(WindowAggregate(g.spec, w.name, entity, start, end, agg.value(w.agg),
                                       agg.n))

    def _evict(self, horizon: int) -> None:
        entities = self.entities
        # Entities are kept in the order they were last touched; the front ones are the idlest.
        while entities:
            entity, hist = next(iter(entities.items()))
            tss = hist.ts
            if tss and tss[-1] > horizon:
                break
            del entities[entity]
            self.records -= len(tss)
            self.evicted_entities += 1
        if not entities:
            return
        # The entity just touched (at the back) may hold records that fell out of every window,
        # all of them if the watermark jumped past it: an entity left with none is dropped.
        entity = next(reversed(entities))
        hist = entities[entity]
        if not hist.ts or hist.ts[0] <= horizon:
            self.records -= hist.evict_through(horizon)
            if not hist.ts:
                del entities[entity]
                self.evicted_entities += 1


# -- the whole spec, in one process (plain loops, references, bulk jobs) ------------------------

class SpecState:
    """All groups of a spec in one object: features of each event, as the dataflow serves them
    with one shard per group (the reference loop and tests use it)."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self.groups = [GroupState(g, allowed_lateness_ms=spec.allowed_lateness_ms,
                                  idle_ms=spec.idle_ms) for g in spec.groups()]
        self.transforms = spec.transforms()

    def update(self, fields: dict[str, Any], ts: int, partition: Any = None,
               windows: list[WindowAggregate] | None = None) -> dict[str, float] | None:
        out_w: list[WindowAggregate] = [] if windows is None else windows
        feats: dict[str, float] = {}
        for g in self.groups:
            f = g.update(fields, ts, partition, out_w)
            if f is None:
                return None
            feats.update(f)
        return finish(self.spec, feats, fields, self.transforms)

    def peek(self, fields: dict[str, Any], ts: int) -> dict[str, float] | None:
        """What :meth:`update` would serve the record now, changing nothing (None: late)."""
        feats: dict[str, float] = {}
        for g in self.groups:
            f = g.peek(fields, ts)
            if f is None:
                return None
            feats.update(f)
        return finish(self.spec, feats, fields, self.transforms)


def base_features(spec: FeatureSpec, fields: dict[str, Any]) -> dict[str, float]:
    """The pass-through and one-hot features of one record."""
    passthrough, onehot = spec.base_plan
    out: dict[str, float] = {}
    for name, fld in passthrough:
        out[name] = float(fields[fld])
    for fld, columns in onehot:
        v = fields.get(fld)
        for name, value in columns:
            out[name] = 1.0 if v == value else 0.0
    return out


def finish(spec: FeatureSpec, feats: dict[str, float], fields: dict[str, Any],
           transforms: dict[str, str] | None = None) -> dict[str, float]:
    """Add the pass-through and one-hot features, then apply the transforms (``transforms``:
    ``spec.transforms()``, computed once by the caller)."""
    feats.update(base_features(spec, fields))
    for name, t in (transforms if transforms is not None else spec.transforms()).items():
        if t == "log1p":
            feats[name] = math.log1p(feats[name])
    return feats


def spec_names(spec: FeatureSpec) -> Iterable[str]:
    """The served feature names, in order."""
    yield from (f.name for f in spec.rolling)
    yield from (p.name for p in spec.passthrough)
    for o in spec.onehot:
        yield from o.names()
