"""Per-entity rolling features over event time, "as of" each event.

A :class:`RollingFeatures` keeps, for every entity (a card, a merchant), the records of the last
``longest window + allowed lateness`` of event time, sorted by timestamp. When an event at time
``t`` arrives it is inserted first, then each window ``D`` is read over the records of that entity
with ``ts`` in ``(t - D, t]`` that have arrived so far: the served value includes the event itself.

Time is the data's: the state's *watermark* is the largest event time it has seen. A record older
than ``watermark - allowed_lateness`` is *late*: it is still served (with the history that is
still kept, which may miss records already evicted) and counted in ``late``. Records are evicted
once they fall out of every window reachable by a non-late event, and an entity with no records
left is dropped entirely (``evicted_entities``), so the state is bounded by the event rate times
the longest window, not by the number of entities ever seen.

>>> rf = RollingFeatures("card", windows={"10m": 600_000}, allowed_lateness_ms=0)
>>> rf.update("c1", 1_000, 10.0)["card_sum_10m"]
10.0
>>> f = rf.update("c1", 61_000, 30.0)
>>> (f["card_count_10m"], f["card_mean_10m"], f["card_secs_since_prev"])
(2, 20.0, 60.0)
>>> rf.update("c1", 700_000, 5.0)["card_count_10m"]  # both earlier records left the window
1
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterable

_COMPACT_AT = 32


class EntityHistory:
    """The kept records of one entity: timestamps and values sorted by timestamp."""

    __slots__ = ("ts", "vals", "start")

    def __init__(self) -> None:
        self.ts: list[int] = []
        self.vals: list[float] = []
        self.start = 0  # records before this index are evicted (compacted lazily)

    def __len__(self) -> int:
        return len(self.ts) - self.start

    def __getstate__(self) -> tuple[list[int], list[float]]:
        return (self.ts[self.start :], self.vals[self.start :])

    def __setstate__(self, state: tuple[list[int], list[float]]) -> None:
        self.ts, self.vals = state
        self.start = 0

    def insert(self, ts: int, value: float) -> int:
        """Insert a record after any with the same timestamp; return its index."""
        tss = self.ts
        if not tss or ts >= tss[-1]:
            tss.append(ts)
            self.vals.append(value)
            return len(tss) - 1
        idx = bisect_right(tss, ts, self.start)
        tss.insert(idx, ts)
        self.vals.insert(idx, value)
        return idx

    def evict_through(self, horizon: int) -> int:
        """Forget records with ``ts <= horizon``; return how many were forgotten."""
        tss = self.ts
        start = self.start
        new_start = bisect_right(tss, horizon, start)
        if new_start == start:
            return 0
        self.start = new_start
        if new_start >= _COMPACT_AT and new_start * 2 >= len(tss):
            del tss[:new_start]
            del self.vals[:new_start]
            self.start = 0
        return new_start - start

    def newest(self) -> int:
        return self.ts[-1]


class RollingFeatures:
    """Rolling count / sum / mean of one value per entity, plus time since the previous event.

    Feature names are ``{name}_{agg}_{window}`` and ``{name}_secs_since_prev``: the seconds since
    the entity's previous event, capped at the longest window (the value for a first event too),
    so that it is exact from bounded state. ``aggregates`` chooses among ``count``, ``sum`` and
    ``mean``.
    """

    def __init__(
        self,
        name: str,
        *,
        windows: dict[str, int],
        aggregates: Iterable[str] = ("count", "sum", "mean"),
        since_previous: bool = True,
        allowed_lateness_ms: int = 300_000,
    ) -> None:
        if not windows:
            raise ValueError(f"RollingFeatures {name!r}: at least one window is required")
        for label, width in windows.items():
            if width <= 0:
                raise ValueError(f"RollingFeatures {name!r}: window {label!r} must be > 0 ms")
        aggs = tuple(aggregates)
        unknown = set(aggs) - {"count", "sum", "mean"}
        if unknown:
            raise ValueError(f"RollingFeatures {name!r}: unknown aggregates {sorted(unknown)}")
        if allowed_lateness_ms < 0:
            raise ValueError(f"RollingFeatures {name!r}: allowed_lateness_ms must be >= 0")
        self.name = name
        # (width, count name, sum name, mean name); None where the aggregate is not wanted.
        self._windows = [
            (
                width,
                f"{name}_count_{label}" if "count" in aggs else None,
                f"{name}_sum_{label}" if "sum" in aggs else None,
                f"{name}_mean_{label}" if "mean" in aggs else None,
                "sum" in aggs or "mean" in aggs,
            )
            for label, width in windows.items()
        ]
        self._since_prev = f"{name}_secs_since_prev" if since_previous else None
        self.longest_ms = max(windows.values())
        self.allowed_lateness_ms = allowed_lateness_ms
        self.entities: OrderedDict[str, EntityHistory] = OrderedDict()
        self.watermark: int | None = None
        self.records = 0
        self.late = 0
        self.evicted_entities = 0

    def update(self, entity: str, ts: int, value: float) -> dict[str, float]:
        """Add one record and return the entity's features as of its timestamp."""
        wm = self.watermark
        if wm is None or ts > wm:
            wm = self.watermark = ts
        elif ts < wm - self.allowed_lateness_ms:
            self.late += 1
        entities = self.entities
        hist = entities.get(entity)
        if hist is None:
            hist = entities[entity] = EntityHistory()
        else:
            entities.move_to_end(entity)
        idx = hist.insert(ts, value)
        self.records += 1
        tss = hist.ts
        start = hist.start
        out: dict[str, float] = {}
        hi = idx + 1
        for width, count_name, sum_name, mean_name, need_sum in self._windows:
            lo = bisect_right(tss, ts - width, start, hi)
            n = hi - lo
            if count_name is not None:
                out[count_name] = n
            if need_sum:
                s = sum(hist.vals[lo:hi])
                if sum_name is not None:
                    out[sum_name] = s
                if mean_name is not None:
                    out[mean_name] = s / n
        if self._since_prev is not None:
            # Capped at the longest window: exact from the kept records, and always present.
            gap = ts - tss[idx - 1] if idx > start else self.longest_ms
            out[self._since_prev] = (gap if gap < self.longest_ms else self.longest_ms) / 1000.0
        self._evict(entity, hist, wm)
        return out

    def _evict(self, entity: str, touched: EntityHistory, watermark: int) -> None:
        horizon = watermark - self.longest_ms - self.allowed_lateness_ms
        self.records -= touched.evict_through(horizon)
        entities = self.entities
        if not touched:  # a late record older than every window: nothing of it is kept
            del entities[entity]
            self.evicted_entities += 1
        # Entities are kept in the order they were last touched; drop idle ones from the front.
        while entities:
            entity, hist = next(iter(entities.items()))
            if hist and hist.newest() > horizon:
                break
            del entities[entity]
            self.records -= len(hist)
            self.evicted_entities += 1

    def __len__(self) -> int:
        return len(self.entities)
