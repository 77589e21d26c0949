"""Rolling quality of served predictions over the last N labels, one class per target.

* :class:`BinaryQuality` (:class:`RollingQuality`): accuracy, log-loss and ROC AUC;
* :class:`MulticlassQuality`: accuracy, macro F1, multi-class log-loss (cross-entropy) and the
  counts of each class among the labels and the decisions;
* :class:`RegressionQuality`: MAE, RMSE and R².

The definitions are River's (``metrics.Accuracy``, ``LogLoss``, ``MacroF1``, ``CrossEntropy``,
``MAE``, ``RMSE``, ``R2``, probabilities clamped to ``[1e-15, 1 - 1e-15]``) over a sliding window,
kept as running sums: about 0.5 us per update against about 5 us for ``utils.Rolling`` of River's
metrics. Running float sums are recomputed exactly (``math.fsum``) once per window, so rounding
error cannot accumulate. ROC AUC is River's ``RollingROCAUC`` (cheap to update, about 0.15 ms to
read: read it per batch). Each class has ``observe(y, served)`` (the truth and what was served:
``P(True)``, a class -> probability dict, or a number) and ``values()``, a dict named as
:attr:`undertow.targets.Target.metrics`.

>>> q = RollingQuality(window=2)
>>> for y, p in [(True, 0.9), (False, 0.2), (True, 0.4)]:
...     q.update(y, p, p >= 0.5)
>>> q.accuracy, round(q.log_loss, 6)
(0.5, 0.569717)
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from river import metrics

_EPS = 1e-15
_ONE = 1 - 1e-15


class _WindowedClasses:
    """What the classification qualities share: a window of items, a count of correct decisions
    and a running loss sum."""

    __slots__ = ()
    _items: deque[Any]
    _correct: int
    _loss: float

    def __len__(self) -> int:
        return len(self._items)

    @property
    def accuracy(self) -> float:
        return self._correct / len(self._items) if self._items else 0.0

    @property
    def log_loss(self) -> float:
        return self._loss / len(self._items) if self._items else 0.0


class RollingQuality(_WindowedClasses):
    """Binary: accuracy of ``score > threshold``, log-loss and ROC AUC of ``P(True)``."""

    __slots__ = ("window", "threshold", "_items", "_correct", "_loss", "_since_exact", "_auc")

    def __init__(self, window: int, threshold: float = 0.5) -> None:
        if window <= 0:
            raise ValueError(f"window must be > 0, got {window}")
        self.window = window
        self.threshold = threshold
        self._items: deque[tuple[bool, float]] = deque()
        self._correct = 0
        self._loss = 0.0
        self._since_exact = 0
        self._auc = metrics.RollingROCAUC(window_size=window)

    def update(self, y: bool, score: float, predicted: bool) -> None:
        p = _EPS if score < _EPS else (_ONE if score > _ONE else score)  # as River clamps
        loss = -math.log(p) if y else -math.log(1.0 - p)
        self._auc.update(y, score)
        correct = predicted == y
        items = self._items
        items.append((correct, loss))
        self._correct += correct
        self._loss += loss
        if len(items) > self.window:
            old_correct, old_loss = items.popleft()
            self._correct -= old_correct
            self._loss -= old_loss
        self._since_exact += 1
        if self._since_exact >= self.window:
            self._loss = math.fsum(loss for _, loss in items)
            self._since_exact = 0

    def observe(self, y: bool, served: float) -> None:
        self.update(y, served, served > self.threshold)

    def values(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "log_loss": self.log_loss, "roc_auc": self.roc_auc}


    @property
    def roc_auc(self) -> float:
        return float(self._auc.get()) if self._items else 0.0


BinaryQuality = RollingQuality


class MulticlassQuality(_WindowedClasses):
    """Multi-class: accuracy, macro F1 (over the classes seen in the window, as labels or as
    decisions: River's ``MacroF1`` of the window's records), cross-entropy, class counts.

    >>> q = MulticlassQuality(window=3)
    >>> for y, p in [("a", {"a": 0.8, "b": 0.2}), ("b", {"a": 0.6, "b": 0.4}),
    ...              ("b", {"a": 0.1, "b": 0.9})]:
    ...     q.observe(y, p)
    >>> q.accuracy, round(q.macro_f1, 4), round(q.log_loss, 4)
    (0.6666666666666666, 0.6667, 0.4149)
    >>> q.label_counts, q.decision_counts
    ({'a': 1, 'b': 2}, {'a': 2, 'b': 1})
    """

    __slots__ = ("window", "_items", "_correct", "_loss", "_since_exact", "_tp", "label_counts",
                 "decision_counts", "seen")

    def __init__(self, window: int) -> None:
        if window <= 0:
            raise ValueError(f"window must be > 0, got {window}")
        self.window = window
        self._items: deque[tuple[Any, Any, float]] = deque()
        self._correct = 0
        self._loss = 0.0
        self._since_exact = 0
        self._tp: dict[Any, int] = {}
        #: class -> how many labels / decisions of the window are that class.
        self.label_counts: dict[Any, int] = {}
        self.decision_counts: dict[Any, int] = {}
        #: every class seen, as a label or a decision (its counts drop to 0, not away).
        self.seen: set[Any] = set()

    def observe(self, y: Any, served: dict[Any, float]) -> None:
        decided = max(served, key=served.get) if served else None  # type: ignore[arg-type]
        p = served.get(y, 0.0)
        p = _EPS if p < _EPS else (_ONE if p > _ONE else p)
        loss = -math.log(p)
        self._add(y, decided, loss, 1)
        items = self._items
        items.append((y, decided, loss))
        if len(items) > self.window:
            oy, od, ol = items.popleft()
            self._add(oy, od, ol, -1)
        self._since_exact += 1
        if self._since_exact >= self.window:
            self._loss = math.fsum(x[2] for x in items)
            self._since_exact = 0

    def _add(self, y: Any, decided: Any, loss: float, sign: int) -> None:
        for counts, c in ((self.label_counts, y), (self.decision_counts, decided)):
            if c is None:
                continue
            self.seen.add(c)
            n = counts.get(c, 0) + sign
            if n:
                counts[c] = n
            else:
                del counts[c]
        if decided == y:
            self._correct += sign
            n = self._tp.get(y, 0) + sign
            if n:
                self._tp[y] = n
            else:
                del self._tp[y]
        self._loss += sign * loss


    @property
    def macro_f1(self) -> float:
        classes = self.label_counts.keys() | self.decision_counts.keys()
        if not classes:
            return 0.0
        f1 = []
        for c in classes:
            tp = self._tp.get(c, 0)
            denom = self.label_counts.get(c, 0) + self.decision_counts.get(c, 0)
            f1.append(2 * tp / denom if denom else 0.0)
        # fsum: exactly rounded whatever the set's order (which varies with the hash seed), so
        # a replay's report is the same bytes in every process.
        return math.fsum(f1) / len(classes)

    def values(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "log_loss": self.log_loss}


class RegressionQuality:
    """Regression: MAE, RMSE and R² (``1 - SS_res / SS_tot`` of the window; 0.0 while the
    window's labels do not vary, as River's ``R2``).

    >>> q = RegressionQuality(window=3)
    >>> for y, yhat in [(1.0, 2.0), (2.0, 2.0), (4.0, 3.0)]:
    ...     q.observe(y, yhat)
    >>> round(q.mae, 4), round(q.rmse, 4), round(q.r2, 4)
    (0.6667, 0.8165, 0.5714)
    """

    __slots__ = ("window", "_items", "_abs", "_sq", "_y", "_y2", "_since_exact")

    def __init__(self, window: int) -> None:
        if window <= 0:
            raise ValueError(f"window must be > 0, got {window}")
        self.window = window
        self._items: deque[tuple[float, float]] = deque()
        self._abs = self._sq = self._y = self._y2 = 0.0
        self._since_exact = 0

    def observe(self, y: float, served: float) -> None:
        e = y - served
        items = self._items
        items.append((float(y), e))
        self._abs += abs(e)
        self._sq += e * e
        self._y += y
        self._y2 += y * y
        if len(items) > self.window:
            oy, oe = items.popleft()
            self._abs -= abs(oe)
            self._sq -= oe * oe
            self._y -= oy
            self._y2 -= oy * oy
        self._since_exact += 1
        if self._since_exact >= self.window:
            self._abs = math.fsum(abs(e) for _, e in items)
            self._sq = math.fsum(e * e for _, e in items)
            self._y = math.fsum(y for y, _ in items)
            self._y2 = math.fsum(y * y for y, _ in items)
            self._since_exact = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def mae(self) -> float:
        return self._abs / len(self._items) if self._items else 0.0

    @property
    def rmse(self) -> float:
        return math.sqrt(max(self._sq, 0.0) / len(self._items)) if self._items else 0.0

    @property
    def r2(self) -> float:
        n = len(self._items)
        if n < 2:
            return 0.0
        total = self._y2 - self._y * self._y / n
        if total <= 1e-12 * max(self._y2, 1.0):
            return 0.0
        return 1.0 - max(self._sq, 0.0) / total

    def values(self) -> dict[str, float]:
        return {"mae": self.mae, "rmse": self.rmse, "r2": self.r2}
