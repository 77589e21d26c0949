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
from pathlib import Path
from typing import Any

from undertow.features import FeatureSpec, SpecState, load_spec
from undertow.targets import Binary, Target

FRAUD_SPEC = Path(__file__).resolve().parents[1] / "streams" / "fraud.toml"


def _order(r: tuple[int, int, int, Any]) -> tuple[int, int, int]:
    return r[:3]


@dataclass
class ReferenceResult:
    scores: dict[str, Any]
    learned: int
    seconds: float
    latencies_s: list[float]


def run_reference(
    events: Iterable[dict[str, Any]],
    labels: Iterable[dict[str, Any]],
    model: Any,
    *,
    spec: FeatureSpec | None = None,
    label_field: str = "is_fraud",
    target: Target | None = None,
) -> ReferenceResult:
    """Score every event and learn every label at its time; return the served values (binary:
    ``P(True)``; see :mod:`undertow.targets` for the others)."""
    serve = (target if target is not None else Binary()).serve
    features = SpecState(spec if spec is not None else load_spec(FRAUD_SPEC))
    # One merged, time-ordered stream: (ts, 0 for label / 1 for event, seq, record).
    merged = heapq.merge(
        sorted(((lb["ts"], 0, i, lb) for i, lb in enumerate(labels)), key=_order),
        sorted(((e["ts"], 1, i, e) for i, e in enumerate(events)), key=_order),
        key=_order,
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
                model.learn_one(s[0], rec[label_field])
                learned += 1
            continue
        t0 = clock()
        feats = features.update(rec, ts)
        if feats is None:  # late: the dataflow sends it to the late side stream, unscored
            continue
        score = serve(model, feats)
        served[rec["event_id"]] = (feats, score)
        scores[rec["event_id"]] = score
        latencies.append(clock() - t0)
    return ReferenceResult(scores, learned, clock() - start, latencies)
