"""Rolling quality of served predictions: accuracy, log-loss and ROC AUC over the last N labels.

Same definitions as River's ``metrics.Accuracy`` and ``metrics.LogLoss`` (probabilities clamped to
``[1e-15, 1 - 1e-15]``) over a sliding window, kept as running sums: about 0.5 us per update
against about 5 us for ``utils.Rolling`` of the two River metrics. The running loss sum is
recomputed exactly (``math.fsum``) once per window, so rounding error cannot accumulate. ROC AUC
is River's ``RollingROCAUC`` (cheap to update, about 0.15 ms to read: read it per batch).

>>> q = RollingQuality(window=2)
>>> for y, p in [(True, 0.9), (False, 0.2), (True, 0.4)]:
...     q.update(y, p, p >= 0.5)
>>> q.accuracy, round(q.log_loss, 6)
(0.5, 0.569717)
"""

from __future__ import annotations

import math
from collections import deque

from river import metrics

_EPS = 1e-15
_ONE = 1 - 1e-15


class RollingQuality:
    __slots__ = ("window", "_items", "_correct", "_loss", "_since_exact", "_auc")

    def __init__(self, window: int) -> None:
        if window <= 0:
            raise ValueError(f"window must be > 0, got {window}")
        self.window = window
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

    def __len__(self) -> int:
        return len(self._items)

    @property
    def accuracy(self) -> float:
        return self._correct / len(self._items) if self._items else 0.0

    @property
    def roc_auc(self) -> float:
        return float(self._auc.get()) if self._items else 0.0

    @property
    def log_loss(self) -> float:
        return self._loss / len(self._items) if self._items else 0.0
