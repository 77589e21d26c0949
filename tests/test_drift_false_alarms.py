"""The drift monitors do not cry wolf, and still see a change: the fraud generator's stationary
stream (``--drift-at none``) replayed through the real model step (:func:`make_learner`, the
stream's features, :meth:`OnlineLearner.on_event` / ``on_label`` in event-time order), over 5
seeds, at the default drift settings except ``UNDERTOW_DRIFT_EVERY=500`` (PSI computed ten times
as often as by default: more chances to cry wolf).

* After the warm-up (the stream's longest window, 1 h) every feature's PSI stays under 0.1 at
  every computation: the false-alarm rate of a PSI threshold of 0.1 is 0 over those seeds.
* ADWIN on the served error, the signal of the ``UndertowConceptDrift`` alert, detects no
  increase on any of them, and neither does Page-Hinkley on the error or the scores; on the
  generator's concept drift Page-Hinkley sees the rise minutes after it, never before.
* Amounts multiplied by 3 from one event on (a copy of the stream): PSI of ``amount`` passes
  0.25 within ``SHIFT_DETECTED_WITHIN`` events, and only features computed from ``amount``
  pass 0.1.
"""

from __future__ import annotations

import heapq
from typing import Any

import pytest

from connectors.settings import load_settings
from dataflows.stream import make_learner
from harness.workload import WorkloadConfig, generate
from undertow.features import SpecState
from undertow.learning import OnlineLearner
from undertow.schema import Event, FeaturedEvent, Label
from undertow.stream import load_stream

STREAM = load_stream("streams/fraud.toml")
ENV = {"UNDERTOW_DRIFT_EVERY": "500"}
SEEDS = (1, 2, 3, 4, 5)
#: Events: 1 h of warm-up (about 18k), a reference and a recent window of 10k each, then 3k.
N_EVENTS = 41_000
HOUR_MS = 3_600_000
#: Measured: 3995 events for seed 1 (the first computation, every 500 events, with PSI > 0.25:
#: 40 % of the recent window, which spans 10000 events at the default stride, is shifted).
SHIFT_DETECTED_WITHIN = 4_000


def replay(events: list[dict[str, Any]], labels: list[dict[str, Any]]
           ) -> tuple[OnlineLearner, list[tuple[int, dict[str, tuple[float, float]]]]]:
    """Events and labels through the model step in event-time order (a label first at a tie);
    returns the learner and each PSI/KS computation with the index of the event it followed."""
    learner = make_learner(load_settings(ENV), STREAM, replay=True)
    features = SpecState(STREAM.features)
    merged = heapq.merge(((lb["ts"], 0, i, lb) for i, lb in enumerate(labels)),
                         ((e["ts"], 1, i, e) for i, e in enumerate(events)))
    out: list[Any] = []
    computed: list[tuple[int, dict[str, tuple[float, float]]]] = []
    last = learner.feature_drift.scores
    for ts, kind, i, r in merged:
        if kind == 0:
            learner.on_label(Label(r["event_id"], r["card_id"], ts, r["is_fraud"]), out)
        else:
            x = features.update(r, ts)
            assert x is not None  # the generator writes in time order: nothing is late
            learner.on_event(FeaturedEvent(Event(r["event_id"], r["card_id"], ts, r), x), out)
            if learner.feature_drift.scores is not last:
                last = learner.feature_drift.scores
                computed.append((i, last))
        out.clear()
    return learner, computed


@pytest.fixture(scope="module")
def stationary():
    runs = {}
    for seed in SEEDS:
        w = generate(WorkloadConfig(seed=seed, n_events=N_EVENTS, drift_at=None))
        runs[seed] = (w, *replay(w.events, w.labels))
    return runs


def test_no_feature_drifts_on_a_stationary_stream(stationary):
    for seed, (w, learner, computed) in stationary.items():
        fd = learner.feature_drift
        first = w.events[0]["ts"]
        assert fd.warmup_seen == sum(e["ts"] - first < HOUR_MS for e in w.events), seed
        assert len(computed) >= 5, seed
        served = SpecState(STREAM.features).update(w.events[0], first)
        assert all(set(sc) == set(served) for _, sc in computed), seed  # every feature
        worst = max((psi, name) for _, sc in computed for name, (psi, _) in sc.items())
        assert worst[0] < 0.1, (seed, worst)


def test_the_concept_drift_alert_stays_off_on_a_stationary_stream(stationary):
    for seed, (_, learner, _) in stationary.items():
        assert learner.error_drift.detections[("adwin", "up")] == 0, seed


def test_page_hinkley_detects_no_increase_on_a_stationary_stream(stationary):
    """Before it was re-armed at each ADWIN detection it fired once per seed on the error and
    once on the scores, about 1.3 h in (about 10 a simulated day)."""
    for seed, (_, learner, _) in stationary.items():
        for stream in (learner.error_drift, learner.score_drift):
            assert stream.detections[("page_hinkley", "up")] == 0, seed


def test_page_hinkley_sees_the_generators_concept_drift_after_it_and_not_before():
    w = generate(WorkloadConfig(seed=3, n_events=60_000, drift_at=0.5))
    learner, _ = replay(w.events, w.labels)
    drift_at = w.events[30_000]["ts"]
    seen = [ts for ts, det, _ in learner.error_drift.history if det == "page_hinkley"]
    # Measured: 5.2 min of event time after the drift (ADWIN's first increase: 21.2 min).
    assert seen and all(ts > drift_at for ts in seen), seen
    assert seen[0] - drift_at < 6 * 60_000, (seen[0] - drift_at) / 60_000


def derived_from(field: str) -> set[str]:
    """The served features that read ``field`` (the stream's field uses)."""
    return {u.feature for u in STREAM.features.field_uses() if u.field == field}


def test_a_shift_in_amount_is_seen_in_its_features_alone():
    w = generate(WorkloadConfig(seed=1, n_events=N_EVENTS + 3_000, drift_at=None))
    first = w.events[0]["ts"]
    warm = next(i for i, e in enumerate(w.events) if e["ts"] - first >= HOUR_MS)
    at = warm + 20_500  # after the reference and a full recent window
    events = [dict(e, amount=e["amount"] * 3) if i >= at else e for i, e in enumerate(w.events)]
    _, computed = replay(events, w.labels)
    before = [sc for i, sc in computed if i < at]
    after = [(i, sc) for i, sc in computed if i >= at]
    assert before and all(p < 0.1 for sc in before for p, _ in sc.values())
    detected = next(i for i, sc in after if sc["amount"][0] > 0.25)
    assert detected - at <= SHIFT_DETECTED_WITHIN
    crossed = {name for _, sc in after for name, (p, _) in sc.items() if p >= 0.1}
    assert "amount" in crossed and crossed <= derived_from("amount") | {"amount"}, crossed
