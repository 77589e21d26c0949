"""Label-join state benchmark: snapshot seconds, resident memory and disk against pending count.

Run from the repository root (a plain script, not a test; pytest never collects it)::

    .venv/bin/python benchmarks/state.py --pending 10000 100000 1000000 --stores memory disk
    .venv/bin/python benchmarks/state.py --pending 10000000 --stores disk   # once: ~10 min

Each (store, pending count) runs in a fresh child process, so its resident set is its own. The
child fills a :class:`~undertow.label_join.LabelJoin` with ``N`` pending predictions, each what
the fraud stream serves (its 13 features as floats, one model's score), in memory (a ``dict``
and the in-memory deadline map: what a user who sets nothing gets) or on disk
(:class:`connectors.store.RocksJoinState`, ``UNDERTOW_STATE_DIR``). Then it takes the first
snapshot, and runs what one snapshot interval at a real rate brings (``--rate`` events/s for
``--interval`` s: as many new events served and as many old ones labelled and learned, so the
pending count stays ``N`` and as many ids become finished) and takes the next snapshot. A
snapshot is what Bytewax does with the model step's state at an epoch's end: ``pickle.dumps``
of the join (in memory, every pending prediction; on disk, a checkpoint and a handle).

Printed per row: µs per served event while filling, the first snapshot and the steady one
(seconds and pickled bytes), the resident set (VmRSS) after the fill and at the end, and the
state directory's size on disk.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from undertow.label_join import LabelJoin  # noqa: E402
from undertow.schema import Label  # noqa: E402

FEATURES = ["card_count_10m", "card_sum_10m", "card_mean_10m", "card_count_1h", "card_sum_1h",
            "card_mean_1h", "card_secs_since_prev", "amount_to_card_mean_1h",
            "merchant_count_10m", "amount", "channel_pos", "channel_online", "channel_atm"]
DAY_MS = 86_400_000


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def disk_mb(path: Path) -> float:
    """Bytes of the state directory, each file once (checkpoints share the live files)."""
    seen: set[int] = set()
    total = 0
    for root, _, names in os.walk(path):
        for n in names:
            st = os.stat(os.path.join(root, n))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total / 1e6


def vector(rng: random.Random) -> dict[str, float]:
    return {f: rng.random() * 1000 for f in FEATURES}


def child(store: str, n: int, rate: int, interval: float, where: Path) -> dict[str, Any]:
    rng = random.Random(1)
    pending: Any = None
    if store == "disk":
        from connectors.store import RocksJoinState
        pending = RocksJoinState(where / "fraud")
    join = LabelJoin(label_ttl_ms=DAY_MS, early_label_ttl_ms=0, max_pending=n + 1,
                     pending=pending)
    due: list[Any] = []
    base = rss_mb()
    t0 = time.perf_counter()
    for i in range(n):  # one event a ms of event time: nothing expires (TTL one day)
        join.advance(0, i, due)
        join.serve(f"tx-{i:012d}", f"card-{i % 100_000}", vector(rng), {"fraud": rng.random()},
                   i, due)
    fill_us = (time.perf_counter() - t0) / n * 1e6
    gc.collect()
    rss_fill = rss_mb()
    t0 = time.perf_counter()
    first = pickle.dumps(join, pickle.HIGHEST_PROTOCOL)
    first_s = time.perf_counter() - t0
    del first
    # One snapshot interval at the real rate: new events served, as many old ones learned.
    k = int(rate * interval)
    t0 = time.perf_counter()
    for j in range(k):
        ts = n + j
        join.advance(0, ts, due)
        join.serve(f"tx-{ts:012d}", "card-x", vector(rng), {"fraud": 0.5}, ts, due)
        join.on_label(Label(f"tx-{j * (n // k):012d}", "card", ts, True, topic="labels",
                            partition=0), due)
    interval_us = (time.perf_counter() - t0) / k * 1e6
    learned = len(due)
    t0 = time.perf_counter()
    snap = pickle.dumps(join, pickle.HIGHEST_PROTOCOL)
    steady_s = time.perf_counter() - t0
    gc.collect()
    return {"store": store, "pending": n, "fill_us": round(fill_us, 2),
            "first_snapshot_s": round(first_s, 4), "steady_snapshot_s": round(steady_s, 4),
            "snapshot_bytes": len(snap), "changes": k, "learned": learned,
            "interval_us_per_event": round(interval_us, 2), "rss_base_mb": round(base, 1),
            "rss_fill_mb": round(rss_fill, 1), "rss_end_mb": round(rss_mb(), 1),
            "disk_mb": round(disk_mb(where), 1) if store == "disk" else 0.0,
            "finished": len(join.finished)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pending", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--stores", nargs="+", default=["memory", "disk"])
    ap.add_argument("--rate", type=int, default=1500, help="events/s of a snapshot interval")
    ap.add_argument("--interval", type=float, default=5.0, help="snapshot interval (s, -s)")
    ap.add_argument("--dir", default="", help="where the disk store goes (default: a temp dir)")
    ap.add_argument("--child", nargs=2, metavar=("STORE", "N"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        where = Path(a.dir)
        print(json.dumps(child(a.child[0], int(a.child[1]), a.rate, a.interval, where)))
        return
    print("| store | pending | fill µs/event | first snapshot | steady snapshot (5 s at 1,500/s)"
          " | snapshot bytes | RSS after fill | RSS end | disk |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in a.pending:
        for store in a.stores:
            where = Path(tempfile.mkdtemp(prefix="state-bench-", dir=a.dir or None))
            try:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", store, str(n), "--rate", str(a.rate),
                     "--interval", str(a.interval), "--dir", str(where)],
                    capture_output=True, text=True, check=True, cwd=ROOT)
            finally:
                shutil.rmtree(where, ignore_errors=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {store} | {n:,} | {r['fill_us']} | {r['first_snapshot_s']} s "
                  f"| {r['steady_snapshot_s']} s | {r['snapshot_bytes']:,} "
                  f"| {r['rss_fill_mb']:,.0f} MB | {r['rss_end_mb']:,.0f} MB "
                  f"| {r['disk_mb']:,.0f} MB |", flush=True)
            print("  " + json.dumps(r), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
