"""Soak and overload: the live fraud dataflow over a long paced run, then producers outrunning it.

Run from the repository root (a plain script, not a test; a smoke run of it is in the tests)::

    .venv/bin/python benchmarks/soak.py [--rate 1500] [--minutes 10] [--overload-factor 3]
                                        [--overload-seconds 60] [--drain-seconds 120]

One embedded broker, one live dataflow (``python -m bytewax.run dataflows.fraud:flow``, one
worker, its metrics on a local port) and, in this process, the generator writing the card
workload with its delayed labels:

1. **soak**: ``--rate`` events/s (labels follow at their own delays) for ``--minutes``;
2. **overload**: ``--overload-factor`` times the dataflow's measured capacity (its throughput
   over the last minute of the soak is not it: the soak is paced; the capacity is measured first,
   for ``--capacity-seconds``, by writing as fast as the producer can and reading the rate the
   predictions grow at) for ``--overload-seconds``;
3. **drain**: no producer; how long the consumer lag takes to reach 0.

Every second it samples the dataflow's and the broker's RSS and CPU (``/proc``), and scrapes the
dataflow's ``/metrics`` (predictions, consumer lag, pending predictions, feature state, the
processing-latency histogram, of which each phase's p50/p99 are computed from bucket deltas).
It prints one row per phase and writes every sample with ``--json``. Machines are shared and
noisy: read the shapes (bounded or growing, draining or not) and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from harness.dataflow import start_dataflow  # noqa: E402
from harness.generate import KafkaSink  # noqa: E402
from harness.kafka import EmbeddedKafka, free_port  # noqa: E402
from harness.workload import WorkloadConfig, iter_records  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / 1e6


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / TICK  # utime + stime


def scrape(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, Any] = {"buckets": {}}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "undertow_predictions_total":
                out["predictions"] = out.get("predictions", 0.0) + s.value
            elif s.name == "bytewax_kafka_consumer_lag":
                out["lag"] = out.get("lag", 0.0) + s.value
            elif s.name == "undertow_pending_predictions":
                out["pending"] = out.get("pending", 0.0) + s.value
            elif s.name == "undertow_feature_records":
                out["feature_records"] = out.get("feature_records", 0.0) + s.value
            elif s.name == "undertow_processing_latency_seconds_bucket":
                le = float(s.labels["le"])
                out["buckets"][le] = out["buckets"].get(le, 0.0) + s.value
    return out


def quantile(buckets_a: dict[float, float], buckets_b: dict[float, float], q: float
             ) -> float | None:
    """The ``q`` quantile of the observations between two scrapes (Prometheus's interpolation)."""
    bounds = sorted(buckets_b)
    counts = [buckets_b[b] - buckets_a.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    prev_b, prev_c = 0.0, 0.0
    for b, c in zip(bounds, counts, strict=True):
        if c >= rank:
            if b == float("inf"):
                return prev_b
            return prev_b + (b - prev_b) * (rank - prev_c) / max(c - prev_c, 1e-12)
        prev_b, prev_c = b, c
    return prev_b


@dataclass
class Sampler:
    """Samples once a second on a thread until stopped."""

    flow_pid: int
    broker_pid: int
    port: int
    phase: str = "start"
    samples: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                m = scrape(self.port)
                self.samples.append({
                    "t": time.time(), "phase": self.phase,
                    "flow_rss_mb": rss_mb(self.flow_pid), "flow_cpu_s": cpu_s(self.flow_pid),
                    "broker_rss_mb": rss_mb(self.broker_pid),
                    "broker_cpu_s": cpu_s(self.broker_pid), **m})
            except (OSError, ValueError):
                pass
            self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()


def phase_row(name: str, samples: list[dict[str, Any]], events_in: int | None) -> dict[str, Any]:
    s = [x for x in samples if x["phase"] == name]
    if len(s) < 2:
        return {"phase": name}
    a, b = s[0], s[-1]
    dt = b["t"] - a["t"]
    return {
        "phase": name, "seconds": round(dt, 1), "events_in": events_in,
        "predictions_per_s": round((b.get("predictions", 0) - a.get("predictions", 0)) / dt, 1),
        "flow_rss_mb": (round(a["flow_rss_mb"]), round(max(x["flow_rss_mb"] for x in s)),
                        round(b["flow_rss_mb"])),
        "broker_rss_mb": (round(a["broker_rss_mb"]), round(b["broker_rss_mb"])),
        "flow_cpu_pct": round(100 * (b["flow_cpu_s"] - a["flow_cpu_s"]) / dt),
        "broker_cpu_pct": round(100 * (b["broker_cpu_s"] - a["broker_cpu_s"]) / dt),
        "lag_max": max(x.get("lag", 0) for x in s), "lag_end": b.get("lag", 0),
        "pending_end": b.get("pending"), "feature_records_end": b.get("feature_records"),
        "p50_ms": _ms(quantile(a["buckets"], b["buckets"], 0.5)),
        "p99_ms": _ms(quantile(a["buckets"], b["buckets"], 0.99)),
    }


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/soak.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1500.0, help="soak events/s")
    ap.add_argument("--minutes", type=float, default=10.0, help="soak length")
    ap.add_argument("--capacity-seconds", type=float, default=20.0)
    ap.add_argument("--overload-factor", type=float, default=3.0)
    ap.add_argument("--overload-seconds", type=float, default=60.0)
    ap.add_argument("--drain-seconds", type=float, default=120.0,
                    help="give up waiting for the lag to reach 0 after this long")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write every sample and the rows here")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="a setting of the dataflow (repeatable), e.g. "
                         "UNDERTOW_KAFKA_OPT_QUEUED_MAX_MESSAGES_KBYTES=8192")
    args = ap.parse_args(argv)

    with EmbeddedKafka() as kafka:
        names = {n: f"{n}-soak" for n in ("events", "labels", "predictions", "deadletter")}
        kafka.create_topics([names["events"], names["labels"]], partitions=args.partitions)
        kafka.create_topics([names["predictions"], names["deadletter"]], partitions=1)
        port = free_port()
        env = {**{k: v for k, v in os.environ.items()
                  if not k.startswith(("UNDERTOW_", "BYTEWAX_"))},
               "UNDERTOW_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
               "UNDERTOW_EVENTS_TOPIC": names["events"], "UNDERTOW_LABELS_TOPIC": names["labels"],
               "UNDERTOW_PREDICTIONS_TOPIC": names["predictions"],
               "UNDERTOW_DEADLETTER_TOPIC": names["deadletter"],
               "BYTEWAX_DATAFLOW_API_ENABLED": "true", "BYTEWAX_DATAFLOW_API_PORT": str(port),
               **dict(e.split("=", 1) for e in args.env)}
        flow = start_dataflow("dataflows.fraud:flow", env=env)
        try:
            flow.wait_ready(lambda: _scrapes(port), timeout=60, what="serving /metrics")
            sampler = Sampler(flow.pid, kafka.pid, port)
            thread = threading.Thread(target=sampler.run, daemon=True)
            thread.start()
            written: dict[str, int] = {}
            sink = KafkaSink(kafka.bootstrap_servers, names["events"], names["labels"], 120.0)
            # One stream for every phase (ids and times continue), paced per phase.
            big = int(args.rate * args.minutes * 60 + args.rate * 4 * args.capacity_seconds
                      + 50 * args.rate * args.overload_seconds)
            records = iter_records(WorkloadConfig(seed=1, n_events=big, drift_at=None))

            def write(phase: str, n: int, rate: float) -> None:
                sampler.phase = phase
                started = time.monotonic()
                k = 0
                for kind, record in records:
                    value, key, ts = orjson.dumps(record), record["card_id"].encode(), record["ts"]
                    if kind == "label":
                        sink.label(value, key, ts)
                        continue
                    if rate > 0:
                        due = started + k / rate
                        while (wait := due - time.monotonic()) > 0:
                            sink.idle()
                            time.sleep(min(wait, 0.05))
                    sink.event(value, key, ts)
                    k += 1
                    if k >= n:
                        break
                sink.idle()
                written[phase] = k

            write("soak", int(args.rate * args.minutes * 60), args.rate)
            # Capacity: as fast as the producer writes, read off the predictions' growth.
            before = scrape(port).get("predictions", 0.0)
            t0 = time.time()
            write("capacity", int(args.rate * 4 * args.capacity_seconds), 0.0)
            wait_until(lambda: time.time() - t0 >= args.capacity_seconds, 600)
            capacity = (scrape(port).get("predictions", 0.0) - before) / (time.time() - t0)
            wait_until(lambda: scrape(port).get("lag", 0.0) == 0, args.drain_seconds)
            overload = args.overload_factor * capacity
            write("overload", int(overload * args.overload_seconds), overload)
            assert sink.close() == 0, sink.first_error
            sampler.phase = "drain"
            drained_in = wait_until(lambda: scrape(port).get("lag", 0.0) == 0,
                                    args.drain_seconds)
            time.sleep(2.0)
            sampler.stop()
            thread.join()
        finally:
            flow.stop()
    rows = [phase_row(p, sampler.samples, written.get(p))
            for p in ("soak", "capacity", "overload", "drain")]
    print(f"capacity (predictions/s while writing as fast as possible): {capacity:.0f}; "
          f"overload written at {overload:.0f} events/s; lag drained "
          + (f"{drained_in:.0f} s after the producers stopped" if drained_in is not None
             else f"not within {args.drain_seconds:.0f} s"))
    keys = ["phase", "seconds", "events_in", "predictions_per_s", "flow_rss_mb",
            "broker_rss_mb", "flow_cpu_pct", "broker_cpu_pct", "lag_max", "lag_end",
            "pending_end", "feature_records_end", "p50_ms", "p99_ms"]
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(str(r.get(k, "")) for k in keys))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "capacity": capacity,
                                         "drained_in_s": drained_in,
                                         "samples": sampler.samples}, indent=1))
    return 0


def _scrapes(port: int) -> bool:
    try:
        scrape(port)
        return True
    except OSError:
        return False


def wait_until(ok: Any, timeout: float) -> float | None:
    """Seconds until ``ok()`` held (polled every 0.5 s), or None after ``timeout``."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if ok():
            return time.time() - t0
        time.sleep(0.5)
    return None


if __name__ == "__main__":
    raise SystemExit(main())
