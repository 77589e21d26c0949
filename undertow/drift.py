"""Drift monitors of the model step: concept drift on a stream of numbers, data drift per feature.

:class:`ConceptDrift` runs River's ADWIN and Page-Hinkley on one stream (the served absolute error,
or the served scores) and counts detections by *direction*: an ADWIN detection after which the
mean is higher is ``up``. On the error stream only ``up`` means the model got worse; the ``down``
detections of a model that is still learning are expected and must not alert. The direction
compares ADWIN's estimate after the cut with the mean since the previous detection.

:class:`FeatureDrift` compares, per feature, a *reference* window (``reference_size`` served
vectors taken once the stream is warm, or the latest recent window when refreshed) with the
*recent* window (the last ``recent_size`` vectors): the population stability index and the
two-sample Kolmogorov-Smirnov statistic. The recent window keeps the served vectors themselves
(one append per event); scores are recomputed every ``every`` updates with numpy (a few
milliseconds for 14 features and 2x2000 values, i.e. about 1 us per event at every=5000).

Warm-up. A rolling feature is not yet itself until its window has filled: in the first hour of
a stream every card's 1 h count is small because the stream has no earlier hour, not because
cards slowed down. A reference taken then makes every later window look drifted (PSI 7.8 on
``card_count_1h`` of a stream without drift). So the reference is collected only from the first
vector served at least ``warmup_ms`` of event time after the first one (the stream's longest
feature window) and after at least ``warmup_events`` vectors; before that nothing is kept.

Spread. Consecutive vectors are not independent draws: every event at a popular merchant in the
same few minutes has nearly the same 10-minute count. A reference of 2000 consecutive vectors
(400 s of the fraud stream) is one snapshot of those levels, and a recent window taken when the
levels have moved on differs from it by more than chance: PSI up to 0.54 on
``merchant_count_10m`` of a stationary stream (the top merchant, 10 % of events, counts about
280 in 10 minutes, on a decile edge). So both windows keep every ``stride``-th vector and span
``size * stride`` of them (10000, about half an hour of the fraud stream, at the defaults): a
picture of the levels the features move through rather than of one moment (PSI at most 0.05
there). The price is a slower recent window: a change shows once it fills enough of it.

Bins (:func:`psi_bins`). Deciles of the reference are the usual PSI bins, but they collapse on
the features a stream is made of: a count that is mostly 1, a distance capped at its window, a
one-hot that is 0 or 1. Nine quantiles that all equal 1 leave one bin holding most of the data
and the rest of the bins depending on where ties fall. So:

* a feature with at most ``bins`` distinct values in the reference gets one bin per value (a
  category each; a value never seen falls in the gap between two of them, or below or above);
* otherwise every value that holds at least ``1/bins`` of the reference (a point mass: the
  zeros, the cap) gets a bin of its own, and the other values get quantile bins of their own
  distribution, as many as are left, with duplicate edges merged.

Smoothing. PSI has ``log(p / q)``: a bin empty on one side is infinite, and a fixed floor (the
usual 1e-4) makes a single value in a bin the reference never saw weigh as much as a shift. An
empty bin is counted as half a value of its window (share ``0.5 / n``), so a bin never seen in
the reference weighs about ``p * log(2 n p)``: large when a new value is frequent (a real
change), small when it is rare. A bin empty on both sides (a gap between two discrete values
that neither window has) is left out. Bins that are not empty keep their share, so the value
is the textbook
``sum((p - q) * log(p / q))`` whenever every bin is occupied (``tests/test_drift.py`` checks
hand-computed cases).

>>> cd = ConceptDrift()
>>> for x in [0.1] * 500 + [0.9] * 500:
...     cd.update(x, 0)
>>> cd.detections[("adwin", "up")] >= 1
True
>>> ref, cur = [1, 1, 1, 1, 1, 1, 2, 2, 2, 3], [1, 1, 1, 1, 1, 2, 2, 2, 3, 3]
>>> round(psi(ref, cur), 6), round(float(0.1 * np.log(1.2) + 0.1 * np.log(2)), 6)
(0.087547, 0.087547)
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from river import drift

#: Page-Hinkley's threshold on the served error stream (see :class:`ConceptDrift`).
ERROR_PH_THRESHOLD = 25.0

#: An empty bin holds this many values of its window in PSI (its share is this over the size).
EMPTY_BIN_COUNT = 0.5


class ConceptDrift:
    """ADWIN (both directions) and Page-Hinkley (increases) on one stream of numbers.

    Page-Hinkley is re-armed at every ADWIN detection, so it measures increases from the level
    the stream holds now. Left alone, River's Page-Hinkley compares each value with the mean
    since the start, and forgets its sums (``alpha``): a model that learned (its error fell,
    ADWIN saw it go down) sank its sum far below the floor, and the forgetting lifted the sum
    back by more than the threshold with no increase at all. Measured on the fraud generator's
    stationary stream (5 seeds, 2.3 h of event time each): one false detection per seed on the
    error and one on the score stream (about 10 a day); re-armed, none, with the default
    threshold (50) and with 25, which :data:`ERROR_PH_THRESHOLD` uses on the served error (it
    then saw the generator's drift 9.6 and 5.2 minutes after it on two of three seeds, before
    ADWIN; ``tests/test_drift_false_alarms.py``).
    """

    #: Page-Hinkley's threshold (River's default); the error stream's is lower.
    ph_threshold = 50.0

    def __init__(self, *, keep_last: int = 100, ph_threshold: float = 50.0) -> None:
        self.ph_threshold = ph_threshold
        self.adwin = drift.ADWIN()
        self.page_hinkley = drift.PageHinkley(mode="up", threshold=ph_threshold)
        self.detections: dict[tuple[str, str], int] = {
            ("adwin", "up"): 0,
            ("adwin", "down"): 0,
            ("page_hinkley", "up"): 0,
        }
        self._sum = 0.0
        self._n = 0
        #: (event time, detector, direction) of the latest detections.
        self.history: deque[tuple[int, str, str]] = deque(maxlen=keep_last)

    def update(self, x: float, ts: int) -> None:
        adwin = self.adwin
        # The mean since the previous detection: the level ADWIN's window held before it cut
        # (reading adwin.estimation per update costs more than the update itself).
        self._sum += x
        self._n += 1
        adwin.update(x)
        if adwin.drift_detected:
            direction = "up" if adwin.estimation > self._sum / self._n else "down"
            self.detections[("adwin", direction)] += 1
            self.history.append((ts, "adwin", direction))
            self._sum = 0.0
            self._n = 0
            # A new level: Page-Hinkley measures increases from it (see the class docstring).
            self.page_hinkley = drift.PageHinkley(mode="up", threshold=self.ph_threshold)
        ph = self.page_hinkley
        ph.update(x)
        if ph.drift_detected:
            self.detections[("page_hinkley", "up")] += 1
            self.history.append((ts, "page_hinkley", "up"))

    @property
    def estimate(self) -> float:
        return float(self.adwin.estimation)


def psi_bins(reference: Any, bins: int = 10) -> Any:
    """The bin edges of a feature, from its reference values (see the module docstring).

    A value ``v`` falls in bin ``searchsorted(edges, v, side="right")``: bin ``i`` is
    ``[edges[i-1], edges[i])``. A bin of its own for ``v`` is ``[v, nextafter(v, inf))``.

    Few values: one bin each, and the gaps below, between and above them (7 bins here):

    >>> edges = psi_bins([0, 0, 1, 1, 1, 3])
    >>> np.searchsorted(edges, [-1, 0, 0.5, 1, 2, 3, 7], side="right").tolist()
    [0, 1, 2, 3, 4, 5, 6]
    """
    arr = np.sort(np.asarray(reference, dtype=float))
    if arr.size == 0:
        return np.empty(0)
    values, counts = np.unique(arr, return_counts=True)
    if len(values) <= bins:
        masses = values
        rest = arr[:0]
    else:
        heavy = counts * bins >= arr.size
        masses = values[heavy]
        rest = arr[~np.isin(arr, masses)]
    edges = [masses, np.nextafter(masses, np.inf)]
    left = bins - len(masses)
    if rest.size and left > 1:
        edges.append(np.quantile(rest, np.linspace(0, 1, left + 1)[1:-1]))
    return np.unique(np.concatenate(edges))


def bin_counts(values: Any, edges: Any) -> Any:
    """How many of ``values`` fall in each bin of ``edges`` (``len(edges) + 1`` bins)."""
    arr = np.asarray(values, dtype=float)
    return np.bincount(np.searchsorted(edges, arr, side="right"), minlength=len(edges) + 1)


def psi_of_counts(current: Any, reference: Any) -> float:
    """The population stability index ``sum((p - q) * log(p / q))`` of two windows' bin counts.

    A bin empty in both windows is left out; a bin empty in one is counted as
    :data:`EMPTY_BIN_COUNT` values of that window, so no share is 0 and PSI stays finite.
    """
    cur = np.asarray(current, dtype=float)
    ref = np.asarray(reference, dtype=float)
    n_cur, n_ref = cur.sum(), ref.sum()
    if n_cur == 0 or n_ref == 0:
        return 0.0
    used = (cur > 0) | (ref > 0)
    p = np.maximum(cur[used], EMPTY_BIN_COUNT) / n_cur
    q = np.maximum(ref[used], EMPTY_BIN_COUNT) / n_ref
    return float(np.sum((p - q) * np.log(p / q)))


def psi(reference: Any, current: Any, bins: int = 10) -> float:
    """PSI of ``current`` against ``reference``, on :func:`psi_bins` of the reference."""
    edges = psi_bins(reference, bins)
    return psi_of_counts(bin_counts(current, edges), bin_counts(reference, edges))


class FeatureDrift:
    """PSI and KS of every feature between a reference window and the recent window.

    The reference is ``reference_size`` vectors once the stream is warm: from the first vector
    at least ``warmup_ms`` of event time after the first one seen (the ``ts`` given to
    :meth:`update`), and after at least ``warmup_events`` vectors. Both windows keep every
    ``stride``-th vector: the reference spans ``reference_size * stride`` vectors, the recent
    window the latest ``recent_size * stride``; scores are computed once it is full. Vectors
    before the warm-up are counted in
    :attr:`warmup_seen` and kept nowhere; ``every`` and ``refresh_every`` count every vector.
    """

    # Defaults of the attributes added with the warm-up, for a state pickled before them.
    warmup_ms = 0
    warmup_events = 0
    warmup_seen = 0
    _first_ts: int | None = None
    _warm = True
    stride = 1
    _offered = 0

    def __init__(
        self,
        *,
        reference_size: int = 2000,
        recent_size: int = 2000,
        bins: int = 10,
        every: int = 5000,
        refresh_every: int = 0,
        warmup_ms: int = 0,
        warmup_events: int = 0,
        stride: int = 1,
    ) -> None:
        if min(reference_size, recent_size, bins, every, stride) <= 0 or refresh_every < 0:
            raise ValueError("FeatureDrift sizes must be > 0 (refresh_every >= 0)")
        if warmup_ms < 0 or warmup_events < 0:
            raise ValueError("FeatureDrift warm-up must be >= 0")
        self.reference_size = reference_size
        self.recent_size = recent_size
        self.bins = bins
        self.every = every
        self.refresh_every = refresh_every
        self.warmup_ms = warmup_ms
        self.warmup_events = warmup_events
        self.stride = stride
        self._offered = 0
        #: Vectors seen before the stream was warm (not in any window).
        self.warmup_seen = 0
        self._first_ts = None
        self._warm = warmup_ms == 0 and warmup_events == 0
        self._collecting: dict[str, list[float]] = {}
        self._seen_for_reference = 0
        self._reference: dict[str, tuple[Any, Any, Any]] | None = None  # sorted, edges, counts
        self._recent: deque[dict[str, float]] = deque(maxlen=recent_size)
        self._since_compute = 0
        self._since_refresh = 0
        self.refreshes = 0
        #: feature -> (psi, ks), as of the last computation.
        self.scores: dict[str, tuple[float, float]] = {}

    @property
    def warm(self) -> bool:
        """Whether the warm-up is over (the reference is being, or has been, collected)."""
        return self._warm

    def update(self, x: dict[str, float], ts: int | None = None) -> None:
        """Add one served vector ``x``, served at event time ``ts`` (epoch ms)."""
        if self._warm:
            self._offered += 1
            if (self._offered - 1) % self.stride:  # kept: every stride-th, from the first warm
                self._count_update()
                return
        else:
            if ts is not None and self._first_ts is None:
                self._first_ts = ts
            if (self.warmup_seen < self.warmup_events
                    or (self.warmup_ms and (ts is None or self._first_ts is None
                                            or ts - self._first_ts < self.warmup_ms))):
                self.warmup_seen += 1
                return
            self._warm = True
            self._offered = 1
        if self._reference is None:
            for name, v in x.items():
                self._collecting.setdefault(name, []).append(v)
            self._seen_for_reference += 1
            if self._seen_for_reference >= self.reference_size:
                self._freeze(self._collecting)
                self._collecting = {}
            return
        self._recent.append(x)  # the served vector itself: one append per kept vector
        self._count_update()

    def _count_update(self) -> None:
        """One more vector since the reference: recompute every ``every``, refresh if due."""
        if self._reference is None:
            return
        self._since_compute += 1
        # a window not yet full is a smaller sample: its PSI is noise (0.2 on 100 vectors)
        if self._since_compute >= self.every and len(self._recent) == self.recent_size:
            self._since_compute = 0
            self._compute()
        self._since_refresh += 1
        if self.refresh_every and self._since_refresh >= self.refresh_every:
            self.refresh()

    def refresh(self) -> None:
        """Make the recent window the new reference (e.g. after a retrained model ships)."""
        if not self._recent:
            return
        self._freeze(self._columns())
        self._since_refresh = 0
        self.refreshes += 1

    def _freeze(self, values: dict[str, list[float]]) -> None:
        ref = {}
        for name, vals in values.items():
            arr = np.sort(np.asarray(vals, dtype=float))
            edges = psi_bins(arr, self.bins)
            ref[name] = (arr, edges, bin_counts(arr, edges))
        self._reference = ref

    def _columns(self) -> dict[str, list[float]]:
        cols: dict[str, list[float]] = {}
        for x in self._recent:
            for name, v in x.items():
                col = cols.get(name)
                if col is None:
                    col = cols[name] = []
                col.append(v)
        return cols

    def _compute(self) -> None:
        assert self._reference is not None
        scores = {}
        for name, window in self._columns().items():
            got = self._reference.get(name)
            if got is None:
                continue
            ref, edges, ref_counts = got
            cur = np.sort(np.asarray(window, dtype=float))
            psi_value = psi_of_counts(bin_counts(cur, edges), ref_counts)
            grid = np.concatenate([ref, cur])
            ks = float(np.max(np.abs(
                np.searchsorted(ref, grid, side="right") / len(ref)
                - np.searchsorted(cur, grid, side="right") / len(cur)
            )))
            scores[name] = (psi_value, ks)
        self.scores = scores
