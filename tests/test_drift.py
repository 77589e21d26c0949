"""Drift monitors against oracles: scipy's KS statistic, PSI recomputed by hand, ADWIN's sign."""

from __future__ import annotations

import math
import random
from bisect import bisect_right

import pytest
from scipy import stats

from undertow.drift import ConceptDrift, FeatureDrift


def psi_oracle(ref: list[float], cur: list[float], bins: int) -> float:
    s = sorted(ref)
    # deciles as numpy computes them (linear interpolation), then unique edges
    qs = [i / bins for i in range(1, bins)]
    edges = sorted({_quantile(s, q) for q in qs})
    def shares(vals):
        counts = [0] * (len(edges) + 1)
        for v in vals:
            counts[bisect_right(edges, v)] += 1
        return [c / len(vals) for c in counts]
    total = 0.0
    for p, q in zip(shares(cur), shares(ref), strict=False):
        p, q = max(p, 1e-4), max(q, 1e-4)
        total += (p - q) * math.log(p / q)
    return total


def _quantile(s: list[float], q: float) -> float:
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@pytest.mark.parametrize("shift", [0.0, 0.5, 2.0])
def test_feature_drift_matches_oracles(shift):
    rng = random.Random(3)
    ref = [rng.gauss(0, 1) for _ in range(500)]
    cur = [rng.gauss(shift, 1) for _ in range(300)]
    fd = FeatureDrift(reference_size=500, recent_size=300, every=300)
    for v in ref + cur:
        fd.update({"x": v})
    psi, ks = fd.scores["x"]
    assert ks == pytest.approx(stats.ks_2samp(ref, cur).statistic, abs=1e-12)
    assert psi == pytest.approx(psi_oracle(ref, cur, 10), rel=1e-9)
    if shift == 0.0:
        assert psi < 0.1 and ks < 0.15
    if shift == 2.0:
        assert psi > 1.0 and ks > 0.6


def test_reference_refresh_makes_recent_the_baseline():
    fd = FeatureDrift(reference_size=100, recent_size=100, every=100, refresh_every=200)
    for i in range(100):
        fd.update({"x": float(i % 10)})
    for i in range(200):
        fd.update({"x": 100.0 + i % 10})
    assert fd.refreshes == 1
    for i in range(100):
        fd.update({"x": 100.0 + i % 10})
    assert fd.scores["x"][1] == 0.0  # same distribution as the refreshed reference


def test_concept_drift_direction_follows_the_mean():
    cd = ConceptDrift()
    rng = random.Random(1)
    for i in range(2000):
        cd.update(0.8 if rng.random() < 0.8 else 0.0, i)  # mean 0.64
    for i in range(2000, 4000):
        cd.update(0.1 if rng.random() < 0.5 else 0.0, i)  # mean 0.05: it improved
    assert cd.detections[("adwin", "down")] >= 1 and cd.detections[("adwin", "up")] == 0
    for i in range(4000, 6000):
        cd.update(0.9, i)  # it got worse
    assert cd.detections[("adwin", "up")] >= 1
    assert all(ts >= 4000 for ts, det, d in cd.history if det == "adwin" and d == "up")
