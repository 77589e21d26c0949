"""Declarative features over event time: a spec, and the state that computes it exactly.

A :class:`FeatureSpec` lists, for one event stream:

* **pass-through** fields (the event's own numbers) and **one-hot** categorical fields;
* **rolling** features, read *as of each event*: for the entity ``key`` (one field or a tuple of
  fields) the aggregate of ``field`` over the records with ``ts`` in ``(t - D, t]`` that have
  arrived, the event itself included;
* **windowed** features: tumbling (``hop == size``) or hopping windows ``[start, start + size)``
  per entity, whose aggregates are emitted once, when the window closes, as
  :class:`WindowAggregate` records (to a features topic, for dashboards and other consumers).

Aggregations (``agg``):

=============  ================================================================================
``count``      records in the window
``sum``        sum of ``field``
``mean``       mean of ``field``
``var``        sample variance of ``field`` (n - 1 in the denominator; 0.0 below two records)
``std``        its square root
``min``        least ``field``
``max``        greatest ``field``
``last``       rolling: ``field`` of the entity's previous record in the window (the event itself
               excluded, else it would be its own value), ``default`` if none; windowed: the
               value of the record with the latest ``ts`` (the later arrival on a tie)
``since_prev`` rolling only: seconds since the entity's previous record, capped at the window
               (the value for a first record too), so it is exact from bounded state
``distinct``   distinct values of ``field``. Rolling windows keep their records, so this is exact.
               Windowed aggregates keep no records: exact up to ``distinct_bound`` values, then a
               HyperLogLog estimate (datasketch, precision 12: about 1.6 % standard error)
``ewm``        rolling only: the time-decayed mean of ``field`` over the window, each record
               weighted by ``2 ** (-(t - ts) / half_life)``; exact from the window's records
``ratio``      rolling only: ``field`` of the event over the window mean of ``field`` (1.0 when
               that mean is 0)
=============  ================================================================================

``transform = "log1p"`` serves ``log1p`` of a value. Features are served in the order: rolling
(in spec order), pass-through, one-hot.

**Time.** Each feature step keeps an event-time *watermark*: the least, over the source
partitions it has seen, of the newest ``ts`` of each (a partition that has fallen more than
``idle_ms`` behind the newest one stops holding it back, so an idle partition cannot stop
windows from closing or state from being evicted). A record with ``ts`` older than
``watermark - allowed_lateness`` is **late**: it changes no window, is not served, and goes to
the late side stream (the dead-letter topic, reason ``late_event``) and a counter. (The one
exception is a record behind the watermark whose own partition or path is not behind by that
much: the first records of a path that appears after the others, such as a worker that started
later. It is served; windows already closed are not reopened for it, which is counted.) Within the
lateness, an out-of-order record updates every window it belongs to, and is served as of its own
time. Values already served are never revised: a record that arrives after an event was served
is not in that event's values, whatever its ``ts``.

**State** has an end: per entity, records older than ``watermark - longest window - lateness``
are evicted and an entity with no records left is dropped; a closed window is dropped once
emitted. At the end of a bounded input every open window is emitted.

No wall clock is read here: a replay's values depend on the data and its order only.
"""

from __future__ import annotations

import math
import re
import tomllib
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from heapq import heappop, heappush
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from undertow.errors import SpecError

ROLLING_AGGS = ("count", "sum", "mean", "var", "std", "min", "max", "last", "since_prev",
                "distinct", "ewm", "ratio")
WINDOWED_AGGS = ("count", "sum", "mean", "var", "std", "min", "max", "last", "distinct")
TRANSFORMS = (None, "log1p")
_NEEDS_FIELD = {"sum", "mean", "var", "std", "min", "max", "last", "distinct", "ewm", "ratio"}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def duration_ms(text: str | int, what: str) -> int:
    """``"10m"`` -> 600000; also ``ms``, ``s``, ``h``, ``d``, or a number of milliseconds.

    >>> duration_ms("10m", "w"), duration_ms("1.5s", "w"), duration_ms(250, "w")
    (600000, 1500, 250)
    """
    if isinstance(text, int) and not isinstance(text, bool):
        ms = text
    else:
        m = _DURATION.match(str(text).strip())
        if not m:
            raise SpecError(f"{what}: {text!r} is not a duration like 500ms, 30s, 10m, 1h, 7d")
        ms = round(float(m.group(1)) * _UNIT_MS[m.group(2)])
    if ms <= 0:
        raise SpecError(f"{what}: duration must be > 0, got {text!r}")
    return ms


@dataclass(frozen=True)
class Passthrough:
    name: str
    field: str
    transform: str | None = None


@dataclass(frozen=True)
class OneHot:
    field: str
    values: tuple[str, ...]
    prefix: str | None = None

    def names(self) -> list[str]:
        p = self.prefix if self.prefix is not None else self.field
        return [f"{p}_{v}" for v in self.values]


@dataclass(frozen=True)
class Rolling:
    name: str
    key: tuple[str, ...]
    agg: str
    window_ms: int
    field: str | None = None
    transform: str | None = None
    half_life_ms: int | None = None
    default: float = 0.0


@dataclass(frozen=True)
class Windowed:
    name: str
    key: tuple[str, ...]
    agg: str
    size_ms: int
    hop_ms: int
    field: str | None = None
    distinct_bound: int = 1000


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    passthrough: tuple[Passthrough, ...] = ()
    onehot: tuple[OneHot, ...] = ()
    rolling: tuple[Rolling, ...] = ()
    windowed: tuple[Windowed, ...] = ()
    allowed_lateness_ms: int = 300_000
    idle_ms: int = 3_600_000

    def __post_init__(self) -> None:
        validate(self)

    def groups(self) -> list[KeyGroup]:
        """One group per entity key, in the order keys first appear in the spec."""
        keys: list[tuple[str, ...]] = []
        for f in (*self.rolling, *self.windowed):
            if f.key not in keys:
                keys.append(f.key)
        return [
            KeyGroup(self.name, k, tuple(f for f in self.rolling if f.key == k),
                     tuple(f for f in self.windowed if f.key == k))
            for k in keys
        ]

    def transforms(self) -> dict[str, str]:
        return {f.name: f.transform for f in (*self.rolling, *self.passthrough)
                if f.transform is not None}


def validate(spec: FeatureSpec) -> None:
    names: list[str] = [*(f.name for f in spec.rolling), *(p.name for p in spec.passthrough),
                        *(n for o in spec.onehot for n in o.names())]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SpecError(f"spec {spec.name!r}: feature names used twice: {dup}")
    wnames = [w.name for w in spec.windowed]
    if len(set(wnames)) != len(wnames):
        raise SpecError(f"spec {spec.name!r}: windowed feature names used twice")
    if spec.allowed_lateness_ms < 0:
        raise SpecError(f"spec {spec.name!r}: allowed_lateness must be >= 0")
    for f in spec.rolling:
        where = f"feature {f.name!r}"
        if f.agg not in ROLLING_AGGS:
            raise SpecError(f"{where}: unknown rolling agg {f.agg!r}; one of {ROLLING_AGGS}")
        _check_common(where, f.key, f.agg, f.field)
        if f.window_ms <= 0:
            raise SpecError(f"{where}: window must be > 0")
        if f.transform not in TRANSFORMS:
            raise SpecError(f"{where}: unknown transform {f.transform!r}")
        if f.agg == "ewm" and (f.half_life_ms is None or f.half_life_ms <= 0):
            raise SpecError(f"{where}: agg 'ewm' needs half_life > 0")
    for w in spec.windowed:
        where = f"windowed feature {w.name!r}"
        if w.agg not in WINDOWED_AGGS:
            raise SpecError(f"{where}: unknown windowed agg {w.agg!r}; one of {WINDOWED_AGGS}")
        _check_common(where, w.key, w.agg, w.field)
        if w.size_ms <= 0 or w.hop_ms <= 0 or w.hop_ms > w.size_ms or w.size_ms % w.hop_ms:
            raise SpecError(f"{where}: need 0 < hop <= size, size a multiple of hop")
        if w.distinct_bound <= 0:
            raise SpecError(f"{where}: distinct_bound must be > 0")
    for p in spec.passthrough:
        if p.transform not in TRANSFORMS:
            raise SpecError(f"feature {p.name!r}: unknown transform {p.transform!r}")


def _check_common(where: str, key: tuple[str, ...], agg: str, fld: str | None) -> None:
    if not key or not all(isinstance(k, str) and k for k in key):
        raise SpecError(f"{where}: key must be a field name or a list of them")
    if agg in _NEEDS_FIELD and not fld:
        raise SpecError(f"{where}: agg {agg!r} needs a field")


# -- loading --------------------------------------------------------------------------------------

def load_spec(path: str | Path) -> FeatureSpec:
    """A spec from a TOML file (see ``specs/*.toml``); errors name the file and the feature."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as ex:
        raise SpecError(f"{p}: {ex}") from None
    try:
        return spec_from_dict(doc)
    except SpecError as ex:
        raise SpecError(f"{p}: {ex}") from None


def spec_from_dict(doc: dict[str, Any]) -> FeatureSpec:
    def keyof(v: Any, where: str) -> tuple[str, ...]:
        if isinstance(v, str):
            return (v,)
        if isinstance(v, list) and v:
            return tuple(v)
        raise SpecError(f"{where}: key must be a field name or a list of them")

    def known(d: dict[str, Any], allowed: set[str], where: str) -> None:
        extra = sorted(set(d) - allowed)
        if extra:
            raise SpecError(f"{where}: unknown settings {extra}")

    try:
        rolling = []
        for d in doc.get("rolling", []):
            where = f"feature {d.get('name')!r}"
            known(d, {"name", "key", "agg", "window", "field", "transform", "half_life",
                      "default"}, where)
            rolling.append(Rolling(
                d["name"], keyof(d.get("key"), where), d["agg"],
                duration_ms(d["window"], f"{where}: window"), d.get("field"), d.get("transform"),
                duration_ms(d["half_life"], f"{where}: half_life") if "half_life" in d else None,
                float(d.get("default", 0.0)),
            ))
        windowed = []
        for d in doc.get("windowed", []):
            where = f"windowed feature {d.get('name')!r}"
            known(d, {"name", "key", "agg", "size", "hop", "field", "distinct_bound"}, where)
            size = duration_ms(d["size"], f"{where}: size")
            windowed.append(Windowed(
                d["name"], keyof(d.get("key"), where), d["agg"], size,
                duration_ms(d["hop"], f"{where}: hop") if "hop" in d else size, d.get("field"),
                int(d.get("distinct_bound", 1000)),
            ))
        passthrough = []
        for d in doc.get("passthrough", []):
            known(d, {"name", "field", "transform"}, f"feature {d.get('name')!r}")
            passthrough.append(Passthrough(d["name"], d.get("field", d["name"]),
                                           d.get("transform")))
        onehot = []
        for d in doc.get("onehot", []):
            known(d, {"field", "values", "prefix"}, f"one-hot {d.get('field')!r}")
            onehot.append(OneHot(d["field"], tuple(d["values"]), d.get("prefix")))
        return FeatureSpec(
            doc["name"], tuple(passthrough), tuple(onehot), tuple(rolling), tuple(windowed),
            duration_ms(doc.get("allowed_lateness", "5m"), "allowed_lateness")
            if doc.get("allowed_lateness") not in (0, "0") else 0,
            duration_ms(doc.get("idle", "1h"), "idle"),
        )
    except KeyError as ex:
        raise SpecError(f"missing setting {ex.args[0]!r}") from None


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
    """The entity of a record: its key field, or the key fields joined by ``|``."""
    if len(key) == 1:
        return str(fields[key[0]])
    return "|".join(str(fields[k]) for k in key)


# -- time -----------------------------------------------------------------------------------------

class StreamWatermark:
    """The least newest ``ts`` over the source partitions, ignoring partitions more than
    ``idle_ms`` behind the newest one. It never goes back (a closed window stays closed). Given
    ``expected`` partitions there is none until each has delivered, so a partition that starts
    late is not overtaken.

    >>> wm = StreamWatermark(idle_ms=100, expected=2)
    >>> wm.update(0, 50), wm.update(1, 20), wm.update(0, 60)
    (None, 20, 20)
    >>> wm.update(0, 500)  # partition 1 is now idle: it no longer holds the watermark back
    500
    """

    __slots__ = ("idle_ms", "expected", "newest", "value", "_max")

    def __init__(self, idle_ms: int, expected: int | None = None) -> None:
        self.idle_ms = idle_ms
        self.expected = expected
        self.newest: dict[Any, int] = {}
        self.value: int | None = None
        self._max: int | None = None

    def update(self, partition: Any, ts: int) -> int | None:
        newest = self.newest
        if ts > newest.get(partition, -(2**62)):
            newest[partition] = ts
            if self._max is None or ts > self._max:
                self._max = ts
            if self.expected is not None and len(newest) < self.expected:
                return self.value
            floor = self._max - self.idle_ms
            wm = min(v for v in newest.values() if v >= floor)
            if self.value is None or wm > self.value:
                self.value = wm
        return self.value


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

    def evict_through(self, horizon: int) -> int:
        n = bisect_right(self.ts, horizon)
        if n:
            del self.ts[:n]
            for col in self.cols.values():
                del col[:n]
        return n


# -- windowed aggregates --------------------------------------------------------------------------

class _WindowAgg:
    __slots__ = ("n", "total", "mean", "m2", "lo", "hi", "last_ts", "last", "seen", "hll")

    def __init__(self) -> None:
        self.n = 0
        self.total = 0.0
        self.mean = 0.0
        self.m2 = 0.0
        self.lo = math.inf
        self.hi = -math.inf
        self.last_ts: int | None = None
        self.last: Any = None
        self.seen: set[Any] | None = None
        self.hll: Any = None

    def add(self, ts: int, x: Any, agg: str, bound: int) -> None:
        self.n += 1
        if agg == "distinct":
            if self.hll is not None:
                self.hll.update(str(x).encode())
                return
            if self.seen is None:
                self.seen = set()
            self.seen.add(x)
            if len(self.seen) > bound:
                from datasketch import HyperLogLog

                self.hll = HyperLogLog(p=12)
                for v in self.seen:
                    self.hll.update(str(v).encode())
                self.seen = None
            return
        if agg == "last":
            if self.last_ts is None or ts >= self.last_ts:
                self.last_ts, self.last = ts, x
            return
        if x is None:
            return
        x = float(x)
        self.total += x
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)
        if x < self.lo:
            self.lo = x
        if x > self.hi:
            self.hi = x

    def merge(self, o: _WindowAgg, bound: int) -> None:
        """Fold another pane's aggregate into this one (Chan et al.'s combination for the
        mean and the sum of squared deviations)."""
        if o.n == 0:
            return
        n = self.n + o.n
        d = o.mean - self.mean
        self.m2 += o.m2 + d * d * self.n * o.n / n
        self.mean += d * o.n / n
        self.n = n
        self.total += o.total
        self.lo = min(self.lo, o.lo)
        self.hi = max(self.hi, o.hi)
        if o.last_ts is not None and (self.last_ts is None or o.last_ts >= self.last_ts):
            self.last_ts, self.last = o.last_ts, o.last
        if o.seen is None and o.hll is None:
            return
        if self.hll is None and o.hll is None:
            self.seen = (self.seen or set()) | o.seen  # type: ignore[operator]
            if len(self.seen) <= bound:
                return
        from datasketch import HyperLogLog

        merged = HyperLogLog(p=12)
        for part in (self, o):
            if part.hll is not None:
                merged.merge(part.hll)
            for v in part.seen or ():
                merged.update(str(v).encode())
        self.hll, self.seen = merged, None

    def value(self, agg: str) -> float:
        if agg == "count":
            return float(self.n)
        if agg == "sum":
            return self.total
        if agg == "mean":
            return self.total / self.n
        if agg in ("var", "std"):
            var = self.m2 / (self.n - 1) if self.n > 1 else 0.0
            return math.sqrt(var) if agg == "std" else var
        if agg == "min":
            return self.lo
        if agg == "max":
            return self.hi
        if agg == "last":
            return float(self.last)
        if self.hll is not None:
            return float(self.hll.count())
        return float(len(self.seen or ()))


# -- one key group --------------------------------------------------------------------------------

@dataclass
class KeyGroup:
    """The features of a spec that share one entity key: computed by one (sharded) step."""

    spec: str
    key: tuple[str, ...]
    rolling: tuple[Rolling, ...]
    windowed: tuple[Windowed, ...]
    fields: tuple[str, ...] = field(init=False)
    longest_ms: int = field(init=False)

    def __post_init__(self) -> None:
        used = [f.field for f in (*self.rolling, *self.windowed) if f.field]
        self.fields = tuple(dict.fromkeys(used))
        self.longest_ms = max([f.window_ms for f in self.rolling]
                              + [w.size_ms for w in self.windowed] + [1])


class GroupState:
    """The state of one key group (of one shard): entity histories and open windows."""

    def __init__(self, group: KeyGroup, *, allowed_lateness_ms: int, idle_ms: int,
                 partitions: int | None = None) -> None:
        self.group = group
        self.lateness = allowed_lateness_ms
        self.wm = StreamWatermark(idle_ms, partitions)
        self.entities: OrderedDict[str, History] = OrderedDict()
        self.records = 0
        self.late = 0
        self.evicted_entities = 0
        self.window_misses = 0
        self.panes: dict[tuple[int, str, int], _WindowAgg] = {}  # (feature, entity, pane start)
        self._scheduled: set[tuple[int, str, int]] = set()  # open windows (feature, entity, start)
        self._closing: list[tuple[int, int, str, int]] = []  # (end, feature index, entity, start)
        # Rolling features by window width, so each window's bounds are found once per event.
        self._widths = sorted({f.window_ms for f in group.rolling})
        self._windowed = [(i, w.hop_ms, w.size_ms, w.field, w.agg, w.distinct_bound)
                          for i, w in enumerate(group.windowed)]

    # -- the one entry point ----------------------------------------------------------------------

    def update(
        self, fields: dict[str, Any], ts: int, partition: Any, out_windows: list[WindowAggregate]
    ) -> dict[str, float] | None:
        """Add one record; return its rolling features as of ``ts``, or None if it is late.
        Windows the watermark closes are appended to ``out_windows``."""
        wm = self.wm.value
        closed_upto = None if wm is None else wm - self.lateness
        if closed_upto is not None and ts < closed_upto:
            # Behind the watermark: late, unless its own path has just started (a path that
            # appears after the others, e.g. a worker that started later, is not late data).
            newest = self.wm.newest.get(partition)
            if newest is not None and ts < newest - self.lateness:
                self.late += 1
                return None
        g = self.group
        key = g.key
        entity = str(fields[key[0]]) if len(key) == 1 else entity_of(fields, key)
        hist = self.entities.get(entity)
        if hist is None:
            hist = self.entities[entity] = History(g.fields)
        else:
            self.entities.move_to_end(entity)
        idx = hist.insert(ts, fields)
        self.records += 1
        feats = self._rolling(hist, idx, ts, fields) if g.rolling else {}
        for i, hop, size, wfield, agg, bound in self._windowed:
            # Hopping windows are built from panes of one hop: a record updates one pane, and a
            # window is the merge of its panes when it closes.
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
                pane = self.panes[pkey] = _WindowAgg()
            pane.add(ts, fields.get(wfield) if wfield else None, agg, bound)
        wm = self.wm.update(partition, ts)
        if wm is not None:
            self._close(wm - self.lateness, out_windows)
            self._evict(wm - g.longest_ms - self.lateness)
        return feats

    def flush(self, out_windows: list[WindowAggregate]) -> None:
        """End of a bounded input: emit every open window."""
        self._close(None, out_windows)

    # -- internals --------------------------------------------------------------------------

    def _rolling(self, hist: History, idx: int, ts: int, fields: dict[str, Any]
                 ) -> dict[str, float]:
        tss = hist.ts
        hi = idx + 1
        lows = {w: bisect_right(tss, ts - w, 0, hi) for w in self._widths}
        out: dict[str, float] = {}
        cols = hist.cols
        for f in self.group.rolling:
            lo = lows[f.window_ms]
            agg = f.agg
            if agg == "count":
                v: float = hi - lo
            elif agg == "since_prev":
                gap = ts - tss[idx - 1] if idx > lo else f.window_ms
                v = (gap if gap < f.window_ms else f.window_ms) / 1000.0
            elif agg == "last":
                v = float(cols[f.field][idx - 1]) if idx > lo else f.default  # type: ignore[index]
            elif agg == "distinct":
                v = len(set(cols[f.field][lo:hi]))  # type: ignore[index]
            else:
                xs = cols[f.field][lo:hi]  # type: ignore[index]
                v = _numeric(agg, xs, tss, lo, ts, f, fields)
            out[f.name] = v
        return out

    def _close(self, horizon: int | None, out: list[WindowAggregate]) -> None:
        closing = self._closing
        g = self.group
        panes = self.panes
        while closing and (horizon is None or closing[0][0] <= horizon):
            end, i, entity, start = heappop(closing)
            self._scheduled.discard((i, entity, start))
            w = g.windowed[i]
            agg = _WindowAgg()
            for p in range(start, end, w.hop_ms):
                pane = panes.get((i, entity, p))
                if pane is not None:
                    agg.merge(pane, w.distinct_bound)
            # The window starting at a pane is the last one that holds it.
            panes.pop((i, entity, start), None)
            out.append(WindowAggregate(g.spec, w.name, entity, start, end, agg.value(w.agg),
                                       agg.n))

    @property
    def open_windows(self) -> int:
        return len(self._scheduled)

    def _evict(self, horizon: int) -> None:
        entities = self.entities
        # Entities are kept in the order they were last touched; the front ones are the idlest.
        while entities:
            entity, hist = next(iter(entities.items()))
            if hist.ts[-1] > horizon:
                break
            del entities[entity]
            self.records -= len(hist)
            self.evicted_entities += 1
        # The entity just touched (at the back) may hold records that fell out of every window.
        if entities:
            hist = entities[next(reversed(entities))]
            self.records -= hist.evict_through(horizon)

    def __len__(self) -> int:
        return len(self.entities)


def _numeric(agg: str, xs: list[Any], tss: list[int], lo: int, ts: int, f: Rolling,
             values: dict[str, Any]) -> float:
    n = len(xs)
    if agg == "sum":
        return sum(xs)
    if agg == "mean":
        return sum(xs) / n
    if agg == "ratio":
        mean = sum(xs) / n
        return values[f.field] / mean if mean else 1.0  # type: ignore[index]
    if agg == "min":
        return min(xs)
    if agg == "max":
        return max(xs)
    if agg in ("var", "std"):
        if n < 2:
            return 0.0
        m = sum(xs) / n
        var = sum((x - m) * (x - m) for x in xs) / (n - 1)
        return math.sqrt(var) if agg == "std" else var
    # ewm: weights halve every half-life of event time before ts
    h = f.half_life_ms
    num = den = 0.0
    for j, x in enumerate(xs):
        wgt = 2.0 ** (-(ts - tss[lo + j]) / h)  # type: ignore[operator]
        num += wgt * x
        den += wgt
    return num / den


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


def base_features(spec: FeatureSpec, fields: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in spec.passthrough:
        out[p.name] = float(fields[p.field])
    for o in spec.onehot:
        v = fields.get(o.field)
        for name, value in zip(o.names(), o.values, strict=True):
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
