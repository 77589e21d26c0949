"""Drift monitors against oracles: scipy's KS statistic, PSI on hand-computed cases and
recomputed in plain Python, the warm-up of the reference, ADWIN's sign."""

from __future__ import annotations

import math
import pickle
import random
from bisect import bisect_right
from collections import Counter

import pytest
from scipy import stats

from undertow.drift import ConceptDrift, FeatureDrift, psi, psi_bins


def psi_oracle(ref: list[float], cur: list[float], bins: int) -> float:
    """PSI as the module docstring states it, in plain Python: one bin per value when there are
    at most ``bins`` of them, else a bin per value holding >= 1/bins of the reference and
    quantile bins (linear interpolation, as numpy) of the others; an empty bin counts as half a
    value, a bin empty on both sides is left out."""
    s = sorted(ref)
    counts = Counter(s)
    if len(counts) <= bins:
        masses = sorted(counts)
    else:
        masses = sorted(v for v, c in counts.items() if c * bins >= len(s))
    rest = [v for v in s if v not in set(masses)]
    edges = set(masses) | {math.nextafter(v, math.inf) for v in masses}
    left = bins - len(masses)
    if rest and left > 1:
        edges |= {_quantile(rest, i / left) for i in range(1, left)}
    edges = sorted(edges)

    def binned(vals):
        out = [0] * (len(edges) + 1)
        for v in vals:
            out[bisect_right(edges, v)] += 1
        return out

    total = 0.0
    for c, r in zip(binned(cur), binned(ref), strict=True):
        if c == 0 and r == 0:
            continue
        p, q = max(c, 0.5) / len(cur), max(r, 0.5) / len(ref)
        total += (p - q) * math.log(p / q)
    return total


def _quantile(s: list[float], q: float) -> float:
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# -- PSI on hand-computed cases: the textbook sum((p - q) ln(p / q)) --------------------------

def test_psi_of_a_discrete_feature_is_the_textbook_value_per_category():
    ref = [1] * 6 + [2] * 3 + [3]
    cur = [1] * 5 + [2] * 3 + [3] * 2
    want = 0.1 * math.log(1.2) + 0.1 * math.log(2)  # (.5-.6) ln(.5/.6) + 0 + (.2-.1) ln 2
    assert psi(ref, cur) == pytest.approx(want, abs=1e-15)
    # the gaps between the values are bins empty on both sides: they add nothing, whatever
    # the windows' sizes
    assert psi(ref, cur * 3) == pytest.approx(want, abs=1e-15)
    assert psi(ref, ref) == 0.0


def test_psi_of_a_zero_heavy_feature_gives_the_zeros_a_bin_of_their_own():
    # 6 zeros of 10 (a mass >= 1/4): bins <0, {0}, (0, 2), [2, 3), >=3 (3 quantile bins of 1..4)
    ref = [0] * 6 + [1, 2, 3, 4]
    assert psi_bins(ref, bins=4).tolist() == [0.0, math.nextafter(0, 1), 2.0, 3.0]
    cur = [0] * 4 + [1, 1, 2, 3, 5, 6]  # counts {0}: 4, (0,2): 2, [2,3): 1, >=3: 3
    want = 0.2 * math.log(1.5) + 0.1 * math.log(2) + 0.1 * math.log(1.5)
    assert psi(ref, cur, bins=4) == pytest.approx(want, abs=1e-15)
    # zeros becoming small values: {0} 6 -> 2, (0, 2) 1 -> 4
    want = 0.4 * math.log(3) + 0.3 * math.log(4) + 0.1 * math.log(1.5)  # [2,3) 1 -> 1, >=3 2 -> 3
    assert psi(ref, [0] * 2 + [1] * 4 + [2, 3, 3, 4], bins=4) == pytest.approx(want, abs=1e-15)


def test_psi_counts_an_empty_bin_as_half_a_value():
    ref = [1.0] * 10
    cur = [1.0] * 8 + [2.0] * 2  # a value the reference never had: its bin holds 0.5 of 10
    want = 0.2 * math.log(1.25) + (0.2 - 0.05) * math.log(0.2 / 0.05)
    assert psi(ref, cur) == pytest.approx(want, abs=1e-15)
    # one new value among 2000 weighs little: 0.0005 ln 1 + (0.0005 - 0.00025) ln 2 and so on
    want = 0.0005 * math.log(1 / 0.9995) + 0.00025 * math.log(2)
    assert psi([1.0] * 2000, [1.0] * 1999 + [9.0]) == pytest.approx(want, abs=1e-15)


def test_psi_capped_feature_keeps_the_cap_apart():
    # a since_prev capped at its window: 30 % of the values at the cap
    rng = random.Random(5)
    ref = [min(rng.expovariate(1 / 900), 3600.0) for _ in range(700)] + [3600.0] * 300
    edges = psi_bins(ref)
    assert 3600.0 in edges.tolist() and math.nextafter(3600.0, math.inf) in edges.tolist()
    same = [min(rng.expovariate(1 / 900), 3600.0) for _ in range(700)] + [3600.0] * 300
    assert psi(ref, same) == pytest.approx(psi_oracle(ref, same, 10), rel=1e-12)
    assert psi(ref, same) < 0.05


@pytest.mark.parametrize("seed", range(5))
def test_psi_of_two_samples_of_one_discrete_distribution_is_small(seed):
    rng = random.Random(seed)
    def draw(n):  # a count that is mostly 1: 1 + Poisson(0.4)-like, and a rare long tail
        return [1 + sum(rng.random() < 0.2 for _ in range(3)) + (rng.random() < 0.01) * 20
                for _ in range(n)]
    ref, cur = draw(2000), draw(2000)
    assert psi(ref, cur) == pytest.approx(psi_oracle(ref, cur, 10), rel=1e-12)
    assert psi(ref, cur) < 0.02


@pytest.mark.parametrize("shift", [0.0, 0.5, 2.0])
def test_feature_drift_matches_oracles(shift):
    rng = random.Random(3)
    ref = [rng.gauss(0, 1) for _ in range(500)]
    cur = [rng.gauss(shift, 1) for _ in range(300)]
    fd = FeatureDrift(reference_size=500, recent_size=300, every=300)
    for v in ref + cur:
        fd.update({"x": v})
    psi_value, ks = fd.scores["x"]
    assert ks == pytest.approx(stats.ks_2samp(ref, cur).statistic, abs=1e-12)
    assert psi_value == pytest.approx(psi_oracle(ref, cur, 10), rel=1e-9)
    if shift == 0.0:
        assert psi_value < 0.1 and ks < 0.15
    if shift == 2.0:
        assert psi_value > 1.0 and ks > 0.6


# -- the warm-up ------------------------------------------------------------------------------

def test_the_reference_waits_for_the_longest_window_of_event_time():
    fd = FeatureDrift(reference_size=3, recent_size=2, every=2, warmup_ms=60_000)
    for i, ts in enumerate([1000, 30_000, 60_999]):  # < 60 s after the first event
        fd.update({"x": float(i)}, ts)
    assert not fd.warm and fd.warmup_seen == 3 and fd._reference is None
    for v, ts in [(10.0, 61_000), (11.0, 61_500), (12.0, 62_000)]:  # the reference
        fd.update({"x": v}, ts)
    assert fd.warm and fd._reference["x"][0].tolist() == [10.0, 11.0, 12.0]
    fd.update({"x": 10.0}, 63_000)
    fd.update({"x": 12.0}, 64_000)
    # exactly the reference's values: one bin each, shares 1/3 against 1/2, 0, 1/2
    want = 2 * (1 / 2 - 1 / 3) * math.log(1.5) + (0.25 - 1 / 3) * math.log(0.75)
    assert fd.scores["x"][0] == pytest.approx(want, abs=1e-15)


def test_the_reference_waits_for_a_count_of_events_too():
    fd = FeatureDrift(reference_size=2, recent_size=2, every=2, warmup_ms=1000,
                      warmup_events=5)
    for i in range(4):  # time has passed, not yet 5 events
        fd.update({"x": float(i)}, 10_000 * i)
    assert not fd.warm
    fd.update({"x": 4.0}, 40_000)
    assert not fd.warm and fd.warmup_seen == 5
    fd.update({"x": 5.0}, 50_000)
    assert fd.warm and fd.warmup_seen == 5
    cold = FeatureDrift(reference_size=2)  # no warm-up: the first vector is in the reference
    cold.update({"x": 1.0})
    assert cold.warm and cold.warmup_seen == 0


def test_a_state_pickled_before_the_warm_up_still_works():
    fd = FeatureDrift(reference_size=2, recent_size=2, every=2)
    for k in ("warmup_ms", "warmup_events", "warmup_seen", "_first_ts", "_warm"):
        del fd.__dict__[k]
    fd = pickle.loads(pickle.dumps(fd))
    for v in [1.0, 2.0, 1.0, 2.0]:
        fd.update({"x": v}, 0)
    assert fd.scores["x"][0] == 0.0


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
