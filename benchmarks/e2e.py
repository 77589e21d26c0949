"""End-to-end benchmark: the fraud dataflow through the embedded broker against its ceiling.

Run from the repository root (a plain script, not a test; pytest never collects it)::

    .venv/bin/python benchmarks/e2e.py --events 100000 [--model logreg|hat] [--partitions 3]
                                       [--seed 1] [--json out.json] [--profile [out.pstats]]

What it measures, all in one process and one invocation:

* **ceiling**: the same features and model as a plain in-memory River loop
  (:func:`undertow.reference.run_reference`): no dataflow, no Kafka, no metrics. events/s =
  N / its seconds; latency = per-event compute time (features + ``predict_proba_one``). It runs
  once before and once after the dataflow; both are printed and the faster one is the ceiling,
  to be fair against a noisy machine.
* **dataflow**: an :class:`~harness.kafka.EmbeddedKafka` broker gets ``events`` and
  ``labels`` topics (``--partitions`` each) and ``predictions``/``deadletter`` (1 each); the
  deterministic workload (``WorkloadConfig(seed, n_events=N)``) is written to it *before* the
  clock starts (key = ``card_id``, timestamp = record ts). Then the real dataflow
  (:func:`dataflows.stream.build_flow`, Kafka sources, one worker, ``tail=False`` so it stops at
  the end of the topics) runs under ``bytewax.testing.run_main``. events/s = N / wall time of
  ``run_main``. Latency = record read -> its prediction flushed to Kafka, one value per
  prediction, from the prediction sink's ``after_write`` callback. The predictions topic is read
  back to partition EOF; anything but exactly N predictions is an error (exit status 1).
* **dataflow without Kafka**: the same dataflow again, on Bytewax's ``TestingSource`` of
  pre-built Kafka records and ``TestingSink`` outputs, so no broker I/O: the difference to the
  line above is the Kafka client work, the rest of the gap to the ceiling is the dataflow.
  Latency here = record decoded -> prediction handed to the sink.

The ratio dataflow / ceiling (events/s) is printed last. Percentiles are exact (linear
interpolation between closest ranks over every recorded value).

``--profile`` additionally runs the Kafka-free dataflow once more under ``cProfile`` (not timed,
profiling slows it down) and prints the top functions by cumulative and by own time, as a share
of the profiled ``run_main``; with a path it also saves the raw stats for ``snakeviz``/``pstats``.
cProfile's per-call cost inflates code made of many small calls (validators, ``copy.deepcopy``);
for a low-overhead sampling profile of the whole run (Kafka client work and the Rust engine
included) use py-spy, which is not a project dependency::

    py-spy record -r 250 -f raw -o e2e.raw -- .venv/bin/python benchmarks/e2e.py --events 100000

Machines are shared and noisy: quote ratios, not absolute rates.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from bytewax.outputs import DynamicSink, StatelessSinkPartition  # noqa: E402
from bytewax.testing import TestingSink, TestingSource, run_main  # noqa: E402

from connectors.kafka import KafkaRecord, ProducerSink, encode_prediction  # noqa: E402
from benchmarks.stats import percentiles_ms  # noqa: E402
from connectors.settings import Settings, load_settings  # noqa: E402
from dataflows.stream import build_flow, shipped  # noqa: E402
from harness.generate import KafkaSink  # noqa: E402
from harness.generate import run as write_workload  # noqa: E402
from harness.kafka import EmbeddedKafka, count_records  # noqa: E402
from harness.workload import Workload, WorkloadConfig, generate  # noqa: E402
from undertow.models import MODELS, make_model  # noqa: E402
from undertow.reference import run_reference  # noqa: E402
from undertow.schema import Prediction  # noqa: E402

FRAUD = shipped("fraud")

#: Records per TestingSource batch: the Kafka source's default ``source_batch_size``.
BATCH = 1000


# ----------------------------------------------------------------------------- numbers


def result(name: str, n: int, seconds: float, latencies_s: list[float]) -> dict[str, Any]:
    p50, p99 = percentiles_ms(latencies_s)
    return {
        "name": name,
        "events": n,
        "seconds": seconds,
        "events_per_s": n / seconds,
        "p50_ms": p50,
        "p99_ms": p99,
        "latency_samples": len(latencies_s),
    }


# ----------------------------------------------------------------------------- ceiling


def run_ceiling(w: Workload, model: str, name: str) -> dict[str, Any]:
    """The plain River loop over the same workload, with a fresh model."""
    r = run_reference(w.events, w.labels, make_model(model))
    return result(name, len(w.events), r.seconds, r.latencies_s)


# ------------------------------------------------------------------- dataflow on Kafka


def load_broker(bootstrap: str, config: WorkloadConfig, settings: Settings) -> dict[str, Any]:
    """Write the workload to the events/labels topics; raise if any delivery failed."""
    sink = KafkaSink(bootstrap, settings.events_topic, settings.labels_topic, timeout_s=60.0)
    try:
        summary = write_workload(config, sink)
    finally:
        errors = sink.close()
    expected = summary["events"] + summary["labels"]
    if errors or sink.delivered != expected:
        raise RuntimeError(
            f"loading the workload failed: {sink.delivered}/{expected} delivered, {errors} "
            f"errors ({sink.first_error})"
        )
    return summary


def run_on_kafka(kafka: EmbeddedKafka, w: Workload, args: argparse.Namespace) -> dict[str, Any]:
    """Load the broker, run the real dataflow to the end of the topics, check the output."""
    bootstrap = kafka.bootstrap_servers
    settings = load_settings({}, kafka_bootstrap_servers=bootstrap, tail=False, model=args.model)
    kafka.create_topics([settings.events_topic, settings.labels_topic],
                        partitions=args.partitions)
    kafka.create_topics([settings.predictions_topic, settings.deadletter_topic], partitions=1)

    t0 = time.perf_counter()
    summary = load_broker(bootstrap, w.config, settings)
    load_s = time.perf_counter() - t0
    if summary["events"] != len(w.events) or summary["labels"] != len(w.labels):
        raise RuntimeError(f"the broker got a different workload than the ceiling: {summary}")
    print(f"loaded {summary['events']} events + {summary['labels']} labels into the broker "
          f"in {load_s:.1f} s (not timed)", flush=True)

    latencies: list[float] = []

    def record_latency(predictions: list[Prediction]) -> None:
        # Called by the sink once the batch is flushed to the broker.
        now = time.time()
        latencies.extend([now - p.read_at for p in predictions])

    sink = ProducerSink(settings, settings.predictions_topic, encode_prediction, record_latency)
    flow = build_flow(settings, FRAUD, sinks={"predictions": sink})
    t0 = time.perf_counter()
    run_main(flow)
    wall = time.perf_counter() - t0

    n = len(w.events)
    written = sum(count_records(bootstrap, settings.predictions_topic, timeout=120.0).values())
    dead = sum(count_records(bootstrap, settings.deadletter_topic, timeout=120.0).values())
    if written != n or len(latencies) != n:
        raise RuntimeError(
            f"the dataflow wrote {written} predictions ({len(latencies)} reported by the sink) "
            f"for {n} events; {dead} dead letters"
        )
    print(f"read back {written} predictions (== events), {dead} dead letters", flush=True)
    r = result("dataflow (Kafka in and out)", n, wall, latencies)
    r.update(predictions_written=written, dead_letters=dead, load_seconds=load_s)
    return r


# ---------------------------------------------------------------- dataflow without Kafka


class _LatencyPartition(StatelessSinkPartition[Prediction]):
    """A TestingSink partition that also records read -> handed to the sink, per item."""

    def __init__(self, inner: StatelessSinkPartition[Prediction], out: list[float]) -> None:
        self._inner = inner
        self._out = out

    def write_batch(self, items: list[Prediction]) -> None:
        self._inner.write_batch(items)
        now = time.time()
        self._out.extend([now - p.read_at for p in items])

    def close(self) -> None:
        self._inner.close()


class LatencyTestingSink(DynamicSink[Prediction]):
    """Bytewax's ``TestingSink`` (append to a list), plus per-item latency."""

    def __init__(self, items: list[Prediction], latencies: list[float]) -> None:
        self._sink = TestingSink(items)
        self._latencies = latencies

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _LatencyPartition:
        inner = self._sink.build(step_id, worker_index, worker_count)
        return _LatencyPartition(inner, self._latencies)


def kafka_records(w: Workload, settings: Settings) -> tuple[list[KafkaRecord], list[KafkaRecord]]:
    """The workload as the dataflow's Kafka source yields it (one partition per topic).

    The source (``connectors.kafka.KafkaRecordSource``) yields lean ``KafkaRecord`` tuples, not
    Bytewax's ``KafkaSourceMessage``, and the decoders read ``KafkaRecord.error``; so these are
    what the dataflow is fed, byte-identical to what the generator wrote to the broker.
    """
    dumps = orjson.dumps
    events = [KafkaRecord(e["card_id"].encode(), dumps(e), settings.events_topic, 0, i)
              for i, e in enumerate(w.events)]
    labels = [KafkaRecord(lb["card_id"].encode(), dumps(lb), settings.labels_topic, 0, i)
              for i, lb in enumerate(w.labels)]
    return events, labels


def no_kafka_flow(
    w: Workload, model: str, preds: list[Prediction], latencies: list[float]
) -> Any:
    settings = load_settings({}, model=model)
    events, labels = kafka_records(w, settings)
    return build_flow(
        settings, FRAUD,
        sources={"events": TestingSource(events, BATCH), "labels": TestingSource(labels, BATCH)},
        sinks={"predictions": LatencyTestingSink(preds, latencies),
               "deadletter": TestingSink([])},
    )


def run_without_kafka(w: Workload, model: str) -> dict[str, Any]:
    preds: list[Prediction] = []
    latencies: list[float] = []
    flow = no_kafka_flow(w, model, preds, latencies)
    t0 = time.perf_counter()
    run_main(flow)
    wall = time.perf_counter() - t0
    if len(preds) != len(w.events):
        raise RuntimeError(f"{len(preds)} predictions for {len(w.events)} events without Kafka")
    return result("dataflow without Kafka", len(w.events), wall, latencies)


def _location(func: tuple[str, int, str]) -> str:
    path, line, name = func
    if path == "~":  # a builtin
        return name
    parts = Path(path).parts
    if "site-packages" in parts:  # a library: river/..., bytewax/...
        shown = "/".join(parts[len(parts) - parts[::-1].index("site-packages"):])
    else:
        try:
            shown = str(Path(path).resolve().relative_to(ROOT))
        except ValueError:
            shown = path
    return f"{shown}:{line}({name})"


def profile_without_kafka(w: Workload, model: str, top: int, save: Path | None) -> dict[str, Any]:
    """cProfile the Kafka-free run; print the top functions as % of the profiled run_main."""
    preds: list[Prediction] = []
    flow = no_kafka_flow(w, model, preds, [])
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.runcall(run_main, flow)
    wall = time.perf_counter() - t0
    if save is not None:
        prof.dump_stats(save)
    st = pstats.Stats(prof, stream=io.StringIO())
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = st.stats  # type: ignore
    total = max(ct for (_, _, _, ct, _) in raw.values())  # run_main's own cumulative time
    rows = [
        {"function": _location(f), "calls": nc, "own_pct": 100 * tt / total,
         "cum_pct": 100 * ct / total, "us_per_event": 1e6 * ct / len(w.events)}
        for f, (_, nc, tt, ct, _) in raw.items()
    ]
    by_cum = sorted(rows, key=lambda r: -r["cum_pct"])[:top]
    by_own = sorted(rows, key=lambda r: -r["own_pct"])[:top]
    print(f"\nprofile of the dataflow without Kafka (cProfile, {wall:.1f} s profiled vs. "
          f"unprofiled above; shares of run_main):")
    print(f"  {'cum %':>6} {'own %':>6} {'cum us/ev':>9} {'calls':>9}  function (by cumulative)")
    for r in by_cum:
        print(f"  {r['cum_pct']:6.1f} {r['own_pct']:6.1f} {r['us_per_event']:9.2f} "
              f"{r['calls']:9d}  {r['function']}")
    print(f"  {'own %':>6} {'cum %':>6} {'calls':>9}  function (by own time)")
    for r in by_own:
        print(f"  {r['own_pct']:6.1f} {r['cum_pct']:6.1f} {r['calls']:9d}  {r['function']}")
    if save is not None:
        print(f"  raw stats saved to {save} (python -m pstats {save})")
    return {"profiled_seconds": wall, "by_cumulative": by_cum, "by_own": by_own}


# ---------------------------------------------------------------------------- report


def environment() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "bytewax": version("bytewax"),
        "river": version("river"),
        "confluent_kafka": version("confluent-kafka"),
        "platform": platform.platform(),
    }


def print_table(rows: list[dict[str, Any]], ceiling: dict[str, Any]) -> None:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}" if v < 1 else f"{v:.1f}"

    print(f"\n{'':30} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'vs ceiling':>10}")
    for r in rows:
        ratio = r["events_per_s"] / ceiling["events_per_s"]
        print(f"{r['name']:30} {r['events_per_s']:>10,.0f} {ms(r['p50_ms']):>8} "
              f"{ms(r['p99_ms']):>8} {ratio:>9.2f}x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=100_000, help="events in the workload")
    ap.add_argument("--model", choices=MODELS, default="logreg")
    ap.add_argument("--partitions", type=int, default=3, help="partitions of events and labels")
    ap.add_argument("--seed", type=int, default=1, help="workload seed")
    ap.add_argument("--json", type=Path, default=None, help="also write every number here")
    ap.add_argument("--profile", nargs="?", const="-", default=None, metavar="PSTATS",
                    help="also cProfile the Kafka-free run (optionally save the stats here)")
    ap.add_argument("--profile-top", type=int, default=25, help="rows of the profile to print")
    args = ap.parse_args(argv)
    if args.events < 1 or args.partitions < 1:
        ap.error("--events and --partitions must be >= 1")

    env = environment()
    n = args.events
    w = generate(WorkloadConfig(seed=args.seed, n_events=n))
    print(f"undertow e2e benchmark: {n} events, {len(w.labels)} labels, seed {args.seed}, "
          f"model {args.model}, {args.partitions} partitions; nproc {env['nproc']}, "
          f"Python {env['python']}, bytewax {env['bytewax']}, river {env['river']}", flush=True)

    before = run_ceiling(w, args.model, "ceiling (before)")
    print(f"ceiling before: {before['events_per_s']:,.0f} events/s", flush=True)

    kafka = EmbeddedKafka()
    try:
        kafka.start()
        print(f"embedded Kafka: {kafka.bootstrap_servers} (pid {kafka.pid})", flush=True)
        on_kafka = run_on_kafka(kafka, w, args)
    except RuntimeError as ex:
        print(f"ERROR: {ex}", file=sys.stderr)
        return 1
    finally:
        kafka.stop()
    print(f"dataflow: {on_kafka['events_per_s']:,.0f} events/s", flush=True)

    no_kafka = run_without_kafka(w, args.model)
    print(f"dataflow without Kafka: {no_kafka['events_per_s']:,.0f} events/s", flush=True)

    after = run_ceiling(w, args.model, "ceiling (after)")
    print(f"ceiling after: {after['events_per_s']:,.0f} events/s", flush=True)
    best = max(before, after, key=lambda r: r["events_per_s"])
    ceiling = {**best, "name": "ceiling (plain River loop)"}

    print_table([on_kafka, no_kafka, ceiling], ceiling)
    print(f"ceiling runs: before {before['events_per_s']:,.0f}, after "
          f"{after['events_per_s']:,.0f} events/s; the faster is the ceiling")
    ratio = on_kafka["events_per_s"] / ceiling["events_per_s"]
    ratio_nk = no_kafka["events_per_s"] / ceiling["events_per_s"]
    print(f"ratio {ratio:.2f}x  (dataflow / ceiling events/s; {ratio_nk:.2f}x without Kafka)")

    profile = None
    if args.profile is not None:
        save = None if args.profile == "-" else Path(args.profile)
        profile = profile_without_kafka(w, args.model, args.profile_top, save)

    if args.json is not None:
        args.json.write_text(json.dumps({
            "events": n, "labels": len(w.labels), "seed": args.seed, "model": args.model,
            "partitions": args.partitions, "environment": env,
            "dataflow": on_kafka, "dataflow_without_kafka": no_kafka,
            "ceiling": ceiling, "ceiling_before": before, "ceiling_after": after,
            "ratio": ratio, "ratio_without_kafka": ratio_nk, "profile": profile,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
