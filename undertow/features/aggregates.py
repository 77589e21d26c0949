"""The aggregation math of the features, one small function or class per idea.

Rolling features keep their records (:class:`~undertow.features.state.History`), so each rolling
aggregate is a function of the values in the window, computed exactly when an event is served:
:func:`total`, :func:`mean`, :func:`variance`, :func:`std`, :func:`decayed_mean`,
:func:`ratio_to_mean` (``count``, ``min``, ``max``, ``last``, ``since_prev`` and ``distinct`` are
read off the window directly).

Windowed features keep no records: each pane (one hop of one entity's window) holds a small
aggregate updated once per record, and a window is the merge of its panes when it closes, in the
shape of River's statistics (``update`` is :meth:`add`; panes merge instead of reverting):
:class:`Count`, :class:`Moments` (Welford's update and Chan et al.'s merge: sum, mean, variance,
min, max), :class:`Latest` and :class:`Distinct` (exact up to a bound, then HyperLogLog).
:func:`pane_for` picks the one an aggregation needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

# -- rolling: from the window's values ------------------------------------------------------------


def total(xs: Sequence[float]) -> float:
    """The sum of the window's values.

    >>> total([1.0, 2.5]), mean([1.0, 2.0]), variance([1.0, 3.0]), std([5.0])
    (3.5, 1.5, 2.0, 0.0)
    """
    return sum(xs)


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def variance(xs: Sequence[float]) -> float:
    """The sample variance (n - 1 in the denominator), two-pass; 0.0 below two values."""
    n = len(xs)
    if n < 2:
        return 0.0
    m = sum(xs) / n
    return sum((x - m) * (x - m) for x in xs) / (n - 1)


def std(xs: Sequence[float]) -> float:
    return math.sqrt(variance(xs))


def decayed_mean(xs: Sequence[float], tss: Sequence[int], now: int, half_life_ms: int) -> float:
    """The time-decayed mean as of ``now``: each value weighted by ``2 ** (-(now - ts) / h)``.

    >>> decayed_mean([0.0, 3.0], [0, 1000], 1000, 1000)  # weights 1/2 and 1
    2.0
    """
    num = den = 0.0
    for x, ts in zip(xs, tss, strict=True):
        wgt = 2.0 ** (-(now - ts) / half_life_ms)
        num += wgt * x
        den += wgt
    return num / den


def ratio_to_mean(x: float, xs: Sequence[float]) -> float:
    """``x`` over the window mean (1.0 when that mean is 0).

    >>> ratio_to_mean(3.0, [1.0, 3.0]), ratio_to_mean(3.0, [-1.0, 1.0])
    (1.5, 1.0)
    """
    return ratio_of_sum(x, sum(xs), len(xs))


def ratio_of_sum(x: float, total: float, n: int) -> float:
    """:func:`ratio_to_mean` from the window's sum and size (a sum the caller has already)."""
    m = total / n
    return x / m if m else 1.0


#: The rolling aggregations that are a function of the window's values alone.
BY_VALUES = {"sum": total, "mean": mean, "var": variance, "std": std, "min": min, "max": max}


# -- windowed: one aggregate per pane, merged when the window closes -------------------------------

class PaneAggregate(Protocol):
    """What a pane keeps: ``n`` records, updated by :meth:`add`, folded by :meth:`merge`."""

    n: int

    def add(self, ts: int, x: Any) -> None: ...

    def merge(self, other: Any) -> None: ...

    def value(self, agg: str) -> float: ...


class Count:
    """Records in the pane.

    >>> c = Count(); c.add(0, None); c.add(5, None); c.value("count")
    2.0
    """

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def add(self, ts: int, x: Any) -> None:
        self.n += 1

    def merge(self, other: Count) -> None:
        self.n += other.n

    def value(self, agg: str) -> float:
        return float(self.n)


class Moments:
    """Sum, mean, sum of squared deviations (Welford), least and greatest value; panes merge
    with Chan et al.'s combination, so a window's variance is exact without its records.

    >>> a, b = Moments(), Moments()
    >>> for x in (1.0, 2.0): a.add(0, x)
    >>> b.add(0, 6.0); a.merge(b)
    >>> [a.value(agg) for agg in ("sum", "mean", "var", "min", "max")]
    [9.0, 3.0, 7.0, 1.0, 6.0]
    """

    __slots__ = ("n", "total", "mean", "m2", "lo", "hi")

    def __init__(self) -> None:
        self.n = 0
        self.total = 0.0
        self.mean = 0.0
        self.m2 = 0.0
        self.lo = math.inf
        self.hi = -math.inf

    def add(self, ts: int, x: Any) -> None:
        self.n += 1
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

    def merge(self, other: Moments) -> None:
        if other.n == 0:
            return
        n = self.n + other.n
        d = other.mean - self.mean
        self.m2 += other.m2 + d * d * self.n * other.n / n
        self.mean += d * other.n / n
        self.n = n
        self.total += other.total
        self.lo = min(self.lo, other.lo)
        self.hi = max(self.hi, other.hi)

    def value(self, agg: str) -> float:
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
        raise ValueError(f"Moments has no aggregation {agg!r}")


class Latest:
    """The value of the record with the latest ``ts`` (the later arrival on a tie).

    >>> a = Latest(); a.add(5, 1.0); a.add(3, 2.0); a.add(5, 4.0); a.value("last")
    4.0
    """

    __slots__ = ("n", "last_ts", "last")

    def __init__(self) -> None:
        self.n = 0
        self.last_ts: int | None = None
        self.last: Any = None

    def add(self, ts: int, x: Any) -> None:
        self.n += 1
        if self.last_ts is None or ts >= self.last_ts:
            self.last_ts, self.last = ts, x

    def merge(self, other: Latest) -> None:
        self.n += other.n
        if other.last_ts is not None and (self.last_ts is None or other.last_ts >= self.last_ts):
            self.last_ts, self.last = other.last_ts, other.last

    def value(self, agg: str) -> float:
        return float(self.last)


class Distinct:
    """Distinct values: an exact set up to ``bound`` values, then a HyperLogLog sketch
    (datasketch, precision 12: about 1.6 % standard error).

    >>> d = Distinct(bound=10)
    >>> for v in ("a", "b", "a"): d.add(0, v)
    >>> d.value("distinct"), d.n
    (2.0, 3)
    """

    __slots__ = ("n", "bound", "seen", "hll")

    def __init__(self, bound: int) -> None:
        self.n = 0
        self.bound = bound
        self.seen: set[Any] | None = None
        self.hll: Any = None

    def add(self, ts: int, x: Any) -> None:
        self.n += 1
        if self.hll is not None:
            self.hll.update(str(x).encode())
            return
        if self.seen is None:
            self.seen = set()
        self.seen.add(x)
        if len(self.seen) > self.bound:
            self.hll = _sketch(self.seen)
            self.seen = None

    def merge(self, other: Distinct) -> None:
        self.n += other.n
        if other.seen is None and other.hll is None:
            return
        if self.hll is None and other.hll is None:
            self.seen = (self.seen or set()) | other.seen  # type: ignore[operator]
            if len(self.seen) <= self.bound:
                return
        merged = _sketch(())
        for part in (self, other):
            if part.hll is not None:
                merged.merge(part.hll)
            for v in part.seen or ():
                merged.update(str(v).encode())
        self.hll, self.seen = merged, None

    def value(self, agg: str) -> float:
        if self.hll is not None:
            return float(self.hll.count())
        return float(len(self.seen or ()))


def _sketch(values: Any) -> Any:
    from datasketch import HyperLogLog

    hll = HyperLogLog(p=12)
    for v in values:
        hll.update(str(v).encode())
    return hll


def pane_for(agg: str, distinct_bound: int) -> PaneAggregate:
    """A new, empty pane aggregate for a windowed aggregation.

    >>> type(pane_for("mean", 10)).__name__, type(pane_for("distinct", 10)).__name__
    ('Moments', 'Distinct')
    """
    if agg == "count":
        return Count()
    if agg == "last":
        return Latest()
    if agg == "distinct":
        return Distinct(distinct_bound)
    return Moments()
