"""Iris as a stream: Fisher's 150 flowers (public data, ``harness/data/iris.csv``), replayed.

Each event is one flower measured (``sepal_length``, ``sepal_width``, ``petal_length``,
``petal_width``, in cm); its label, the ``species`` (setosa, versicolor or virginica), becomes known
10 s to 10 min later. The flowers come in a shuffled order, about one every 30 s (exponential
gaps: the jitter in time); after the first pass over the 150, each pass measures them again with a
small error (a normal jitter of 2 % of each measurement's spread, two decimals), so a longer stream
is not the same 150 records again. Deterministic for a seed.

>>> evs, lbs = generate_iris(seed=1, n_events=4)
>>> sorted(evs[0])
['event_id', 'flower_id', 'petal_length', 'petal_width', 'sepal_length', 'sepal_width', 'ts']
>>> len(lbs), sorted({lb["species"] for lb in generate_iris(0, 150)[1]})
(4, ['setosa', 'versicolor', 'virginica'])
"""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data" / "iris.csv"
MEASURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
SPECIES = ("setosa", "versicolor", "virginica")
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MEAN_GAP_MS = 30_000


def flowers() -> list[tuple[dict[str, float], str]]:
    """The 150 flowers: (measurements, species), in the data set's order."""
    with DATA.open(newline="") as f:
        return [({m: float(row[m]) for m in MEASURES}, row["species"])
                for row in csv.DictReader(f)]


def generate_iris(seed: int = 0, n_events: int = 150
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``n_events`` measurements in time order and their labels (same order, all labelled)."""
    if n_events < 0:
        raise ValueError(f"n_events must be >= 0, got {n_events}")
    rng = random.Random(seed)
    data = flowers()
    spread = {m: _sd([x[m] for x, _ in data]) for m in MEASURES}
    events: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    t = START_MS
    order: list[int] = []
    for i in range(n_events):
        if not order:
            order = list(range(len(data)))
            rng.shuffle(order)
        k = order.pop()
        x, species = data[k]
        if i >= len(data):  # later passes: measured again, with an error
            x = {m: max(0.1, round(v + rng.gauss(0.0, 0.02 * spread[m]), 2))
                 for m, v in x.items()}
        t += max(1, int(rng.expovariate(1 / MEAN_GAP_MS)))
        eid = f"iris{i:06d}"
        events.append({"event_id": eid, "flower_id": f"f{k:03d}", "ts": t, **x})
        delay = int(math.exp(rng.uniform(math.log(10_000), math.log(600_000))))
        labels.append({"event_id": eid, "flower_id": f"f{k:03d}", "ts": t + delay,
                       "species": species})
    return events, labels


def _sd(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
