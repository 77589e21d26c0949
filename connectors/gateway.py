"""The HTTP gateway: REST clients ask the live dataflow for one decision, over Kafka.

    UNDERTOW_KAFKA_BOOTSTRAP_SERVERS=localhost:9092 UNDERTOW_REQUESTS_TOPIC=requests \\
    UNDERTOW_REPLIES_TOPIC=replies \\
    python -m connectors.gateway --stream streams/fraud.toml --port 8080

``POST /v1/streams/{name}/predict`` takes one event (a JSON object) or a list of them, writes each
as a request record to ``UNDERTOW_REQUESTS_TOPIC`` (docs/requests.md) and answers with the
dataflow's replies, read from ``UNDERTOW_REPLIES_TOPIC``. ``GET /v1/streams/{name}`` asks for the
model versions (a ``describe`` request), ``GET /healthz`` says whether it can serve and ``GET
/metrics`` serves its Prometheus metrics.

How a reply finds its caller: every request gets a correlation id ``<copy id>-<n>``, the copy id
random per process, and an asyncio future in :class:`ReplyRouter`. One background thread reads
every partition of the replies topic from its end (no consumer group: each copy reads every
reply) and hands the replies whose id starts with its own copy id to the event loop, which
resolves their futures; the others are skipped on the key alone. So copies of the gateway share
one replies topic and scale it. A reply that comes after its caller got a timeout is dropped
and counted (``undertow_gateway_late_replies_total``); the request itself carries the same
deadline (``deadline_ms``), so a dataflow that reads it too late answers ``expired`` without
scoring it.

Each record is checked here first with the stream's own decoder
(:func:`undertow.schema.decode_event`, the dataflow's): a record it refuses is answered 422 at
once with the reason the dataflow would give, without a round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from connectors.settings import (
    ConfigError,
    Settings,
    load_settings,
    replies_topic,
    with_stream_topics,
)
from undertow.errors import StreamError
from undertow.schema import DeadLetter, EventSchema, decode_event
from undertow.stream import Stream, load_stream

#: How many timed-out correlation ids are remembered to recognise their late replies; the
#: oldest are forgotten first (a reply later still is then simply unknown and dropped).
LATE_MEMORY = 100_000
#: The largest ``timeout_ms`` a caller may ask for (10 minutes).
MAX_TIMEOUT_MS = 600_000
#: Request to answer, 1 ms to 5 s.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: The outcomes of an HTTP request, the ``outcome`` label of the requests counter.
OUTCOMES = ("ok", "error", "timeout", "bad_request")

_JSON = "application/json"


class GatewayMetrics:
    """The gateway's metrics, in a registry of their own (served on its ``/metrics``), every
    series declared at 0 so that a dashboard sees it before the first request.

    They are declared here rather than in :mod:`connectors.metrics`, whose registry is the
    dataflow's: importing that module would serve every dataflow metric, at 0, from the gateway.
    """

    def __init__(self, stream: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.stream = stream
        self.requests = Counter(
            "undertow_gateway_requests_total",
            "HTTP requests answered by the gateway, by outcome (ok, error: the dataflow refused "
            "the record or Kafka failed, timeout: no reply in time, bad_request: 400 or 404).",
            ["stream", "outcome"], registry=self.registry)
        self.seconds = Histogram(
            "undertow_gateway_request_seconds",
            "Wall time from receiving an HTTP request to answering it (requests that went to "
            "Kafka, timeouts included).",
            ["stream"], buckets=REQUEST_BUCKETS, registry=self.registry)
        self.late = Counter(
            "undertow_gateway_late_replies_total",
            "Replies that came after their caller had been answered with a timeout (dropped).",
            ["stream"], registry=self.registry)
        self.in_flight = Gauge(
            "undertow_gateway_in_flight",
            "Request records written to Kafka and still waiting for their reply.",
            ["stream"], registry=self.registry)
        for outcome in OUTCOMES:
            self.requests.labels(stream, outcome)
        self.seconds.labels(stream)
        self.late.labels(stream)
        self.in_flight.labels(stream).set(0)

    def answered(self, outcome: str, started: float | None = None) -> None:
        """Count one answered HTTP request; ``started`` (monotonic) times it."""
        self.requests.labels(self.stream, outcome).inc()
        if started is not None:
            self.seconds.labels(self.stream).observe(time.monotonic() - started)


class ReplyRouter:
    """Correlation ids and the futures waiting for their replies (event-loop side only).

    :meth:`open` makes an id ``<copy_id>-<n>`` and its future; :meth:`deliver` resolves it with a
    reply; :meth:`give_up` forgets a future whose caller timed out, remembering its id (up to
    ``late_memory`` of them) so that its reply, if it still comes, is counted as late.

    >>> async def demo():
    ...     router = ReplyRouter("gwx")
    ...     cid, fut = router.open()
    ...     router.deliver(cid, {"ok": True})
    ...     late_cid, _ = router.open()
    ...     router.give_up(late_cid)
    ...     return cid, await fut, router.deliver(late_cid, {"ok": True}), router.late
    >>> asyncio.run(demo())
    ('gwx-1', {'ok': True}, 'late', 1)
    """

    def __init__(self, copy_id: str, late_memory: int = LATE_MEMORY,
                 metrics: GatewayMetrics | None = None) -> None:
        self.copy_id = copy_id
        self.prefix = f"{copy_id}-"
        self._n = 0
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._gave_up: OrderedDict[str, None] = OrderedDict()
        self._late_memory = late_memory
        self._metrics = metrics
        self.late = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def owns(self, correlation_id: str) -> bool:
        """Whether ``correlation_id`` is one of this copy's."""
        return correlation_id.startswith(self.prefix)

    def open(self) -> tuple[str, asyncio.Future[dict[str, Any]]]:
        """A new correlation id and the future its reply will resolve."""
        self._n += 1
        cid = f"{self.prefix}{self._n}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        self._gauge()
        return cid, fut

    def deliver(self, correlation_id: str, reply: dict[str, Any]) -> str:
        """Resolve the future of ``correlation_id`` with ``reply``; what became of it:
        ``"answered"``, ``"late"`` (its caller had timed out: dropped and counted) or
        ``"unknown"`` (another copy's, a duplicate of an answered one, or forgotten)."""
        fut = self._pending.pop(correlation_id, None)
        if fut is not None:
            self._gauge()
            if not fut.done():
                fut.set_result(reply)
            return "answered"
        if correlation_id in self._gave_up:
            del self._gave_up[correlation_id]
            self.late += 1
            if self._metrics is not None:
                self._metrics.late.labels(self._metrics.stream).inc()
            return "late"
        return "unknown"

    def fail(self, correlation_id: str, reply: dict[str, Any]) -> None:
        """Answer ``correlation_id`` with an error of the gateway's own (Kafka refused it)."""
        self.deliver(correlation_id, reply)

    def give_up(self, correlation_id: str) -> None:
        """The caller of ``correlation_id`` was answered with a timeout: forget its future and
        remember the id, so that its reply is recognised as late."""
        if self._pending.pop(correlation_id, None) is None:
            return
        self._gauge()
        self._gave_up[correlation_id] = None
        while len(self._gave_up) > self._late_memory:
            self._gave_up.popitem(last=False)

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.in_flight.labels(self._metrics.stream).set(len(self._pending))


@dataclass(frozen=True)
class Refused:
    """A record refused here, before any round trip: the reason and detail the dataflow's
    decoder gives (a dead-letter reason)."""

    error: str
    detail: str


def parse_body(body: bytes, max_batch: int) -> tuple[list[Any], bool] | str:
    """The records of a predict body and whether it was a list; or why it is a bad request.

    >>> parse_body(b'{"a": 1}', 10)
    ([{'a': 1}], False)
    >>> parse_body(b'[{"a": 1}, {"a": 2}]', 10)
    ([{'a': 1}, {'a': 2}], True)
    >>> parse_body(b'[1]', 10)
    'item 0 of the list is not a JSON object'
    >>> parse_body(b'[{}, {}]', 1)
    'a list of 2 records is longer than UNDERTOW_GATEWAY_MAX_BATCH (1)'
    >>> parse_body(b'nope', 10)
    'the body is not JSON'
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "the body is not JSON"
    if isinstance(doc, dict):
        return [doc], False
    if not isinstance(doc, list):
        return "the body is not a JSON object or a list of objects"
    if len(doc) > max_batch:
        return (f"a list of {len(doc)} records is longer than UNDERTOW_GATEWAY_MAX_BATCH "
                f"({max_batch})")
    for i, item in enumerate(doc):
        if not isinstance(item, dict):
            return f"item {i} of the list is not a JSON object"
    return doc, True


def check_record(record: dict[str, Any], schema: EventSchema) -> Refused | None:
    """Why the dataflow would refuse ``record`` at decode (its own decoder), or None.

    >>> check_record({"event_id": "e1", "card_id": "c1", "ts": 5}, EventSchema())
    >>> check_record({"event_id": "e1", "ts": 5}, EventSchema())
    Refused(error='missing_field', detail="field 'card_id' is missing")
    """
    decoded = decode_event(orjson.dumps(record), schema, step="gateway")
    if isinstance(decoded, DeadLetter):
        return Refused(decoded.reason, decoded.detail)
    return None


def answer_of(reply: dict[str, Any]) -> dict[str, Any]:
    """What a caller gets for one reply: the reply without ``correlation_id`` and ``ok``, or
    ``{"error", "detail"}`` for a refused one.

    >>> answer_of({"correlation_id": "g-1", "ok": True, "event_id": "e1", "score": 0.5})
    {'event_id': 'e1', 'score': 0.5}
    >>> answer_of({"correlation_id": "g-1", "ok": False, "error": "below_min", "detail": "x"})
    {'error': 'below_min', 'detail': 'x'}
    """
    if reply.get("ok") is True:
        return {k: v for k, v in reply.items() if k not in ("correlation_id", "ok")}
    return {"error": str(reply.get("error", "bad_reply")), "detail": str(reply.get("detail", ""))}


#: Errors of the gateway's own, not the dataflow's: no reply could be asked for.
KAFKA_ERROR = "kafka_error"
TIMEOUT = "timeout"


class Gateway:
    """One gateway process: the Kafka clients, the router and the aiohttp application.

    ``start`` (on the application's start-up) launches the thread that waits for the broker and
    the topics and then reads the replies; ``ready`` is set once both topics exist and the
    replies consumer is assigned, at offsets fixed before the first request can be written.
    """

    def __init__(self, settings: Settings, stream: Stream, *, copy_id: str | None = None) -> None:
        # The variables win over the stream file's [requests] topics, as in the dataflow.
        settings = with_stream_topics(settings, stream)
        if not settings.requests_topic:
            raise ConfigError("UNDERTOW_REQUESTS_TOPIC: the gateway needs the requests topic "
                              "(empty, and the stream file has no [requests] topic)")
        self.settings = settings
        self.stream = stream
        self.requests_topic = settings.requests_topic
        self.replies_topic = replies_topic(settings)
        self.copy_id = copy_id or f"gw{secrets.token_hex(4)}"
        self.metrics = GatewayMetrics(stream.name)
        self.router = ReplyRouter(self.copy_id, metrics=self.metrics)
        self.status = "starting"
        self.ready = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        client = {"bootstrap.servers": settings.kafka_bootstrap_servers}
        # Latency first: a request is written within a millisecond and a quiet fetch returns in
        # 20 ms (Tansu holds an empty fetch for the whole wait). Options given win.
        self._producer = Producer({**client, "linger.ms": "1", "log.connection.close": False,
                                   **settings.librdkafka()})
        self._consumer = Consumer({
            **client, "group.id": f"undertow-gateway-{self.copy_id}",  # never joined
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "fetch.wait.max.ms": "20", "log.connection.close": False, **settings.librdkafka()})

    # -- the application -------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application serving the endpoints of docs/requests.md."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics_page)
        app.router.add_post("/v1/streams/{name}/predict", self.predict)
        app.router.add_get("/v1/streams/{name}", self.describe)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        self._loop = asyncio.get_running_loop()
        for target, name in ((self._read_replies, "replies"), (self._poll_producer, "producer")):
            t = threading.Thread(target=target, name=f"gateway-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    async def _on_cleanup(self, app: web.Application) -> None:
        self._stop.set()
        for t in self._threads:
            await asyncio.to_thread(t.join, 5)
        await asyncio.to_thread(self._producer.flush, 2)
        self._consumer.close()

    # -- handlers --------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        if self.ready:
            return _json({"status": "ok"})
        return _json({"status": self.status}, 503)

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def predict(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        early = self._refuse_early(request)
        if early is not None:
            return early
        timeout_ms = self._timeout_ms(request)
        if isinstance(timeout_ms, web.Response):
            return timeout_ms
        parsed = parse_body(await request.read(), self.settings.gateway_max_batch)
        if isinstance(parsed, str):
            return self._bad_request(parsed)
        records, is_list = parsed
        deadline_ms = _now_ms() + timeout_ms
        answers: list[dict[str, Any] | None] = [None] * len(records)
        waits: list[tuple[int, str, asyncio.Future[dict[str, Any]]]] = []
        for i, record in enumerate(records):
            refused = check_record(record, self.stream.events)
            if refused is not None:
                answers[i] = {"error": refused.error, "detail": refused.detail}
                continue
            cid, fut = self._ask({"kind": "predict", "event": record}, deadline_ms)
            waits.append((i, cid, fut))
        timed_out = await self._wait(waits, timeout_ms, answers)
        if not is_list:
            answer = answers[0]
            assert answer is not None
            if timed_out:
                self.metrics.answered("timeout", started)
                return _json({"error": TIMEOUT}, 504)
            if "error" in answer:
                status = 503 if answer["error"] == KAFKA_ERROR else 422
                self.metrics.answered("error", started if waits else None)
                return _json(answer, status)
            self.metrics.answered("ok", started)
            return _json(answer)
        if waits and timed_out == len(waits):
            self.metrics.answered("timeout", started)
            return _json({"error": TIMEOUT}, 504)
        self.metrics.answered("ok", started if waits else None)
        return _json(answers)

    async def describe(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        early = self._refuse_early(request)
        if early is not None:
            return early
        timeout_ms = self._timeout_ms(request)
        if isinstance(timeout_ms, web.Response):
            return timeout_ms
        answers: list[dict[str, Any] | None] = [None]
        cid, fut = self._ask({"kind": "describe"}, _now_ms() + timeout_ms)
        if await self._wait([(0, cid, fut)], timeout_ms, answers):
            self.metrics.answered("timeout", started)
            return _json({"error": TIMEOUT}, 504)
        answer = answers[0]
        assert answer is not None
        if "error" in answer:
            self.metrics.answered("error", started)
            return _json(answer, 503 if answer["error"] == KAFKA_ERROR else 502)
        self.metrics.answered("ok", started)
        return _json(answer)

    # -- the round trip --------------------------------------------------------------------------

    def _ask(self, body: dict[str, Any], deadline_ms: int
             ) -> tuple[str, asyncio.Future[dict[str, Any]]]:
        """Write one request record; its correlation id and the future of its reply."""
        cid, fut = self.router.open()
        value = orjson.dumps({"correlation_id": cid, **body, "reply_to": self.replies_topic,
                              "deadline_ms": deadline_ms})
        try:
            self._producer.produce(self.requests_topic, value, cid.encode(),
                                   on_delivery=self._on_delivery)
        except (BufferError, KafkaException) as ex:
            self.router.fail(cid, {"ok": False, "error": KAFKA_ERROR,
                                   "detail": f"cannot write the request: {ex}"})
        return cid, fut

    async def _wait(self, waits: list[tuple[int, str, asyncio.Future[dict[str, Any]]]],
                    timeout_ms: int, answers: list[dict[str, Any] | None]) -> int:
        """Wait for the replies of ``waits`` until the deadline, fill ``answers``; how many did
        not come in time (their ids are remembered as given up)."""
        if not waits:
            return 0
        await asyncio.wait([f for _, _, f in waits], timeout=timeout_ms / 1000)
        missing = 0
        for i, cid, fut in waits:
            if fut.done():
                answers[i] = answer_of(fut.result())
            else:
                missing += 1
                self.router.give_up(cid)
                fut.cancel()
                answers[i] = {"error": TIMEOUT, "detail": f"no reply within {timeout_ms} ms"}
        return missing

    def _refuse_early(self, request: web.Request) -> web.Response | None:
        name = request.match_info["name"]
        if name != self.stream.name:
            self.metrics.answered("bad_request")
            return _json({"error": "unknown_stream",
                          "detail": f"this gateway serves stream {self.stream.name!r}, "
                                    f"not {name!r}"}, 404)
        if not self.ready:
            self.metrics.answered("error")
            return _json({"error": "starting", "detail": self.status}, 503)
        return None

    def _timeout_ms(self, request: web.Request) -> int | web.Response:
        raw = request.query.get("timeout_ms")
        if raw is None:
            return self.settings.gateway_timeout_ms
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if not 0 < value <= MAX_TIMEOUT_MS:
            return self._bad_request(f"timeout_ms must be an integer from 1 to {MAX_TIMEOUT_MS}, "
                                     f"got {raw!r}")
        return value

    def _bad_request(self, detail: str) -> web.Response:
        self.metrics.answered("bad_request")
        return _json({"error": "bad_request", "detail": detail}, 400)

    # -- Kafka threads ---------------------------------------------------------------------------

    def _on_delivery(self, err: Any, msg: Any) -> None:
        """Producer thread: a request the broker refused is answered at once."""
        if err is None or self._loop is None:
            return
        cid = (msg.key() or b"").decode()
        self._loop.call_soon_threadsafe(self.router.fail, cid, {
            "ok": False, "error": KAFKA_ERROR, "detail": f"cannot write the request: {err}"})

    def _poll_producer(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def _wait_for_topics(self) -> bool:
        """Until the broker answers and lists both topics, then assign every partition of the
        replies topic at its end; False if stopped first."""
        while not self._stop.is_set():
            try:
                md = self._consumer.list_topics(timeout=2)  # all topics: naming one can create it
            except KafkaException as ex:
                self.status = f"the broker does not answer: {ex.args[0]}"
                continue
            missing = [t for t in (self.requests_topic, self.replies_topic)
                       if t not in md.topics or md.topics[t].error is not None]
            if missing:
                self.status = f"waiting for topic {missing[0]!r}"
                self._stop.wait(0.5)
                continue
            try:
                # Fixed offsets, not OFFSET_END: a reply written after this line is read even if
                # it comes before the first fetch. (Tansu answers a little low, so a few old
                # replies are read again; they are other ids, skipped.)
                tps = []
                for p in sorted(md.topics[self.replies_topic].partitions):
                    tp = TopicPartition(self.replies_topic, p)
                    tps.append(TopicPartition(self.replies_topic, p,
                                              self._consumer.get_watermark_offsets(tp, 5)[1]))
                self._consumer.assign(tps)
            except KafkaException as ex:
                self.status = f"cannot read the end of {self.replies_topic!r}: {ex.args[0]}"
                self._stop.wait(0.5)
                continue
            return True
        return False

    def _read_replies(self) -> None:
        """Replies thread: wait for the topics, then hand this copy's replies to the loop."""
        if not self._wait_for_topics():
            return
        self.status = "ok"
        self.ready = True
        print(f"gateway {self.copy_id}: ready (stream {self.stream.name!r}, requests "
              f"{self.requests_topic!r}, replies {self.replies_topic!r})", file=sys.stderr,
              flush=True)
        prefix = self.router.prefix.encode()
        while not self._stop.is_set():
            # consume() waits its whole timeout unless the batch fills: block on poll() for the
            # first reply only, then take what else is buffered without waiting.
            first = self._consumer.poll(0.05)
            if first is None:
                continue
            batch = []
            for msg in [first, *self._consumer.consume(500, 0)]:
                if msg.error() is not None:
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        print(f"gateway {self.copy_id}: reading replies: {msg.error()}",
                              file=sys.stderr, flush=True)
                    continue
                key = msg.key()
                if key is not None and not key.startswith(prefix):
                    continue  # another copy's reply: skipped without decoding it
                reply = _reply_of(key, msg.value())
                if reply is not None and self.router.owns(reply[0]):
                    batch.append(reply)
            if batch and self._loop is not None:
                self._loop.call_soon_threadsafe(self._deliver_all, batch)

    def _deliver_all(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        for cid, reply in batch:
            self.router.deliver(cid, reply)


def _reply_of(key: bytes | None, value: bytes | None) -> tuple[str, dict[str, Any]] | None:
    """A reply record as (correlation id, reply); a value that is not a JSON object is a
    ``bad_reply`` for its key's id; None if no id can be read at all.

    >>> _reply_of(b"g-1", b'{"ok": true}')
    ('g-1', {'ok': True})
    >>> _reply_of(b"g-1", b'nope')[1]["error"]
    'bad_reply'
    >>> _reply_of(None, b'{"correlation_id": "g-2", "ok": true}')[0]
    'g-2'
    """
    try:
        doc = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        doc = None
    cid = key.decode("utf-8", "replace") if key is not None else None
    if isinstance(doc, dict):
        cid = str(doc.get("correlation_id", cid)) if cid is None else cid
        return (cid, doc) if cid is not None else None
    if cid is None:
        return None
    return cid, {"ok": False, "error": "bad_reply", "detail": "the reply is not a JSON object"}


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type=_JSON)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m connectors.gateway", description=(
        "The HTTP gateway of a stream: POST /v1/streams/NAME/predict answered over Kafka."))
    p.add_argument("--stream", required=True, help="the stream file (streams/*.toml)")
    p.add_argument("--port", type=int, required=True, help="the HTTP port")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (127.0.0.1)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gateway until SIGTERM or SIGINT; a bad setting or stream file is one line on
    stderr and exit status 2."""
    args = _parse_args(argv)
    try:
        settings = load_settings(dict(os.environ))
        gateway = Gateway(settings, load_stream(args.stream))
    except StreamError as ex:
        print(f"undertow: bad stream file: {ex}", file=sys.stderr)
        return 2
    except ConfigError as ex:
        print(f"undertow: bad setting: {ex}", file=sys.stderr)
        return 2
    print(f"gateway {gateway.copy_id}: listening on http://{args.host}:{args.port}",
          file=sys.stderr, flush=True)
    web.run_app(gateway.app(), host=args.host, port=args.port, print=None,
                access_log=None, handle_signals=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
