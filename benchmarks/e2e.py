"""End-to-end benchmark: the fraud dataflow through the embedded broker against its ceiling.

    .venv/bin/python benchmarks/e2e.py --events 100000 [--model logreg|hat] [--partitions 3]

Measures, in one process and one run:

* **dataflow**: N events and their labels pre-loaded into the embedded broker, then the real
  dataflow (``dataflows.fraud.build_flow``, Kafka sources and sinks, one worker, bounded) run to
  the end of the topics. events/s = N / wall time of the run; latency = record read -> its
  prediction written to Kafka (flushed), per prediction, exact p50/p99.
* **dataflow without Kafka**: the same dataflow on Bytewax's testing source and sink, to split
  broker I/O from dataflow cost.
* **ceiling**: the same features and model as a plain in-memory River loop
  (``undertow.reference``); latency = per-event compute time. Run before and after the dataflow;
  the faster of the two is the ceiling, to be fair against a noisy machine.

Prints the ratio dataflow / ceiling. Not a test: machines are shared and noisy, quote ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bytewax  # noqa: E402
import orjson  # noqa: E402
import river  # noqa: E402
from connectors.kafka import KafkaRecord  # noqa: E402
from bytewax.testing import TestingSink, TestingSource, run_main  # noqa: E402

from connectors.broker import EmbeddedKafka, count_records  # noqa: E402
from connectors.generate import KafkaSink, run as write_workload  # noqa: E402
from connectors.kafka import ProducerSink, encode_prediction  # noqa: E402
from connectors.settings import load_settings  # noqa: E402
from dataflows.fraud import build_flow  # noqa: E402
from undertow.models import make_model  # noqa: E402
from undertow.reference import run_reference  # noqa: E402
from undertow.workload import WorkloadConfig, generate  # noqa: E402


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def row(name: str, n: int, seconds: float, lat: list[float]) -> dict:
    return {"name": name, "events_per_s": n / seconds, "seconds": seconds,
            "p50_ms": 1000 * pct(lat, 0.50), "p99_ms": 1000 * pct(lat, 0.99)}


def ceiling(w, model: str) -> dict:
    r = run_reference(w.events, w.labels, make_model(model))
    return row("ceiling (plain River loop)", len(w.events), r.seconds, r.latencies_s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--model", choices=["logreg", "hat"], default="logreg")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    n = args.events
    w = generate(WorkloadConfig(seed=args.seed, n_events=n))
    print(f"undertow e2e benchmark: {n} events, {len(w.labels)} labels, model {args.model}; "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, "
          f"bytewax {bytewax.__version__ if hasattr(bytewax, '__version__') else '0.21.1'}, "
          f"river {river.__version__}")
    results = [ceiling(w, args.model)]

    with EmbeddedKafka() as kafka:
        bs = kafka.bootstrap_servers
        kafka.create_topics(["events", "labels"], partitions=args.partitions)
        kafka.create_topics(["predictions", "deadletter"], partitions=1)
        sink = KafkaSink(bs, "events", "labels", 60.0)
        write_workload(WorkloadConfig(seed=args.seed, n_events=n), sink)
        assert sink.close() == 0, "could not load the workload"
        del sink

        settings = load_settings({}, kafka_bootstrap_servers=bs, tail=False, model=args.model)
        latencies: list[float] = []

        def record(preds: list) -> None:
            now = time.time()
            latencies.extend(now - p.read_at for p in preds)

        flow = build_flow(settings, sinks={
            "predictions": ProducerSink(settings, "predictions", encode_prediction, record)})
        t0 = time.perf_counter()
        run_main(flow)
        results.append(row("dataflow (Kafka in and out)", n, time.perf_counter() - t0, latencies))
        written = sum(count_records(bs, "predictions").values())
        if written != n:
            print(f"ERROR: {written} predictions written for {n} events", file=sys.stderr)
            return 1

    ev = [KafkaRecord(e["card_id"].encode(), orjson.dumps(e), "events", 0, i) for i, e in enumerate(w.events)]
    lb = [KafkaRecord(x["card_id"].encode(), orjson.dumps(x), "labels", 0, i) for i, x in enumerate(w.labels)]
    preds: list = []
    flow = build_flow(load_settings({}, model=args.model),
                      sources={"events": TestingSource(ev, 1000), "labels": TestingSource(lb, 1000)},
                      sinks={"predictions": TestingSink(preds), "deadletter": TestingSink([])})
    t0 = time.perf_counter()
    run_main(flow)
    wall = time.perf_counter() - t0
    results.append(row("dataflow without Kafka", n, wall, []))  # no write time to measure
    assert len(preds) == n

    again = ceiling(w, args.model)
    best = max(results[0], again, key=lambda r: r["events_per_s"])
    print(f"ceiling runs: {results[0]['events_per_s']:,.0f} and {again['events_per_s']:,.0f} "
          f"events/s; using the faster")
    results[0] = best
    print(f"{'':32} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>7}")
    for r in results:
        r["ratio"] = r["events_per_s"] / best["events_per_s"]
        p50 = "-" if r["p50_ms"] != r["p50_ms"] else f"{r['p50_ms']:.2f}"
        p99 = "-" if r["p99_ms"] != r["p99_ms"] else f"{r['p99_ms']:.2f}"
        print(f"{r['name']:32} {r['events_per_s']:>10,.0f} {p50:>8} {p99:>8} {r['ratio']:>6.2f}x")
    print(f"ratio {results[1]['ratio']:.2f}x of the ceiling end to end "
          f"({results[2]['ratio']:.2f}x without Kafka)")
    if args.json:
        args.json.write_text(json.dumps({"events": n, "model": args.model, "results": results},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
