"""The event-time watermark of a partitioned stream: the newest time of its slowest partition.

One class serves every step that keeps a clock from the data: the feature steps (with an idle
rule, so a partition that stops cannot hold the windows back) and the model step's label and
event watermarks (without one: a lagging label partition must hold expiry back).
"""

from __future__ import annotations

from typing import Any


class Watermark:
    """The least newest ``ts`` over the partitions seen, never going back.

    Given ``expected`` partitions there is no watermark until each has delivered, so a partition
    that starts late is not overtaken. Given ``idle_ms``, a partition more than ``idle_ms`` behind
    the newest one no longer holds the watermark back.

    >>> wm = Watermark(idle_ms=100, expected=2)
    >>> wm.update(0, 50), wm.update(1, 20), wm.update(0, 60)
    (False, True, False)
    >>> wm.value
    20
    >>> wm.update(0, 500), wm.value  # partition 1 is now idle: it no longer holds it back
    (True, 500)
    >>> strict = Watermark(expected=2)
    >>> strict.update("a", 50), strict.value, strict.update("b", 20), strict.value
    (False, None, True, 20)
    """

    __slots__ = ("idle_ms", "expected", "newest", "value", "_max", "_least")

    def __init__(self, idle_ms: int | None = None, expected: int | None = None) -> None:
        self.idle_ms = idle_ms
        self.expected = expected
        self.newest: dict[Any, int] = {}
        self.value: int | None = None
        self._max: int | None = None
        #: The least newest time of the partitions that hold the watermark back (those within
        #: ``idle_ms`` of ``_max``), kept incrementally; None: to be recomputed.
        self._least: int | None = None

    def __setstate__(self, state: Any) -> None:
        # A snapshot taken before ``_least`` existed restores without it: recomputed on use.
        self._least = None
        for k, v in (state[1] if isinstance(state, tuple) else state).items():
            setattr(self, k, v)

    def update(self, partition: Any, ts: int) -> bool:
        """Record a time on a partition; True if the watermark advanced."""
        newest = self.newest
        old = newest.get(partition)
        if ts <= (-(2**62) if old is None else old):
            return False
        newest[partition] = ts
        if self._max is None or ts > self._max:
            self._max = ts
        least = self._least
        if self.idle_ms is None:
            floor = None
        else:
            floor = self._max - self.idle_ms
        # The least changes only if the partition that held it moved, if the floor passed it,
        # or if this partition (re)enters below it; else it is what a full scan would find.
        if least is None or old == least or (floor is not None and least < floor):
            least = None
        elif ts < least and (floor is None or ts >= floor):
            least = ts
        if self.expected is not None and len(newest) < self.expected:
            self._least = least
            return False
        if least is None:
            if floor is None:
                least = min(newest.values())
            else:
                least = min(v for v in newest.values() if v >= floor)
        self._least = least
        if self.value is None or least > self.value:
            self.value = least
            return True
        return False
