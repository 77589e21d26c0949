"""Latency at a steady rate, and what the consumers' fetch settings cost the broker.

Run from the repository root (a plain script, not a test)::

    .venv/bin/python benchmarks/latency.py [--rate R | --fraction 0.5] [--seconds 60]
        [--capacity-seconds 20] [--producer-seconds 15] [--env NAME=VALUE ...]
        [--sweep] [--probe] [--json out.json]

The live fraud dataflow (``python -m bytewax.run dataflows.stream:flow`` with
``UNDERTOW_STREAM=streams/fraud.toml``, one worker, its metrics on a local port) reads the card
workload, which this process writes with its labels at their own delays
(:func:`harness.generate.run` paces it).

1. **capacity** (skipped with ``--rate``): producers as fast as they go for
   ``--capacity-seconds``; the rate the predictions grow at is the dataflow's maximum (with
   the catch-up alignment off unless ``--env`` sets it: :data:`CAPACITY_DEFAULTS`).
2. **producer only**: ``--fraction`` of it (or ``--rate``) for ``--producer-seconds``, before
   the dataflow starts, to topics it never reads: what the broker spends on the producer alone.
3. **paced**: the dataflow starts (``--env`` settings), the same rate runs for
   ``--warmup-seconds`` and then ``--seconds``, the phase measured.

Of the paced phase it reports the latency

* from the dataflow's ``undertow_processing_latency_seconds`` histogram (read -> prediction
  on the broker, the sink's flush included; percentiles from the bucket deltas, as
  benchmarks/soak.py does);
* from the predictions' own stamps, read back from the predictions topic: the record's
  timestamp (the sink's producer stamps it when the prediction is handed to it, before the
  flush) less the wall time this process handed the event to its producer
  (``produced->written``: it adds the producer's 5 ms linger, the broker and the wait of the
  consumer's fetch, which the histogram does not see; ``produced->scored`` from
  ``processed_at`` is in the JSON), and ``read_at`` -> written where predictions carry
  ``read_at``;
* the broker's produce round trip (:class:`ProduceRoundTrip`): what every flush of the
  dataflow's sink waits for;

and the CPU of the broker (Tansu) and of the dataflow (``/proc``), in % of a core and in ms per
1,000 events written, beside the broker's with the producer only.

Every run has a broker of its own: Tansu's cost per fetch grows with the record batches a
partition holds (docs/latency.md), so a shared broker would charge each run for the ones
before it. ``--sweep`` repeats the producer-only and paced phases for the consumer settings in
:data:`SWEEP` at one rate and prints one row each; today's ``fetch.wait.max.ms=20`` comes
first, fifth and last, to show the drift of a shared machine. ``--probe`` runs the small
experiments that show how Tansu answers a fetch (no dataflow). Read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from benchmarks.soak import _scrapes, cpu_s, quantile, scrape, wait_until  # noqa: E402
from benchmarks.stats import percentiles_ms  # noqa: E402
from harness.dataflow import start_dataflow  # noqa: E402
from harness.generate import KafkaSink  # noqa: E402
from harness.generate import run as write_workload  # noqa: E402
from harness.kafka import EmbeddedKafka, end_offsets, free_port, read_topic  # noqa: E402
from harness.workload import WorkloadConfig  # noqa: E402

OPT = "UNDERTOW_KAFKA_OPT_"

#: The consumer settings ``--sweep`` compares, each on top of ``--env``; today's default first.
SWEEP: list[tuple[str, dict[str, str]]] = [
    ("fetch.wait.max.ms=20 (today)", {f"{OPT}FETCH_WAIT_MAX_MS": "20"}),
    ("fetch.wait.max.ms=5", {f"{OPT}FETCH_WAIT_MAX_MS": "5"}),
    ("fetch.wait.max.ms=100", {f"{OPT}FETCH_WAIT_MAX_MS": "100"}),
    ("fetch.wait.max.ms=500 (librdkafka)", {f"{OPT}FETCH_WAIT_MAX_MS": "500"}),
    ("fetch.wait.max.ms=20 (today, again)", {f"{OPT}FETCH_WAIT_MAX_MS": "20"}),
    ("fetch.wait.max.ms=50", {f"{OPT}FETCH_WAIT_MAX_MS": "50"}),
    ("wait=100 fetch.min.bytes=65536", {f"{OPT}FETCH_WAIT_MAX_MS": "100",
                                        f"{OPT}FETCH_MIN_BYTES": "65536"}),
    ("wait=20 fetch.error.backoff.ms=10", {f"{OPT}FETCH_WAIT_MAX_MS": "20",
                                           f"{OPT}FETCH_ERROR_BACKOFF_MS": "10"}),
    ("wait=20 queued.max.messages.kbytes=256", {f"{OPT}FETCH_WAIT_MAX_MS": "20",
                                                f"{OPT}QUEUED_MAX_MESSAGES_KBYTES": "256"}),
    ("wait=20 UNDERTOW_MAX_SOURCE_LAG_S=0", {f"{OPT}FETCH_WAIT_MAX_MS": "20",
                                             "UNDERTOW_MAX_SOURCE_LAG_S": "0"}),
    ("fetch.wait.max.ms=20 (today, last)", {f"{OPT}FETCH_WAIT_MAX_MS": "20"}),
]


class PhaseOver(Exception):
    """Raised by :class:`TimedSink` at its deadline: it ends :func:`harness.generate.run`."""


@dataclass
class TimedSink:
    """A :class:`harness.generate.KafkaSink` that notes when each event was handed to the
    producer (wall time, by event id) and ends the writing at ``deadline`` (wall time)."""

    sink: KafkaSink
    deadline: float
    stamps: dict[str, float] | None = None
    events: int = 0
    first_error: str | None = None

    def event(self, value: bytes, key: bytes | None, ts: int) -> None:
        now = time.time()
        if now >= self.deadline:
            raise PhaseOver
        self.sink.event(value, key, ts)
        self.events += 1
        if self.stamps is not None:
            self.stamps[orjson.loads(value)["event_id"]] = now

    def label(self, value: bytes, key: bytes | None, ts: int) -> None:
        self.sink.label(value, key, ts)

    def idle(self) -> None:
        self.sink.idle()

    def close(self) -> int:
        """Flush; the failed deliveries. The producer is let go (no log lines from it once the
        broker stops); ``first_error`` stays."""
        failed = self.sink.close()
        self.first_error = self.sink.first_error
        self.sink = None  # type: ignore[assignment]
        return failed


def write_until(sink: TimedSink, rate: float, seed: int) -> threading.Thread:
    """Write the workload to ``sink`` at ``rate`` events/s (0: as fast as it goes) on a thread,
    until the sink's deadline."""
    seconds = max(sink.deadline - time.time(), 0.0)
    n = int(rate * seconds) + 1000 if rate > 0 else 100_000_000  # generated lazily
    config = WorkloadConfig(seed=seed, n_events=n, drift_at=None)

    def body() -> None:
        try:
            write_workload(config, sink, rate=rate)
        except PhaseOver:
            pass

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


@dataclass(frozen=True)
class Topics:
    """The topics of one run, on its own broker."""

    events: str = "events-lat"
    labels: str = "labels-lat"
    predictions: str = "predictions-lat"
    deadletter: str = "deadletter-lat"
    #: Written by the producer-only phase, never read.
    pre_events: str = "events-pre"
    pre_labels: str = "labels-pre"
    #: One record at a time, for :class:`ProduceRoundTrip`.
    rtt: str = "produce-rtt"

    def create(self, kafka: EmbeddedKafka, partitions: int) -> None:
        kafka.create_topics([self.events, self.labels, self.pre_events, self.pre_labels],
                            partitions=partitions)
        kafka.create_topics([self.predictions, self.deadletter, self.rtt], partitions=1)


class ProduceRoundTrip(threading.Thread):
    """How long the broker takes to acknowledge one small record (a producer of its own,
    ``linger.ms=0``, flushed), 10 times a second until ``deadline``: the wait the dataflow's
    sink has in every flush, which the histogram includes, as the broker's load grows."""

    def __init__(self, bootstrap: str, topic: str, deadline: float) -> None:
        super().__init__(daemon=True)
        self.seconds: list[float] = []
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        self._topic, self._deadline = topic, deadline
        self.start()

    def run(self) -> None:
        while time.time() < self._deadline:
            t0 = time.time()
            self._producer.produce(self._topic, b"x")
            if self._producer.flush(10.0) == 0:
                self.seconds.append(time.time() - t0)
            time.sleep(0.1)
        self._producer = None  # type: ignore[assignment]


@dataclass
class Sample:
    t: float
    broker_cpu_s: float
    flow_cpu_s: float
    metrics: dict[str, Any] = field(default_factory=dict)


def sample(broker_pid: int, flow_pid: int, port: int) -> Sample:
    return Sample(time.time(), cpu_s(broker_pid), cpu_s(flow_pid), scrape(port))


def flow_env(kafka: EmbeddedKafka, topics: Topics, port: int,
             settings: dict[str, str]) -> dict[str, str]:
    """The dataflow's whole environment: ours without UNDERTOW_/BYTEWAX_ variables, then the
    broker, the topics, the metrics port and ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNDERTOW_", "BYTEWAX_"))}
    env.update({
        "UNDERTOW_STREAM": "streams/fraud.toml",
        "UNDERTOW_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "UNDERTOW_EVENTS_TOPIC": topics.events, "UNDERTOW_LABELS_TOPIC": topics.labels,
        "UNDERTOW_PREDICTIONS_TOPIC": topics.predictions,
        "UNDERTOW_DEADLETTER_TOPIC": topics.deadletter,
        "BYTEWAX_DATAFLOW_API_ENABLED": "true", "BYTEWAX_DATAFLOW_API_PORT": str(port),
    })
    env.update(settings)
    return env


def cpu_row(prefix: str, cpu_s_used: float, seconds: float, events: int) -> dict[str, float]:
    """CPU in % of one core and in ms per 1,000 events."""
    return {f"{prefix}_cpu_pct": round(100 * cpu_s_used / seconds, 1),
            f"{prefix}_ms_per_1k": round(1e6 * cpu_s_used / max(events, 1), 1)}


def producer_only(kafka: EmbeddedKafka, topics: Topics, rate: float, seconds: float
                  ) -> dict[str, Any]:
    """The broker's CPU while this process writes ``rate`` events/s (and their labels) to
    topics nobody reads."""
    sink = TimedSink(KafkaSink(kafka.bootstrap_servers, topics.pre_events, topics.pre_labels,
                               60.0), time.time() + seconds)
    c0, t0 = cpu_s(kafka.pid), time.time()
    write_until(sink, rate, seed=2).join()
    c1, t1 = cpu_s(kafka.pid), time.time()
    assert sink.close() == 0, sink.first_error
    return {"events": sink.events, "seconds": round(t1 - t0, 1),
            **cpu_row("broker", c1 - c0, t1 - t0, sink.events)}


def latency_ms(values_s: list[float]) -> dict[str, float | None]:
    """p50, p99, p99.9 and max in ms (``statistics.quantiles``, inclusive, as stats.py)."""
    p50, p99 = percentiles_ms(values_s)
    p999 = (statistics.quantiles(values_s, n=1000, method="inclusive")[998] * 1000
            if len(values_s) > 1 else p50)
    top = max(values_s) * 1000 if values_s else None
    return {k: None if v is None else round(v, 1)
            for k, v in (("p50", p50), ("p99", p99), ("p99.9", p999), ("max", top))}


def histogram_ms(a: dict[float, float], b: dict[float, float]) -> dict[str, float | None]:
    """The phase's percentiles from the histogram's bucket deltas; max is the upper bound of
    the highest bucket that grew."""
    out: dict[str, float | None] = {}
    for name, q in (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)):
        v = quantile(a, b, q)
        out[name] = None if v is None else round(v * 1000, 1)
    # Buckets are cumulative: the smallest bound that holds every observation of the phase.
    total = b.get(float("inf"), 0.0) - a.get(float("inf"), 0.0)
    top = next((le for le in sorted(b) if b[le] - a.get(le, 0.0) >= total), None)
    if total <= 0 or top is None:
        out["max"] = None
    elif top == float("inf"):  # above the largest finite bound: say so, not a number
        out["max"] = f">{max(le for le in b if le != float('inf')) * 1000:g}"
    else:
        out["max"] = round(top * 1000, 1)
    return out


def stamp_latencies(messages: list[Any], stamps: dict[str, float], t_a: float, t_b: float
                    ) -> dict[str, Any]:
    """Latencies of the served predictions of the events handed to the producer between
    ``t_a`` and ``t_b``, from their own stamps."""
    e2e: list[float] = []
    scored: list[float] = []
    read_written: list[float] = []
    seen: set[str] = set()
    for m in messages:
        d = orjson.loads(m.value())
        if not d.get("served", True):
            continue
        eid = d["event_id"]
        produced = stamps.get(eid)
        if produced is None or not t_a <= produced < t_b or eid in seen:
            continue
        seen.add(eid)
        written = m.timestamp()[1] / 1000
        e2e.append(written - produced)
        scored.append(d["processed_at"] - produced)
        if "read_at" in d:
            read_written.append(written - d["read_at"])
    wanted = sum(1 for t in stamps.values() if t_a <= t < t_b)
    return {"events": wanted, "predicted": len(seen),
            "produced_written": latency_ms(e2e), "produced_scored": latency_ms(scored),
            "read_written": latency_ms(read_written) if read_written else None}


#: The capacity phase's default: catch-up alignment off. Writing as fast as the producer goes
#: makes a backlog, which the alignment (on by default) serves at the pace of a replay, held by
#: the labels (measured: 87-327 predictions/s, against 1,249 without it); a paced live stream
#: that keeps up is never held. ``--env UNDERTOW_MAX_SOURCE_LAG_S=...`` overrides it.
CAPACITY_DEFAULTS = {"UNDERTOW_MAX_SOURCE_LAG_S": "0"}


def capacity(args: argparse.Namespace, settings: dict[str, str]) -> dict[str, Any]:
    """The dataflow's served rate while producers write as fast as they go (CPU per 1,000
    events served)."""
    settings = {**CAPACITY_DEFAULTS, **settings}
    topics = Topics()
    with EmbeddedKafka() as kafka:
        topics.create(kafka, args.partitions)
        port = free_port()
        flow = start_dataflow("dataflows.stream:flow",
                              env=flow_env(kafka, topics, port, settings))
        try:
            flow.wait_ready(lambda: _scrapes(port), timeout=90, what="serving /metrics")
            sink = TimedSink(KafkaSink(kafka.bootstrap_servers, topics.events, topics.labels,
                                       120.0), time.time() + args.capacity_seconds)
            a = sample(kafka.pid, flow.pid, port)
            thread = write_until(sink, 0.0, seed=1)
            time.sleep(max(sink.deadline - time.time(), 0.0))
            b = sample(kafka.pid, flow.pid, port)
            thread.join()
            sink.close()
        finally:
            flow.stop()
    dt = b.t - a.t
    n = b.metrics.get("predictions", 0.0) - a.metrics.get("predictions", 0.0)
    return {"settings": settings, "served_per_s": round(n / dt, 1),
            "written_per_s": round(sink.events / dt, 1), "seconds": round(dt, 1),
            "lag_end": b.metrics.get("lag"),
            **cpu_row("broker", b.broker_cpu_s - a.broker_cpu_s, dt, int(n)),
            **cpu_row("flow", b.flow_cpu_s - a.flow_cpu_s, dt, int(n))}


def paced(args: argparse.Namespace, rate: float, settings: dict[str, str]) -> dict[str, Any]:
    """One run on a broker of its own: producer only, then the dataflow at ``rate``."""
    topics = Topics()
    with EmbeddedKafka() as kafka:
        topics.create(kafka, args.partitions)
        alone = producer_only(kafka, topics, rate, args.producer_seconds)
        port = free_port()
        flow = start_dataflow("dataflows.stream:flow",
                              env=flow_env(kafka, topics, port, settings))
        try:
            flow.wait_ready(lambda: _scrapes(port), timeout=90, what="serving /metrics")
            start = time.time()
            sink = TimedSink(KafkaSink(kafka.bootstrap_servers, topics.events, topics.labels,
                                       60.0), start + args.warmup_seconds + args.seconds, {})
            thread = write_until(sink, rate, seed=1)
            time.sleep(max(start + args.warmup_seconds - time.time(), 0.0))
            a = sample(kafka.pid, flow.pid, port)
            rtt = ProduceRoundTrip(kafka.bootstrap_servers, topics.rtt, sink.deadline)
            time.sleep(max(sink.deadline - time.time(), 0.0))
            b = sample(kafka.pid, flow.pid, port)
            thread.join()
            rtt.join()
            assert sink.close() == 0, sink.first_error
            drained = wait_until(lambda: scrape(port).get("lag", 0.0) == 0, 30.0)
            time.sleep(1.0)
        finally:
            flow.stop()
        messages = read_topic(kafka.bootstrap_servers, topics.predictions, timeout=120.0)
    assert sink.stamps is not None
    stamps = stamp_latencies(messages, sink.stamps, a.t, b.t)
    dt, events = b.t - a.t, stamps["events"]
    served = (b.metrics.get("predictions", 0.0) - a.metrics.get("predictions", 0.0)) / dt
    return {
        "rate": round(rate, 1), "seconds": round(dt, 1), "events": events,
        "served_per_s": round(served, 1), "lag_end": b.metrics.get("lag"),
        "drained_s": None if drained is None else round(drained, 1),
        "histogram": histogram_ms(a.metrics["buckets"], b.metrics["buckets"]),
        "stamps": stamps, "produce_round_trip": latency_ms(rtt.seconds),
        **cpu_row("broker", b.broker_cpu_s - a.broker_cpu_s, dt, events),
        **cpu_row("flow", b.flow_cpu_s - a.flow_cpu_s, dt, events),
        "producer_only": alone,
    }


def parse_env(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--env {pair!r}: expected NAME=VALUE")
        out[name] = value
    return out


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def print_row(name: str, r: dict[str, Any]) -> None:
    h, s = r["histogram"], r["stamps"]
    e2e = s["produced_written"]
    rw = s["read_written"] or {}
    print(f"| {name} | {_fmt(r['served_per_s'])} "
          f"| {_fmt(h['p50'])} / {_fmt(h['p99'])} / {_fmt(h['p99.9'])} / ≤{_fmt(h['max'])} "
          f"| {_fmt(rw.get('p50'))} / {_fmt(rw.get('p99'))} "
          f"| {_fmt(e2e['p50'])} / {_fmt(e2e['p99'])} / {_fmt(e2e['p99.9'])} / {_fmt(e2e['max'])} "
          f"| {_fmt(r['produce_round_trip']['p50'])} / {_fmt(r['produce_round_trip']['p99'])} "
          f"| {_fmt(r['broker_cpu_pct'])} % / {_fmt(r['broker_ms_per_1k'])} "
          f"| {_fmt(r['producer_only']['broker_ms_per_1k'])} "
          f"| {_fmt(r['flow_cpu_pct'])} % / {_fmt(r['flow_ms_per_1k'])} "
          f"| {s['predicted']}/{s['events']} |", flush=True)


HEADER = ("| setting | served/s | histogram read->written p50 / p99 / p99.9 / max ms "
          "| stamps read_at->written p50 / p99 ms "
          "| stamps produced->written p50 / p99 / p99.9 / max ms "
          "| produce round trip p50 / p99 ms | broker CPU / ms per 1k events "
          "| broker, producer only: ms per 1k | dataflow CPU / ms per 1k | predicted |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


# -- probe: how Tansu answers a fetch ------------------------------------------------------------


def _one_by_one(kafka: EmbeddedKafka, topic: str, config: dict[str, Any], n: int = 60,
                give_up_s: float = 1.0) -> dict[str, Any]:
    """Write ``n`` records one at a time at random moments (a record is written once the one
    before arrived, after 5-60 ms); each one's produced->consumed time, and the broker's CPU
    per record."""
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 0})
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "probe",
                         "enable.auto.commit": False, **config})
    consumer.assign([TopicPartition(topic, 0, end_offsets(kafka.bootstrap_servers, topic)[0])])
    try:
        for _ in range(20):  # connected and fetching
            consumer.poll(0.05)
        rng = random.Random(7)
        got: list[float] = []
        c0, t0 = cpu_s(kafka.pid), time.time()
        for _ in range(n):
            time.sleep(rng.uniform(0.005, 0.060))
            producer.produce(topic, orjson.dumps(time.time()))
            producer.flush()
            deadline = time.time() + give_up_s
            while time.time() < deadline:
                m = consumer.poll(0.001)
                if m is not None and m.error() is None:
                    got.append(time.time() - orjson.loads(m.value()))
                    break
        dt = time.time() - t0
        cpu = cpu_s(kafka.pid) - c0
    finally:
        consumer.close()
    return {"arrived": f"{len(got)}/{n}", **latency_ms(got),
            "broker_cpu_pct": round(100 * cpu / dt), "broker_ms_per_record": round(
                1000 * cpu / max(len(got), 1), 2)}


def _fill(kafka: EmbeddedKafka, topic: str, batches: int) -> None:
    """Write ``batches`` records, each in a record batch of its own."""
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 0,
                         "batch.num.messages": 1})
    for i in range(batches):
        while True:
            try:
                producer.produce(topic, b"x" * 100)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(60)


def probe() -> list[dict[str, Any]]:
    """(1) One record at a time on an empty partition, by ``fetch.wait.max.ms`` (and with a
    ``fetch.min.bytes`` above a record): when does a waiting fetch answer? (2) The same with
    the partition holding more and more record batches, at 20 and 500 ms: what does an
    answering fetch cost the broker, and when does it starve?"""
    rows: list[dict[str, Any]] = []
    with EmbeddedKafka() as kafka:
        kafka.create_topics(["probe-empty", "probe-held"], partitions=1)
        print(PROBE_HEADER, flush=True)

        def one(topic: str, held: int, config: dict[str, Any]) -> None:
            rows.append({"held_batches": held, **config, **_one_by_one(kafka, topic, config)})
            r = rows[-1]
            print(f"| {held:,} | {' '.join(f'{k}={v}' for k, v in config.items())} "
                  f"| {r['arrived']} | {_fmt(r['p50'])} / {_fmt(r['p99'])} / {_fmt(r['max'])} "
                  f"| {r['broker_cpu_pct']} % / {_fmt(r['broker_ms_per_record'])} |", flush=True)

        for wait in (5, 20, 100, 500):
            one("probe-empty", 0, {"fetch.wait.max.ms": wait})
        one("probe-empty", 0, {"fetch.wait.max.ms": 100, "fetch.min.bytes": 65536})
        held = 0
        for target in (10_000, 25_000, 40_000):
            _fill(kafka, "probe-held", target - held)
            held = target
            for wait in (20, 500):
                one("probe-held", held, {"fetch.wait.max.ms": wait})
    return rows


PROBE_HEADER = ("| batches held | consumer | arrived within 1 s | produced->consumed p50 / p99 / "
                "max ms | broker CPU / ms per record |\n|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/latency.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--rate", type=float, help="paced events/s (skips the capacity phase)")
    how.add_argument("--fraction", type=float, default=0.5,
                     help="paced rate as a fraction of the measured capacity")
    ap.add_argument("--seconds", type=float, default=60.0, help="the paced phase measured")
    ap.add_argument("--warmup-seconds", type=float, default=5.0,
                    help="paced before the measured phase, once the dataflow is up")
    ap.add_argument("--capacity-seconds", type=float, default=20.0)
    ap.add_argument("--producer-seconds", type=float, default=15.0,
                    help="the producer alone, before the dataflow starts")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="a setting of the dataflow (repeatable), e.g. "
                         f"{OPT}FETCH_WAIT_MAX_MS=100; under --sweep, under every row")
    ap.add_argument("--sweep", action="store_true", help="one paced run per SWEEP setting")
    ap.add_argument("--only", action="append", default=[], metavar="TEXT",
                    help="with --sweep: only the rows whose name holds TEXT (repeatable)")
    ap.add_argument("--probe", action="store_true",
                    help="only the fetch experiments on a bare broker (no dataflow)")
    ap.add_argument("--json", type=Path, help="write every row here")
    args = ap.parse_args(argv)
    base = parse_env(args.env)
    out: dict[str, Any] = {"argv": sys.argv[1:] if argv is None else argv, "env": base}

    if args.probe:
        out["probe"] = probe()
    else:
        rate = args.rate
        if rate is None:
            out["capacity"] = cap = capacity(args, base)
            rate = args.fraction * cap["served_per_s"]
            given = " ".join(f"{k}={v}" for k, v in cap["settings"].items())
            print(f"capacity ({given}): {cap['served_per_s']:g} predictions/s while writing "
                  f"{cap['written_per_s']:g} events/s (broker {cap['broker_cpu_pct']:g} %, "
                  f"dataflow {cap['flow_cpu_pct']:g} %); paced at {args.fraction:g} of it: "
                  f"{rate:.0f} events/s", flush=True)
        runs = ([(n, e) for n, e in SWEEP if not args.only or any(t in n for t in args.only)]
                if args.sweep else [(" ".join(args.env) or "defaults", {})])
        out["rows"] = []
        print(HEADER, flush=True)
        for name, settings in runs:
            row = {"setting": name, **paced(args, rate, {**base, **settings})}
            out["rows"].append(row)
            print_row(name, row)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
