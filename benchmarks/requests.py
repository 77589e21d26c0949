"""Request to reply: p50/p99 over Kafka and over HTTP, at a steady low rate and at half the maximum.

Run from the repository root (a plain script, not a test; pytest never collects it)::

    .venv/bin/python benchmarks/requests.py [--warm-events 3000] [--low-rate 20] [--seconds 10]
                                            [--max-seconds 5] [--concurrency 32] [--json out.json]

What it sets up: an :class:`~harness.kafka.EmbeddedKafka` broker, the fraud stream's topics plus
``requests`` and ``replies``, a deterministic workload of ``--warm-events`` events and their
labels, the real live dataflow (``python -m bytewax.run dataflows.stream:flow``,
``UNDERTOW_STREAM=streams/fraud.toml``, one worker) and one gateway
(``python -m connectors.gateway``), each a child process. The clock starts once every warm event
has its prediction. Every request is a warm event's card and fields at the newest event time, a
new event id each.

What it measures, per path:

* **kafka**: a plain confluent-kafka producer and consumer speaking docs/requests.md directly:
  the time from ``produce`` of the request to reading its reply (correlation id matched), on the
  client's monotonic clock.
* **http**: aiohttp's client POSTing one record to ``/v1/streams/fraud/predict``: the time from
  sending the request to reading the whole answer (gateway and its Kafka round trip included).

First each path's maximum rate: ``--concurrency`` requests kept in flight for ``--max-seconds``,
replies per second. Then each path open-loop (requests sent on a fixed schedule, whatever the
replies do) at ``--low-rate`` per second and at half the lower of the two maxima, for
``--seconds`` each. Percentiles are exact over every reply (``statistics.quantiles``, inclusive).
A request without its reply 5 s after the last one was sent is counted as lost; an HTTP answer
other than 200 as an error. Machines are shared and noisy: quote the table with its conditions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import orjson  # noqa: E402
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from benchmarks.stats import percentiles_ms  # noqa: E402
from harness.dataflow import start_dataflow  # noqa: E402
from harness.kafka import EmbeddedKafka, end_offsets, free_port  # noqa: E402
from harness.process import ChildProcess  # noqa: E402
from harness.workload import WorkloadConfig, generate  # noqa: E402

#: Seconds a request may wait for its reply after the last one was sent, then it is lost.
DRAIN_S = 5.0


def row(path: str, mode: str, offered: float | None, sent: int, seconds: float,
        latencies: list[float], failed: int) -> dict[str, Any]:
    p50, p99 = percentiles_ms(latencies)
    return {"path": path, "mode": mode, "offered_per_s": offered, "sent": sent,
            "answered": len(latencies), "answered_per_s": len(latencies) / seconds,
            "failed": failed, "p50_ms": p50, "p99_ms": p99}


class Requests:
    """The request records: warm events' cards and fields at the newest event time."""

    def __init__(self, events: list[dict[str, Any]], seed: int = 3) -> None:
        self._events = events
        self._ts = max(e["ts"] for e in events)
        self._rng = random.Random(seed)
        self._n = 0

    def next(self) -> dict[str, Any]:
        self._n += 1
        base = self._rng.choice(self._events)
        return {**base, "event_id": f"rq{self._n}", "ts": self._ts}


# -- over Kafka, directly --------------------------------------------------------------------------

class KafkaClient:
    """A requester speaking the wire format: one producer, one consumer of every replies
    partition from its end, replies matched by correlation id on a background thread."""

    def __init__(self, bootstrap: str, requests: str, replies: str) -> None:
        self.requests, self.replies = requests, replies
        self.prefix = f"bench{uuid.uuid4().hex[:8]}-"
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 20})
        md = self._consumer.list_topics(timeout=10)
        self._consumer.assign([
            TopicPartition(replies, p, self._consumer.get_watermark_offsets(
                TopicPartition(replies, p), 10)[1])
            for p in md.topics[replies].partitions])
        self._sent: dict[str, float] = {}
        self.latencies: list[float] = []
        self.failed = 0
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._n = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def send(self, record: dict[str, Any]) -> None:
        self._n += 1
        cid = f"{self.prefix}{self._n}"
        value = orjson.dumps({"correlation_id": cid, "kind": "predict", "event": record,
                              "reply_to": self.replies})
        with self._lock:
            self._sent[cid] = time.monotonic()
        self._producer.produce(self.requests, value, cid.encode())
        self._producer.poll(0)

    @property
    def in_flight(self) -> int:
        return len(self._sent)

    def wait_below(self, n: int, until: float) -> None:
        with self._lock:
            while len(self._sent) >= n and time.monotonic() < until:
                self._lock.wait(0.05)

    def reset(self) -> None:
        """Forget what was measured (requests still in flight count as lost)."""
        with self._lock:
            self._sent.clear()
            self.latencies = []
            self.failed = 0

    def drain(self, timeout: float) -> int:
        """Wait for the replies still due; how many never came (lost)."""
        self._producer.flush(timeout)
        self.wait_below(1, time.monotonic() + timeout)
        with self._lock:
            lost = len(self._sent)
            self._sent.clear()
        return lost

    def _read(self) -> None:
        prefix = self.prefix.encode()
        while not self._stop.is_set():
            first = self._consumer.poll(0.05)  # consume() would wait its whole timeout
            if first is None:
                continue
            for msg in [first, *self._consumer.consume(500, 0)]:
                if msg.error() is not None or not (msg.key() or b"").startswith(prefix):
                    continue
                now = time.monotonic()
                reply = orjson.loads(msg.value())
                with self._lock:
                    sent = self._sent.pop(msg.key().decode(), None)
                    if sent is not None:
                        if reply.get("ok") is True:
                            self.latencies.append(now - sent)
                        else:
                            self.failed += 1
                    self._lock.notify_all()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def kafka_max(client: KafkaClient, reqs: Requests, seconds: float, window: int) -> dict[str, Any]:
    client.reset()
    start = time.monotonic()
    end = start + seconds
    sent = 0
    while time.monotonic() < end:
        client.wait_below(window, end)
        if time.monotonic() >= end:
            break
        client.send(reqs.next())
        sent += 1
    lost = client.drain(DRAIN_S)
    return row("kafka", f"max ({window} in flight)", None, sent, seconds, client.latencies,
               client.failed + lost)


def kafka_steady(client: KafkaClient, reqs: Requests, rate: float, seconds: float
                 ) -> dict[str, Any]:
    client.reset()
    n = max(1, int(rate * seconds))
    start = time.monotonic()
    for i in range(n):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        client.send(reqs.next())
    lost = client.drain(DRAIN_S)
    return row("kafka", "steady", rate, n, seconds, client.latencies, client.failed + lost)


# -- over HTTP, through the gateway ----------------------------------------------------------------

async def _post(session: aiohttp.ClientSession, url: str, record: dict[str, Any],
                latencies: list[float], failed: list[int]) -> None:
    start = time.monotonic()
    try:
        async with session.post(url, data=orjson.dumps(record),
                                headers={"Content-Type": "application/json"}) as r:
            await r.read()
            ok = r.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError):
        ok = False
    if ok:
        latencies.append(time.monotonic() - start)
    else:
        failed[0] += 1


async def http_max(url: str, reqs: Requests, seconds: float, window: int) -> dict[str, Any]:
    latencies: list[float] = []
    failed = [0]
    sent = [0]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=window)) as s:
        end = time.monotonic() + seconds

        async def worker() -> None:
            while time.monotonic() < end:
                sent[0] += 1
                await _post(s, url, reqs.next(), latencies, failed)

        await asyncio.gather(*(worker() for _ in range(window)))
    return row("http", f"max ({window} in flight)", None, sent[0], seconds, latencies, failed[0])


async def http_steady(url: str, reqs: Requests, rate: float, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    failed = [0]
    n = max(1, int(rate * seconds))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        start = time.monotonic()
        tasks = []
        for i in range(n):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_post(s, url, reqs.next(), latencies, failed)))
        await asyncio.wait(tasks, timeout=DRAIN_S + 30)
    return row("http", "steady", rate, n, seconds, latencies, n - len(latencies))


# -- set-up ----------------------------------------------------------------------------------------

def _wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"benchmark: not within {timeout:g} s: {what}")
        time.sleep(0.1)


def _healthy(url: str) -> bool:
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    suffix = uuid.uuid4().hex[:6]
    names = {n: f"{n}-bench-{suffix}" for n in ("events", "labels", "predictions", "deadletter",
                                                "requests", "replies")}
    w = generate(WorkloadConfig(seed=1, n_events=args.warm_events, n_cards=200,
                                n_merchants=50))
    children: list[ChildProcess] = []
    with EmbeddedKafka() as kafka:
        kafka.create_topics({names["events"]: args.partitions, names["labels"]: args.partitions,
                             names["requests"]: args.partitions, names["replies"]: args.partitions,
                             names["predictions"]: 1, names["deadletter"]: 1})
        p = Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 5})
        for topic, records in ((names["events"], w.events), (names["labels"], w.labels)):
            for r in records:
                p.produce(topic, orjson.dumps(r), r["card_id"].encode(), timestamp=r["ts"])
                p.poll(0)
        p.flush(30)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("UNDERTOW_")},
               "UNDERTOW_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
               "UNDERTOW_REQUESTS_TOPIC": names["requests"],
               "UNDERTOW_REPLIES_TOPIC": names["replies"]}
        flow_env = {**env, "UNDERTOW_STREAM": "streams/fraud.toml",
                    **{f"UNDERTOW_{k.upper()}_TOPIC": v for k, v in names.items()
                       if k in ("events", "labels", "predictions", "deadletter")}}
        try:
            children.append(start_dataflow("dataflows.stream:flow", env=flow_env))
            _wait(lambda: sum(end_offsets(kafka.bootstrap_servers, names["predictions"]).values())
                  >= args.warm_events, 120, "the warm events' predictions")
            port = free_port()
            gw = ChildProcess([sys.executable, "-m", "connectors.gateway", "--stream",
                               "streams/fraud.toml", "--port", str(port)], env=env, cwd=ROOT,
                              name="gateway").start()
            children.append(gw)
            base = f"http://127.0.0.1:{port}"
            gw.wait_ready(lambda: _healthy(f"{base}/healthz"), timeout=30, what="healthy")
            url = f"{base}/v1/streams/fraud/predict"
            reqs = Requests(w.events)
            client = KafkaClient(kafka.bootstrap_servers, names["requests"], names["replies"])
            try:
                kafka_steady(client, reqs, 10, 1)  # warm-up, not reported
                asyncio.run(http_steady(url, reqs, 10, 1))
                rows = [kafka_max(client, reqs, args.max_seconds, args.concurrency),
                        asyncio.run(http_max(url, reqs, args.max_seconds, args.concurrency))]
                half = max(1.0, min(r["answered_per_s"] for r in rows) / 2)
                for rate in (args.low_rate, half):
                    rows.append(kafka_steady(client, reqs, rate, args.seconds))
                    rows.append(asyncio.run(http_steady(url, reqs, rate, args.seconds)))
            finally:
                client.close()
        finally:
            for child in reversed(children):
                child.stop()
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    def num(v: float | None, fmt: str = "{:.1f}") -> str:
        return "-" if v is None else fmt.format(v)

    print(f"{'path':<6} {'mode':<18} {'offered/s':>9} {'answered/s':>10} {'sent':>6} "
          f"{'failed':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for r in rows:
        print(f"{r['path']:<6} {r['mode']:<18} {num(r['offered_per_s']):>9} "
              f"{num(r['answered_per_s']):>10} {r['sent']:>6} {r['failed']:>6} "
              f"{num(r['p50_ms'], '{:.2f}'):>8} {num(r['p99_ms'], '{:.2f}'):>8}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warm-events", type=int, default=3000, help="events before the clock starts")
    ap.add_argument("--low-rate", type=float, default=20.0, help="the steady low rate (per s)")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds of each steady run")
    ap.add_argument("--max-seconds", type=float, default=5.0, help="seconds of each maximum run")
    ap.add_argument("--concurrency", type=int, default=32, help="in flight in the maximum runs")
    ap.add_argument("--partitions", type=int, default=2, help="partitions of every input topic")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    rows = run(args)
    print(f"# {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} cpus, warm events {args.warm_events}, {args.seconds:g} s per "
          f"steady run")
    print_table(rows)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    lost = sum(r["failed"] for r in rows)
    return 1 if lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
