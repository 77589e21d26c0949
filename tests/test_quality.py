"""RollingQuality against River's rolling Accuracy and LogLoss (the oracle)."""

from __future__ import annotations

import random

import pytest
from river import metrics, utils

from undertow.quality import RollingQuality


@pytest.mark.parametrize("window", [1, 7, 100])
def test_matches_river_rolling_metrics_after_every_update(window):
    rng = random.Random(window)
    ours = RollingQuality(window)
    acc = utils.Rolling(metrics.Accuracy, window_size=window)
    ll = utils.Rolling(metrics.LogLoss, window_size=window)
    for _ in range(3 * window + 50):
        y = rng.random() < 0.3
        p = rng.choice([0.0, 1.0, rng.random()])
        ours.update(y, p, p >= 0.5)
        acc.update(y, p >= 0.5)
        ll.update(y, p)
        assert ours.accuracy == pytest.approx(acc.get(), rel=1e-12)
        assert ours.log_loss == pytest.approx(ll.get(), rel=1e-9)
    assert len(ours) == window


def test_empty_window_reads_zero():
    q = RollingQuality(5)
    assert (q.accuracy, q.log_loss) == (0.0, 0.0)
