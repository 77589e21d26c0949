"""A regression stream: Donald Trump's approval rating, from River's bundled ``TrumpApproval``.

Each day (1001 of them) is one event: the approval the pollsters reported (``gallup``,
``ipsos``, ``morning_consult``, ``rasmussen``, ``you_gov``, in %); its label, ``approval``, is
FiveThirtyEight's weighted average for that day, known one to three days later. Beyond 1001
events the days repeat in later passes, each poll with a normal jitter of 0.5 points (the
approval with the same), so a longer stream is not the same records again. Deterministic for a
seed. The series drifts (the rating moves over the years), which the regression models follow.

>>> evs, lbs = generate_approval(seed=1, n_events=3)
>>> sorted(evs[0])
['event_id', 'gallup', 'ipsos', 'morning_consult', 'rasmussen', 'series', 'ts', 'you_gov']
>>> [round(lb["approval"], 3) for lb in lbs]
[43.755, 43.71, 43.902]
"""

from __future__ import annotations

import random
from typing import Any

from river import datasets

POLLS = ("gallup", "ipsos", "morning_consult", "rasmussen", "you_gov")
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: day 0 of the stream
DAY_MS = 86_400_000


def days() -> list[tuple[dict[str, float], float]]:
    """The bundled days: (polls, FiveThirtyEight's approval), in time order."""
    return [({p: float(x[p]) for p in POLLS}, float(y)) for x, y in datasets.TrumpApproval()]


def generate_approval(seed: int = 0, n_events: int = 1001
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``n_events`` days in time order and their labels (same order, all labelled)."""
    if n_events < 0:
        raise ValueError(f"n_events must be >= 0, got {n_events}")
    rng = random.Random(seed)
    data = days()
    events: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    for i in range(n_events):
        x, y = data[i % len(data)]
        if i >= len(data):
            x = {p: round(v + rng.gauss(0.0, 0.5), 4) for p, v in x.items()}
            y = round(y + rng.gauss(0.0, 0.5), 4)
        ts = START_MS + i * DAY_MS + rng.randrange(0, 3_600_000)
        eid = f"day{i:06d}"
        events.append({"event_id": eid, "series": "trump", "ts": ts, **x})
        labels.append({"event_id": eid, "series": "trump",
                       "ts": ts + rng.randint(1, 3) * DAY_MS, "approval": y})
    return events, labels
