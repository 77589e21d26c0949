"""A second, unrelated stream: shop clicks and whether each led to a purchase (deterministic).

Users browse in sessions: each click has a page, a device, the seconds spent on it (``dwell_s``)
and the price of what it showed (0 off product pages). A click's label, ``converted``, says
whether the user bought within 30 minutes of it; it becomes known at the purchase, or 30 minutes
after the click when there was none. Buyers dwell longer, look at a few products more than once
and reach the cart; so the windowed features of the clicks spec (:file:`streams/clicks.toml`) carry
the signal. The same engine and dataflow serve it as the fraud stream: only the schema, the spec
and the label's field differ.

>>> evs, lbs = generate_clicks(seed=1, n_users=5, n_sessions=3)
>>> sorted(evs[0])
['device', 'dwell_s', 'event_id', 'page', 'price', 'ts', 'user_id']
>>> len(evs) == len(lbs) and all(lb["ts"] > ev["ts"] for ev, lb in zip(evs, lbs))
True
"""

from __future__ import annotations

import random
from typing import Any

PAGES = ("home", "search", "product", "cart", "checkout")
DEVICES = ("mobile", "desktop")
HORIZON_MS = 30 * 60_000
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

def generate_clicks(
    *, seed: int, n_users: int = 200, n_sessions: int = 2000, start_ms: int = START_MS,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Events in time order and their labels (in the same order as the events)."""
    rng = random.Random(seed)
    sessions = []
    t = start_ms
    for _ in range(n_sessions):
        t += int(rng.expovariate(1 / 20_000))
        sessions.append((t, f"u{rng.randrange(n_users):04d}", rng.random() < 0.2))
    events: list[dict[str, Any]] = []
    buys: dict[str, list[int]] = {}
    for s_start, user, buyer in sessions:
        device = rng.choice(DEVICES)
        ts = s_start
        product_price = round(rng.uniform(5, 300), 2)
        n_clicks = rng.randint(3, 12) if buyer else rng.randint(1, 6)
        for i in range(n_clicks):
            if buyer:
                page = "product" if i % 3 else rng.choice(("product", "search", "cart"))
            else:
                page = rng.choice(("home", "search", "search", "product"))
            dwell = rng.lognormvariate(3.2 if buyer else 2.4, 0.6)
            events.append({
                "event_id": "", "user_id": user, "page": page,
                "device": device, "dwell_s": round(dwell, 2),
                "price": product_price if page == "product" else 0.0, "ts": ts,
            })
            ts += int(dwell * 1000) + rng.randrange(500, 5000)
        if buyer:
            events.append({
                "event_id": "", "user_id": user, "page": "checkout",
                "device": device, "dwell_s": round(rng.uniform(20, 90), 2),
                "price": product_price, "ts": ts,
            })
            buys.setdefault(user, []).append(ts)
    events.sort(key=lambda e: e["ts"])  # stable: sessions in the order they were drawn
    for i, e in enumerate(events):
        e["event_id"] = f"k{i:08d}"  # ids in time order
    labels = []
    for e in events:
        later = [b for b in buys.get(e["user_id"], ()) if e["ts"] < b <= e["ts"] + HORIZON_MS]
        converted = bool(later)
        labels.append({"event_id": e["event_id"], "user_id": e["user_id"], "converted": converted,
                       "ts": min(later) if converted else e["ts"] + HORIZON_MS})
    return events, labels


def clicks_workload(seed: int, n_events: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Exactly ``n_events`` clicks, the first in time order, and their labels (same order).

    :func:`generate_clicks` with the fewest sessions, starting from ``n_events // 4`` and
    doubling, that give that many clicks; the rest are cut. A label near the end may name a
    purchase at a time past the last click kept (it happened; its click was cut).

    >>> evs, lbs = clicks_workload(seed=1, n_events=10)
    >>> len(evs), len(lbs), evs[-1]["event_id"], [lb["event_id"] for lb in lbs] == [
    ...     ev["event_id"] for ev in evs]
    (10, 10, 'k00000009', True)
    """
    if n_events < 0:
        raise ValueError(f"n_events must be >= 0, got {n_events}")
    n_sessions = max(1, n_events // 4)
    while True:
        events, labels = generate_clicks(seed=seed, n_sessions=n_sessions)
        if len(events) >= n_events:
            return events[:n_events], labels[:n_events]
        n_sessions *= 2
