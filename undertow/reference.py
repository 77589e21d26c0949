"""The fraud pipeline as a plain in-memory River loop: the ceiling and an oracle.

No dataflow, no Kafka, no metrics: events and labels merged by time (a label at the same time as
an event comes first, as in ``river.stream.simulate_qa``), the same feature functions, the same
model, ``predict_proba_one`` on each event and ``learn_one`` on the served features when its label
is due. The benchmark runs it beside the dataflow in the same process to report their ratio.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from undertow import fraud
from undertow.schema import Event


@dataclass
class ReferenceResult:
    scores: dict[str, float]
    learned: int
    seconds: float
    latencies_s: list[float]


def run_reference(
    events: Iterable[dict[str, Any]],
    labels: Iterable[dict[str, Any]],
    model: Any,
    *,
    allowed_lateness_ms: int = 300_000,
) -> ReferenceResult:
    """Score every event and learn every label at its time; return the served scores."""
    merchant = fraud.merchant_state(allowed_lateness_ms)
    card = fraud.card_state(allowed_lateness_ms)
    # One merged, time-ordered stream: (ts, 0 for label / 1 for event, seq, record).
    merged = heapq.merge(
        ((lb["ts"], 0, i, lb) for i, lb in enumerate(labels)),
        ((e["ts"], 1, i, e) for i, e in enumerate(events)),
    )
    served: dict[str, tuple[dict[str, float], float]] = {}
    scores: dict[str, float] = {}
    latencies: list[float] = []
    learned = 0
    clock = time.perf_counter
    start = clock()
    for ts, kind, _, rec in merged:
        if kind == 0:
            s = served.pop(rec["event_id"], None)
            if s is not None:
                model.learn_one(s[0], rec["is_fraud"])
                learned += 1
            continue
        t0 = clock()
        fe = fraud.base_features(Event(rec["event_id"], rec["card_id"], ts, rec))
        x = merchant.update(rec["merchant_id"], ts, 0.0)
        x.update(fe.features)
        feats = card.update(rec["card_id"], ts, rec["amount"])
        feats.update(x)
        fraud.derive_features(feats)
        score = float(model.predict_proba_one(feats).get(True, 0.0))
        served[rec["event_id"]] = (feats, score)
        scores[rec["event_id"]] = score
        latencies.append(clock() - t0)
    return ReferenceResult(scores, learned, clock() - start, latencies)
