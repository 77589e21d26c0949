"""Write a synthetic workload (events and their delayed labels) to Kafka or to JSONL files.

    python -m harness.generate --events 100000 --to kafka
    python -m harness.generate --events 20000 --to jsonl --out-dir run/workload
    python -m harness.generate --rate 500 --malformed 20        # paced, with dead letters
    python -m harness.generate --stream clicks --events 5000 --to jsonl --out-dir run/clicks

``--stream`` chooses the workload: ``fraud`` (the default, described below), ``clicks``
(:func:`harness.clickstream.clicks_workload`: shop clicks keyed by ``user_id``, label
``converted``) or ``income`` (:func:`harness.income.generate_income`: survey interviews keyed by
``person_id``, label ``high_income``). ``--seed``, ``--events``, ``--rate`` and every output
option work for all three; the other workload options shape the card workload only and are
refused, in one line, with another stream. Clicks and income records are written as the fraud
ones are: merged in time order (labels first at ties), Kafka messages keyed by the entity field
with the record's ts as their timestamp; their summary line has stream, events, labels,
positives, delivery_errors, seconds and to.

Records come from :mod:`harness.workload` in merged time order (an event at
its ts, a label at its label ts, labels first at ties), so labels become due
as the stream reaches their time. Kafka messages are keyed by ``card_id`` and
carry the record's ts as their timestamp. Malformed event payloads
(``--malformed N``) are mixed into the events topic/file at deterministic
positions, keyless, with the timestamp of the event that follows them.

At the end one JSON line is printed on stdout: events, labels, malformed,
positives (positive labels written), fraud_events (ground truth), drift_ts,
delivery_errors and seconds. The exit status is 1 if any Kafka delivery failed.
"""

from __future__ import annotations

import argparse
import heapq
import importlib
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from harness.workload import (
    DEFAULT_START_MS,
    RecordStream,
    WorkloadConfig,
    malformed_records,
)

ENV_BOOTSTRAP = "UNDERTOW_KAFKA_BOOTSTRAP_SERVERS"
ENV_EVENTS_TOPIC = "UNDERTOW_EVENTS_TOPIC"
ENV_LABELS_TOPIC = "UNDERTOW_LABELS_TOPIC"


class Sink(Protocol):
    """Where records go; ``close`` returns the number of failed deliveries."""

    def event(self, value: bytes, key: bytes | None, ts: int) -> None: ...

    def label(self, value: bytes, key: bytes | None, ts: int) -> None: ...

    def idle(self) -> None: ...

    def close(self) -> int: ...


class MemorySink:
    """Records in a list, as (kind, value, key, ts): for tests of what the generator writes."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes | None, int]] = []

    def event(self, value: bytes, key: bytes | None, ts: int) -> None:
        self.records.append(("event", value, key, ts))

    def label(self, value: bytes, key: bytes | None, ts: int) -> None:
        self.records.append(("label", value, key, ts))

    def idle(self) -> None:
        pass

    def close(self) -> int:
        return 0


class JsonlSink:
    """``events.jsonl`` and ``labels.jsonl`` in ``out_dir``, one record per line."""

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.events_path = out_dir / "events.jsonl"
        self.labels_path = out_dir / "labels.jsonl"
        self._events = self.events_path.open("wb", buffering=1 << 20)
        self._labels = self.labels_path.open("wb", buffering=1 << 20)

    def event(self, value: bytes, key: bytes | None, ts: int) -> None:
        self._events.write(value + b"\n")

    def label(self, value: bytes, key: bytes | None, ts: int) -> None:
        self._labels.write(value + b"\n")

    def idle(self) -> None:
        self._events.flush()
        self._labels.flush()

    def close(self) -> int:
        self._events.close()
        self._labels.close()
        return 0


class KafkaSink:
    """confluent-kafka producer; counts failed deliveries."""

    def __init__(
        self, bootstrap_servers: str, events_topic: str, labels_topic: str, timeout_s: float
    ) -> None:
        from confluent_kafka import Producer  # imported lazily: JSONL mode needs no librdkafka

        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap_servers,
                "linger.ms": 5,
                "batch.num.messages": 10000,
                "compression.type": "none",
                "message.timeout.ms": int(timeout_s * 1000),
            }
        )
        self._events_topic = events_topic
        self._labels_topic = labels_topic
        self._timeout_s = timeout_s
        self._pending = 0
        self.delivered = 0
        self.errors = 0
        self.first_error: str | None = None

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.errors += 1
            if self.first_error is None:
                self.first_error = str(err)

    def _produce(self, topic: str, value: bytes, key: bytes | None, ts: int) -> None:
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, timestamp=ts, on_delivery=self._on_delivery
                )
                break
            except BufferError:  # local queue full: let librdkafka drain it
                self._producer.poll(0.05)
        self._pending += 1
        if self._pending >= 1000:
            self._producer.poll(0)
            self._pending = 0

    def event(self, value: bytes, key: bytes | None, ts: int) -> None:
        self._produce(self._events_topic, value, key, ts)

    def label(self, value: bytes, key: bytes | None, ts: int) -> None:
        self._produce(self._labels_topic, value, key, ts)

    def idle(self) -> None:
        self._producer.poll(0)

    def close(self) -> int:
        # Past message.timeout.ms every message has been reported one way or the other.
        undelivered = self._producer.flush(self._timeout_s + 5.0)
        if undelivered and self.first_error is None:
            self.first_error = f"{undelivered} messages still undelivered after flush"
        return self.errors + undelivered


def _drift_at(text: str) -> float | None:
    if text.strip().lower() in {"none", "off", "never", ""}:
        return None
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be within [0, 1] or 'none'")
    return value


@dataclass(frozen=True)
class OtherStream:
    """A workload other than the card one: its generator ``(seed, n_events) -> (events,
    labels)``, imported when used, and the fields that key its records and hold its label."""

    name: str
    generator: str
    key_field: str
    label_field: str

    def generate(self, seed: int, n_events: int) -> tuple[list[dict[str, Any]],
                                                          list[dict[str, Any]]]:
        module, _, func = self.generator.partition(":")
        generate: Callable[[int, int], tuple[list[dict[str, Any]], list[dict[str, Any]]]]
        generate = getattr(importlib.import_module(module), func)
        return generate(seed, n_events)


#: ``--stream`` names other than ``fraud``.
OTHER_STREAMS = {
    "clicks": OtherStream("clicks", "harness.clickstream:clicks_workload", "user_id", "converted"),
    "income": OtherStream("income", "harness.income:generate_income", "person_id", "high_income"),
    "iris": OtherStream("iris", "harness.iris:generate_iris", "flower_id", "species"),
    "approval": OtherStream("approval", "harness.approval:generate_approval", "series",
                            "approval"),
}
STREAMS = ("fraud", *OTHER_STREAMS)


class _FraudOnly:
    """An argument group whose options all record that they were given (:class:`_Given`)."""

    def __init__(self, group: argparse._ArgumentGroup) -> None:
        self._group = group

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        return self._group.add_argument(*args, action=_Given, **kwargs)


class _Given(argparse.Action):
    """Store the value and remember the option was given (fraud-only options are refused for
    other streams, even when given their default value)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        given = list(getattr(namespace, "fraud_only_given", None) or [])
        canonical = self.option_strings[0]
        if canonical not in given:
            given.append(canonical)
        namespace.fraud_only_given = given


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness.generate",
        description="Generate a synthetic stream (card transactions by default) and its delayed "
        "labels (deterministic by seed) into Kafka or JSONL files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.set_defaults(fraud_only_given=None)
    parser.add_argument("--stream", choices=STREAMS, default="fraud",
                        help="the workload: card transactions, shop clicks or census interviews")
    common = parser.add_argument_group("every stream")
    common.add_argument("--seed", type=int, default=42, help="random seed")
    common.add_argument("--events", type=int, default=100_000, metavar="N", help="event count")
    workload = _FraudOnly(parser.add_argument_group("card workload (--stream fraud only)"))
    workload.add_argument("--cards", type=int, default=1000, help="number of cards")
    workload.add_argument("--merchants", type=int, default=200, help="number of merchants")
    workload.add_argument("--fraud-rate", type=float, default=0.03, help="target share of fraud")
    workload.add_argument(
        "--drift-at",
        type=_drift_at,
        default=0.5,
        help="fraction of the stream where the fraud pattern changes, or 'none'",
    )
    workload.add_argument(
        "--mean-interarrival-ms",
        type=float,
        default=200.0,
        help="mean event-time gap between consecutive events (all cards)",
    )
    workload.add_argument(
        "--start-ms", type=int, default=DEFAULT_START_MS, help="event time origin (epoch ms)"
    )
    workload.add_argument(
        "--label-delay-min-s", type=float, default=1.0, help="shortest label delay"
    )
    workload.add_argument(
        "--label-delay-median-s",
        type=float,
        default=120.0,
        help="median label delay (lognormal)",
    )
    workload.add_argument(
        "--label-delay-max-s", type=float, default=7200.0, help="longest label delay"
    )
    workload.add_argument(
        "--label-coverage", type=float, default=1.0, help="fraction of events that get a label"
    )
    workload.add_argument(
        "--malformed",
        type=int,
        default=0,
        metavar="N",
        help="mix N malformed event payloads into the events topic/file",
    )

    out = parser.add_argument_group("output")
    out.add_argument("--to", choices=("kafka", "jsonl"), default="kafka", help="destination")
    out.add_argument(
        "--bootstrap-servers",
        default=os.environ.get(ENV_BOOTSTRAP, "127.0.0.1:9092"),
        help=f"Kafka bootstrap servers (env {ENV_BOOTSTRAP})",
    )
    out.add_argument(
        "--events-topic",
        default=os.environ.get(ENV_EVENTS_TOPIC, "events"),
        help=f"events topic (env {ENV_EVENTS_TOPIC})",
    )
    out.add_argument(
        "--labels-topic",
        default=os.environ.get(ENV_LABELS_TOPIC, "labels"),
        help=f"labels topic (env {ENV_LABELS_TOPIC})",
    )
    out.add_argument(
        "--delivery-timeout-s",
        type=float,
        default=60.0,
        help="Kafka message timeout and final flush timeout",
    )
    out.add_argument(
        "--out-dir",
        type=Path,
        default=Path("run/workload"),
        help="directory for events.jsonl and labels.jsonl (--to jsonl)",
    )
    out.add_argument(
        "--rate",
        type=float,
        default=0.0,
        metavar="R",
        help="target events per second of wall time (0 = as fast as possible)",
    )
    out.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def config_from_args(args: argparse.Namespace) -> WorkloadConfig:
    return WorkloadConfig(
        seed=args.seed,
        n_events=args.events,
        n_cards=args.cards,
        n_merchants=args.merchants,
        start_ms=args.start_ms,
        mean_interarrival_ms=args.mean_interarrival_ms,
        fraud_rate=args.fraud_rate,
        drift_at=args.drift_at,
        delay_min_ms=round(args.label_delay_min_s * 1000),
        delay_median_ms=round(args.label_delay_median_s * 1000),
        delay_max_ms=round(args.label_delay_max_s * 1000),
        label_coverage=args.label_coverage,
    )


def malformed_positions(seed: int, n_events: int, n_malformed: int) -> list[int]:
    """Sorted event indices before which the malformed payloads go (repeats allowed).

    >>> malformed_positions(1, 100, 3) == malformed_positions(1, 100, 3)
    True
    >>> all(0 <= p <= 100 for p in malformed_positions(1, 100, 50))
    True
    """
    rng = random.Random(f"undertow.generate:{seed}:malformed-positions")
    return sorted(rng.randrange(n_events + 1) for _ in range(n_malformed))


def run(
    config: WorkloadConfig,
    sink: Sink,
    *,
    n_malformed: int = 0,
    rate: float = 0.0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write the workload to ``sink``; return the summary (without delivery errors).

    Ctrl-C stops early; the summary then says ``"interrupted": true``.
    """
    started = time.monotonic()
    stream = RecordStream(config)
    bad = malformed_records(config.seed, n_malformed)
    positions = malformed_positions(config.seed, config.n_events, n_malformed)
    next_bad = 0
    n_events = 0
    last_event_ts = config.start_ms
    dumps = orjson.dumps
    last_report = started
    interrupted = False

    def emit_malformed_before(index: int, ts: int) -> None:
        nonlocal next_bad
        while next_bad < len(positions) and positions[next_bad] <= index:
            sink.event(bad[next_bad][0], None, ts)
            next_bad += 1

    try:
        for kind, record in stream:
            ts = record["ts"]
            key = record["card_id"].encode()
            if kind == "label":
                sink.label(dumps(record), key, ts)
                continue
            emit_malformed_before(n_events, ts)
            if rate > 0:
                due = started + n_events / rate
                while (wait := due - time.monotonic()) > 0:
                    sink.idle()
                    time.sleep(min(wait, 0.05))
            sink.event(dumps(record), key, ts)
            last_event_ts = ts
            n_events += 1
            if progress is not None and n_events % 1024 == 0:
                now = time.monotonic()
                if now - last_report >= 2.0:
                    last_report = now
                    progress(
                        f"generate: {n_events}/{config.n_events} events, "
                        f"{stream.n_labels} labels, {n_events / (now - started):,.0f} events/s"
                    )
        # Payloads placed after the last event.
        emit_malformed_before(config.n_events, last_event_ts)
    except KeyboardInterrupt:
        interrupted = True
    summary: dict[str, Any] = {
        "events": n_events,
        "labels": stream.n_labels,
        "malformed": next_bad,
        "positives": stream.n_positive_labels,
        "fraud_events": stream.n_fraud,
        "drift_ts": stream.drift_ts,
        "seconds": round(time.monotonic() - started, 3),
    }
    if interrupted:
        summary["interrupted"] = True
    return summary


def run_records(
    stream: OtherStream,
    events: Sequence[dict[str, Any]],
    labels: Sequence[dict[str, Any]],
    sink: Sink,
    *,
    rate: float = 0.0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write ``events`` (in time order) and ``labels`` to ``sink``, merged in time order.

    A label goes out at its own ts, before an event of the same ts; labels of equal ts keep
    their order, as events do. Records are keyed by ``stream.key_field`` and carry their ts
    as the timestamp. Returns the summary (without delivery errors); Ctrl-C stops early and the
    summary then says ``"interrupted": true``.
    """
    started = time.monotonic()
    dumps = orjson.dumps
    key_field, label_field = stream.key_field, stream.label_field
    by_time = sorted(labels, key=lambda lb: lb["ts"])  # stable
    merged = heapq.merge(
        ((lb["ts"], 0, i, lb) for i, lb in enumerate(by_time)),
        ((ev["ts"], 1, i, ev) for i, ev in enumerate(events)),
    )
    n_events = n_labels = positives = 0
    last_report = started
    interrupted = False
    try:
        for ts, kind, _, record in merged:
            key = str(record[key_field]).encode()
            if kind == 0:
                sink.label(dumps(record), key, ts)
                n_labels += 1
                positives += record[label_field] is True
                continue
            if rate > 0:
                due = started + n_events / rate
                while (wait := due - time.monotonic()) > 0:
                    sink.idle()
                    time.sleep(min(wait, 0.05))
            sink.event(dumps(record), key, ts)
            n_events += 1
            if progress is not None and n_events % 1024 == 0:
                now = time.monotonic()
                if now - last_report >= 2.0:
                    last_report = now
                    progress(f"generate: {n_events}/{len(events)} {stream.name} events, "
                             f"{n_labels} labels, {n_events / (now - started):,.0f} events/s")
    except KeyboardInterrupt:
        interrupted = True
    summary: dict[str, Any] = {
        "stream": stream.name,
        "events": n_events,
        "labels": n_labels,
        "positives": positives,
        "seconds": round(time.monotonic() - started, 3),
    }
    if interrupted:
        summary["interrupted"] = True
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rate < 0:
        parser.error("--rate must be >= 0")
    other = OTHER_STREAMS.get(args.stream)
    if other is not None:
        if args.fraud_only_given:
            print(f"generate: {', '.join(args.fraud_only_given)} only apply to --stream fraud, "
                  f"not --stream {other.name}", file=sys.stderr)
            return 2
        if args.events < 0:
            parser.error(f"--events must be >= 0, got {args.events}")
        events, labels = other.generate(args.seed, args.events)
    else:
        if args.malformed < 0:
            parser.error("--malformed must be >= 0")
        try:
            config = config_from_args(args)
        except ValueError as exc:
            parser.error(str(exc))

    started = time.monotonic()
    sink: Sink
    if args.to == "kafka":
        sink = KafkaSink(
            args.bootstrap_servers, args.events_topic, args.labels_topic, args.delivery_timeout_s
        )
    else:
        sink = JsonlSink(args.out_dir)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        if other is not None:
            summary = run_records(other, events, labels, sink, rate=args.rate,
                                  progress=None if args.quiet else progress)
        else:
            summary = run(
                config,
                sink,
                n_malformed=args.malformed,
                rate=args.rate,
                progress=None if args.quiet else progress,
            )
    finally:
        errors = sink.close()
    summary["delivery_errors"] = errors
    summary["seconds"] = round(time.monotonic() - started, 3)  # including the final flush
    summary["to"] = args.to
    if isinstance(sink, KafkaSink) and sink.first_error is not None:
        print(f"generate: delivery failed: {sink.first_error}", file=sys.stderr)
    print(orjson.dumps(summary).decode(), flush=True)
    if summary.get("interrupted"):
        return 130
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
