"""Quality before the labels come: an online confidence-based performance estimate (CBPE).

A binary model's labels come late (seconds to days), so its realised quality describes the
predictions of some time ago. If its scores are *calibrated*, ``P(y = 1 | score s) = s``, the
scores alone say what the quality of the latest predictions will be once their labels come: a
decision ``s > t`` is right with probability ``s``, a decision ``s <= t`` with ``1 - s``; and each
prediction is a fractional positive (weight ``s``) and a fractional negative (``1 - s``), which
gives an expected ROC AUC. This is NannyML's confidence-based performance estimation; here it is
computed online, in ``O(bins)`` per read and ``O(1)`` per score, never over pairs.

Online models are not calibrated (a young logistic regression is shy, a tree overconfident), so
the scores are first **calibrated online** on the model's own labelled predictions, as NannyML
calibrates on a labelled reference: the last ``calibration_window`` labelled scores are counted
in fixed bins of the score, equal-width in log-odds (0.25) around the decision threshold (a fraud
model's scores crowd near 0, where equal-width bins in probability would put them all in one),
and an isotonic fit (pool adjacent violators over the bins) turns the counts into a
non-decreasing ``P(y = 1 | bin)`` (Jeffreys-smoothed: ``(positives + 0.5) / (labels + 1)``).

The estimate covers the **last ``window`` served predictions** (the learner uses the quality
window): what the model does now, a fixed size whatever the label delay, and the same set the
realised rolling quality will cover once these labels are in. It is not limited to the
predictions still pending: which predictions wait longest depends on their outcome in most
streams (a fraud is confirmed later than a legitimate payment), so the pending set is a biased
sample.

**Expected values.** With ``n_b`` window scores in bin ``b`` and calibrated ``p_b``:
accuracy ``= sum_b n_b q_b / n``, ``q_b = p_b`` above the threshold, else ``1 - p_b``; ROC AUC
``= E[U] / E[P N]``, the expected number of correctly ordered (positive, negative) pairs over the
expected number of such pairs: a pair in bins ``b > c`` is ordered with probability
``p_b (1 - p_c)``, a pair in one bin (where calibration sees no order) half the time it is mixed,
``p_b (1 - p_b)``; and ``E[P N] = W+ W- - sum_b n_b p_b (1 - p_b)``, ``W+ = sum_b n_b p_b``.

**The interval** is the estimate +- 1.96 standard errors (95 %), analytic, no bootstrap. The
variance has two independent parts: (1) the labels still to come are Bernoulli draws: for
accuracy ``sum_b n_b p_b (1 - p_b) / n^2``; for ROC AUC the delta method (the AUC linearised in
each label: its gradient over a bin, with the spread of ranks inside the bin); (2) the calibration
is itself estimated: each isotonic block's ``p`` has binomial variance ``p (1 - p) / (labels + 1)``
and moves all its bins together, propagated by the same derivatives. It holds **only while the
calibration holds**: after a concept drift, ``P(y | s)`` changes and the estimate keeps telling the
old relation (too optimistic when the model got worse) until the new labels recalibrate it.

>>> e = ConfidenceEstimate(window=4, calibration_window=100, min_labels=1)
>>> for s, y in [(0.1, False), (0.9, True)] * 10:
...     e.learn(s, y)
>>> for s in (0.1, 0.1, 0.9, 0.9):
...     e.update(s)
>>> r = e.get()
>>> round(r.accuracy, 4), round(r.roc_auc, 4), r.predictions, r.labels
(0.9545, 0.9752, 4, 20)
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass
from typing import Any

#: Width of a calibration bin in log-odds, and how far from the threshold the bins reach (the
#: outermost bins are open-ended): 64 bins, from about 0.0003 to 0.9997 around a 0.5 threshold.
BIN_WIDTH = 0.25
BIN_REACH = 8.0
#: 95 % two-sided.
Z = 1.96


@dataclass(frozen=True, slots=True)
class Estimate:
    """Estimated accuracy and ROC AUC of the window's predictions, with a 95 % interval (clipped
    to [0, 1]) and their standard errors; ``predictions`` estimated, ``labels`` calibrated on."""

    accuracy: float
    accuracy_lower: float
    accuracy_upper: float
    accuracy_se: float
    roc_auc: float
    roc_auc_lower: float
    roc_auc_upper: float
    roc_auc_se: float
    predictions: int
    labels: int

    def values(self) -> dict[str, float]:
        """The exported values, named ``<measure>``, ``<measure>_lower``, ``<measure>_upper``."""
        return {
            "accuracy": self.accuracy, "accuracy_lower": self.accuracy_lower,
            "accuracy_upper": self.accuracy_upper, "roc_auc": self.roc_auc,
            "roc_auc_lower": self.roc_auc_lower, "roc_auc_upper": self.roc_auc_upper,
        }


def score_edges(threshold: float = 0.5) -> list[float]:
    """Upper edges of the score bins: a score ``s`` is in bin ``bisect_left(edges, s)``, so
    ``edges[i-1] < s <= edges[i]``; the threshold is an edge, so a bin is wholly decided
    positive (``s > threshold``) or negative.

    >>> edges = score_edges(0.5)
    >>> len(edges), edges[32], bisect_left(edges, 0.5), bisect_left(edges, 0.5000001)
    (65, 0.5, 32, 33)
    """
    t = min(max(threshold, 1e-9), 1 - 1e-9)
    centre = math.log(t / (1 - t))
    k = round(BIN_REACH / BIN_WIDTH)
    edges = [1 / (1 + math.exp(-(centre + i * BIN_WIDTH))) for i in range(-k, k + 1)]
    edges[k] = threshold
    return edges


def isotonic_blocks(labels: list[int], positives: list[float],
                    prior: float = 0.0) -> list[tuple[int, int, float, float]]:
    """Pool adjacent violators over bins in score order: blocks ``(first bin, last bin,
    weight, positives)`` whose rates ``positives / weight`` do not decrease. Each labelled bin
    counts one pseudo-label more, a positive with probability ``prior`` (the window's base rate),
    so no rate is 0 or 1 and a bin of a few labels cannot stand out. Bins without labels join
    the block before them (the first block, before the first labelled bin). Empty if no labels.

    >>> isotonic_blocks([2, 0, 2, 2], [1, 0, 2, 0])
    [(0, 0, 2.0, 1.0), (1, 3, 4.0, 2.0)]
    """
    blocks: list[list[float]] = []  # [first, last, weight, positives]
    for b, (m, pos) in enumerate(zip(labels, positives, strict=True)):
        if m == 0:
            continue
        w = m + (1.0 if prior else 0.0)
        blocks.append([b, b, w, pos + prior])
        while len(blocks) > 1 and blocks[-2][3] * blocks[-1][2] > blocks[-1][3] * blocks[-2][2]:
            last = blocks.pop()
            prev = blocks[-1]
            prev[1], prev[2], prev[3] = last[1], prev[2] + last[2], prev[3] + last[3]
    if not blocks:
        return []
    blocks[0][0] = 0
    for i in range(1, len(blocks)):
        blocks[i][0] = blocks[i - 1][1] + 1
    blocks[-1][1] = len(labels) - 1
    return [(int(f), int(la), w, p) for f, la, w, p in blocks]


class ConfidenceEstimate:
    """Online CBPE of a binary model: :meth:`update` with each score served, :meth:`learn` with
    each labelled score (as it was served) and its label, :meth:`get` the estimate over the last
    ``window`` scores served (None before ``min_labels`` labels or any score).

    State: the bin of each of the last ``window`` scores and of the last ``calibration_window``
    labelled ones, and their counts per bin; small and picklable.
    """

    __slots__ = ("window", "calibration_window", "min_labels", "threshold", "edges", "_above",
                 "_served", "_counts", "_labelled", "_labels", "_positives", "_per_key",
                 "_key_squares", "_last_residual", "_pair_sum", "_pairs", "_square_sum",
                 "_seen", "_positive_total")

    def __init__(self, window: int = 1000, calibration_window: int = 5000, *,
                 threshold: float = 0.5, min_labels: int = 200) -> None:
        if window <= 0 or calibration_window <= 0:
            raise ValueError(f"window and calibration_window must be > 0, got {window} and "
                             f"{calibration_window}")
        self.window = window
        self.calibration_window = calibration_window
        self.min_labels = min_labels
        self.threshold = threshold
        self.edges = score_edges(threshold)
        nbins = len(self.edges) + 1
        #: first bin decided positive
        self._above = bisect_left(self.edges, threshold) + 1
        self._served: deque[tuple[int, object]] = deque()  # (bin, key)
        self._counts = [0] * nbins
        self._labelled: deque[tuple[int, bool, float | None, float]] = deque()  # bin, y, pair, r^2
        self._labels = [0] * nbins
        self._positives = [0] * nbins
        self._positive_total = 0  # sum(self._positives), kept as they change
        # Clustering: the window's predictions per key (and the sum of their squares), and on
        # the labelled side each key's last residual and the running sums of the products of
        # consecutive residuals of one key, their count, and of squared residuals.
        self._per_key: dict[object, int] = {}
        self._key_squares = 0
        self._last_residual: dict[object, tuple[int, float]] = {}  # key -> (label no., residual)
        self._pair_sum = 0.0
        self._pairs = 0
        self._square_sum = 0.0
        self._seen = 0

    def __setstate__(self, state: Any) -> None:
        slots = state[1] if isinstance(state, tuple) else state
        for k, v in slots.items():
            setattr(self, k, v)
        if "_positive_total" not in slots:  # pickled before the running total was kept
            self._positive_total = sum(self._positives)

    def _bin(self, score: float) -> int:
        return bisect_left(self.edges, score)

    def update(self, score: float, key: object = None) -> None:
        """A score served (for the entity ``key``: the labels of one entity may be alike): it
        enters the estimated window (the oldest leaves a full one)."""
        if score != score:  # NaN: nothing to estimate from
            return
        b = self._bin(score)
        self._served.append((b, key))
        self._counts[b] += 1
        if key is not None:
            c = self._per_key.get(key, 0)
            self._per_key[key] = c + 1
            self._key_squares += 2 * c + 1
        if len(self._served) > self.window:
            ob, okey = self._served.popleft()
            self._counts[ob] -= 1
            if okey is not None:
                c = self._per_key[okey]
                self._key_squares -= 2 * c - 1
                if c == 1:
                    del self._per_key[okey]
                else:
                    self._per_key[okey] = c - 1

    def learn(self, score: float, y: bool, key: object = None) -> None:
        """A labelled score (the value served for the event) calibrates the estimate; with its
        entity ``key``, it measures how alike one entity's consecutive residuals are."""
        if score != score:
            return
        b = self._bin(score)
        y = bool(y)
        # The residual against the bin's rate so far (unpooled, with the base-rate pseudo-label).
        m = len(self._labelled)
        rate = (self._positive_total + 0.5) / (m + 1)
        r = y - (self._positives[b] + rate) / (self._labels[b] + 1)
        pair: float | None = None
        self._seen += 1
        if key is not None:
            last = self._last_residual.pop(key, None)
            if last is not None and self._seen - last[0] <= self.calibration_window:
                pair = last[1] * r
                self._pairs += 1
                self._pair_sum += pair
            self._last_residual[key] = (self._seen, r)
            # Forget the keys whose last label left the calibration window (oldest first).
            while self._last_residual:
                first = next(iter(self._last_residual))
                if self._seen - self._last_residual[first][0] < self.calibration_window:
                    break
                del self._last_residual[first]
        self._square_sum += r * r
        self._labelled.append((b, y, pair, r * r))
        self._labels[b] += 1
        self._positives[b] += y
        self._positive_total += y
        if len(self._labelled) > self.calibration_window:
            ob, oy, opair, osq = self._labelled.popleft()
            self._labels[ob] -= 1
            self._positives[ob] -= oy
            self._positive_total -= oy
            if opair is not None:
                self._pairs -= 1
                self._pair_sum -= opair
            self._square_sum -= osq

    def design_effect(self) -> float:
        """How much the labels' variance grows because one entity's labels are alike:
        ``1 + rho (sum_k m_k^2 / n - 1)`` with ``m_k`` the window's predictions of entity ``k``
        and ``rho`` the correlation of consecutive residuals of one entity among the labelled
        ones (clipped to [0, 1]); 1 without keys."""
        n = len(self._served)
        if not n or not self._pairs or self._square_sum <= 0:
            return 1.0
        rho = (self._pair_sum / self._pairs) / (self._square_sum / len(self._labelled))
        rho = min(max(rho, 0.0), 1.0)
        return 1.0 + rho * max(self._key_squares / n - 1.0, 0.0)

    def calibration(self) -> tuple[list[float], list[int], list[float]]:
        """Per bin: calibrated ``P(y = 1)``, the isotonic block it belongs to; per block: the
        variance of its ``P``."""
        m = len(self._labelled)
        rate = self._positive_total / m if m else 0.0
        blocks = isotonic_blocks(self._labels, self._positives, min(max(rate, 1e-3), 1 - 1e-3))
        nbins = len(self._counts)
        p = [0.0] * nbins
        block = [0] * nbins
        var = []
        for k, (first, last, w, pos) in enumerate(blocks):
            pk = pos / w
            var.append(pk * (1 - pk) / w)
            for b in range(first, last + 1):
                p[b] = pk
                block[b] = k
        return p, block, var

    def get(self) -> Estimate | None:
        """The estimate over the last ``window`` scores served, or None (too few labels yet,
        or no score)."""
        n = len(self._served)
        if n == 0 or len(self._labelled) < self.min_labels:
            return None
        p, block, var = self.calibration()
        counts = self._counts
        above = self._above
        w_pos = math.fsum(c * pb for c, pb in zip(counts, p, strict=True))
        w_neg = n - w_pos
        spread = math.fsum(c * pb * (1 - pb) for c, pb in zip(counts, p, strict=True))
        # Accuracy.
        acc = math.fsum(c * (pb if b >= above else 1 - pb)
                        for b, (c, pb) in enumerate(zip(counts, p, strict=True))) / n
        acc_coef = [0.0] * len(var)
        for b, c in enumerate(counts):
            if c:
                acc_coef[block[b]] += (c if b >= above else -c) / n
        deff = self.design_effect()
        acc_var = deff * spread / (n * n) + math.fsum(
            a * a * v for a, v in zip(acc_coef, var, strict=True))
        # ROC AUC: E[U] / E[PN] with the cumulative negative weight below each bin.
        pairs = w_pos * w_neg - spread
        if pairs <= 0:
            auc, auc_var = 0.5, 0.25
        else:
            u = 0.0
            neg_below = 0.0
            for c, pb in zip(counts, p, strict=True):
                if c:
                    u += c * pb * neg_below + c * (c - 1) / 2 * pb * (1 - pb)
                    neg_below += c * (1 - pb)
            auc = u / pairs
            auc_var = self._auc_variance(auc, pairs, counts, p, block, var, w_pos, w_neg, deff)
        acc_se, auc_se = math.sqrt(max(acc_var, 0.0)), math.sqrt(max(auc_var, 0.0))
        return Estimate(
            acc, max(0.0, acc - Z * acc_se), min(1.0, acc + Z * acc_se), acc_se,
            auc, max(0.0, auc - Z * auc_se), min(1.0, auc + Z * auc_se), auc_se,
            n, len(self._labelled),
        )

    @staticmethod
    def _auc_variance(auc: float, pairs: float, counts: list[int], p: list[float],
                      block: list[int], var: list[float], w_pos: float, w_neg: float,
                      deff: float = 1.0) -> float:
        """Delta-method variance of the AUC estimate: the labels to come (Bernoulli, each
        label's gradient with its rank's spread inside its bin) plus the calibration blocks'."""
        label_var = 0.0
        grad = [0.0] * len(var)
        neg_below = 0.0
        pos_above = w_pos
        d_pn = w_neg - w_pos  # d(P N) / d y_i at y = p
        for b, (c, pb) in enumerate(zip(counts, p, strict=True)):
            if not c:
                continue
            pos_above -= c * pb
            # d U / d y_i for a label in bin b, at the bin's mean rank; ranks spread around it.
            h = neg_below - pos_above - auc * d_pn + (c - 1) * (0.5 - pb)
            label_var += pb * (1 - pb) * (c * h * h + c * (c * c - 1) / 12)
            d_u = c * (neg_below - pos_above) + c * (c - 1) / 2 * (1 - 2 * pb)
            d_d = c * (w_neg - w_pos) - c * (1 - 2 * pb)
            grad[block[b]] += (d_u - auc * d_d) / pairs
            neg_below += c * (1 - pb)
        return deff * label_var / (pairs * pairs) + math.fsum(
            g * g * v for g, v in zip(grad, var, strict=True))
