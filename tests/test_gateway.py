"""The HTTP gateway (connectors/gateway.py), run as users run it, called with a real HTTP client.

Every gateway here is ``python -m connectors.gateway --stream streams/fraud.toml --port P``, a
child process on the embedded broker, called with aiohttp's client. The first tests need no
dataflow: the gateway's own answers (health, bad requests, refused records, the request record
it writes, timeouts and late replies, matching replies to callers); where a reply is needed, the
test itself reads the request from the requests topic and writes the reply, as the wire format
says (docs/requests.md). The last tests run the real dataflow behind it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from connectors.gateway import ReplyRouter, parse_body
from harness.kafka import EmbeddedKafka, free_port, read_topic
from harness.process import ChildProcess

ROOT = Path(__file__).resolve().parents[1]
FRAUD = "streams/fraud.toml"
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def event(n: int, **over: Any) -> dict[str, Any]:
    """An event of the fraud stream."""
    return {"event_id": f"e{n}", "card_id": "c1", "merchant_id": "m1", "amount": 10.0 + n,
            "channel": "pos", "ts": T0 + 1000 * n, **over}


def own_env(**extra: str) -> dict[str, str]:
    """Our environment without any ``UNDERTOW_`` variable of the caller's, plus ``extra``."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("UNDERTOW_")}, **extra}


# -- HTTP, with aiohttp's client -------------------------------------------------------------------

async def acall(session: aiohttp.ClientSession, method: str, url: str,
                body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else orjson.dumps(body))
    async with session.request(method, url, data=data,
                               headers={"Content-Type": "application/json"}) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


def call(method: str, url: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    """One HTTP request; (status, JSON body, or text if it is not JSON)."""
    async def go() -> tuple[int, Any]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
            return await acall(s, method, url, body, raw)
    return asyncio.run(go())


def metric_value(base: str, name: str, **labels: str) -> float:
    """One sample of the gateway's /metrics (0 if absent)."""
    status, text = call("GET", f"{base}/metrics")
    assert status == 200
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") or line.startswith(f"{name} "):
            head, _, value = line.rpartition(" ")
            got = head[len(name):].strip("{}")
            if ",".join(sorted(got.split(","))) == want:
                return float(value)
    return 0.0


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


# -- the gateway process ---------------------------------------------------------------------------

class Gateway:
    """One ``python -m connectors.gateway`` child and its base URL."""

    def __init__(self, kafka: EmbeddedKafka, requests: str, replies: str, **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.child = ChildProcess(
            [sys.executable, "-m", "connectors.gateway", "--stream", FRAUD,
             "--port", str(self.port)],
            env=own_env(UNDERTOW_KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
                        UNDERTOW_REQUESTS_TOPIC=requests, UNDERTOW_REPLIES_TOPIC=replies, **env),
            cwd=ROOT, name="gateway", stop_timeout=5)

    def start(self, *, ready: bool = True) -> Gateway:
        self.child.start()
        self.child.wait_ready(self._listening, timeout=30, what="listening")
        if ready:
            self.child.wait_ready(lambda: self._health()[0] == 200, timeout=30, what="healthy")
        return self

    def _health(self) -> tuple[int, Any]:
        try:
            return call("GET", f"{self.base}/healthz")
        except aiohttp.ClientError:
            return 0, None

    def _listening(self) -> bool:
        return self._health()[0] != 0

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(self.base, name, **labels)


@pytest.fixture
def gateways() -> Iterator[list[Gateway]]:
    """Gateways a test starts; each is stopped by its PID at the end."""
    started: list[Gateway] = []
    yield started
    for g in started:
        g.child.stop()


def read_requests(kafka: EmbeddedKafka, topic: str) -> list[tuple[bytes, dict[str, Any]]]:
    return [(m.key(), orjson.loads(m.value())) for m in read_topic(kafka.bootstrap_servers, topic)]


class Responder:
    """Stands in for the dataflow's reply step: reads every request and replies on its
    ``reply_to`` with the record's id and fields echoed, shuffling each batch so that replies
    come back in another order than their requests."""

    def __init__(self, kafka: EmbeddedKafka, requests: str, partitions: int) -> None:
        self._consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers,
                                   "group.id": "unused", "fetch.wait.max.ms": 10})
        self._consumer.assign([TopicPartition(requests, p, 0) for p in range(partitions)])
        self._producer = Producer({"bootstrap.servers": kafka.bootstrap_servers,
                                   "linger.ms": 0})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.seen = 0

    def __enter__(self) -> Responder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()

    def _run(self) -> None:
        rng = random.Random(7)
        while not self._stop.is_set():
            msgs = [m for m in self._consumer.consume(100, 0.05) if m.error() is None]
            rng.shuffle(msgs)
            for m in msgs:
                req = orjson.loads(m.value())
                self.seen += 1
                reply = {"correlation_id": req["correlation_id"], "ok": True, "stream": "fraud",
                         "event_id": req["event"]["event_id"], "echo": req["event"]}
                self._producer.produce(req["reply_to"], orjson.dumps(reply), m.key())
            self._producer.flush(5)


# -- the pure parts --------------------------------------------------------------------------------

def test_router_owns_only_its_own_prefix_and_counts_a_late_reply_once():
    async def go() -> None:
        router = ReplyRouter("gw1", late_memory=2)
        assert router.owns("gw1-5") and not router.owns("gw10-5") and not router.owns("gw1")
        a, fa = router.open()
        b, _ = router.open()
        c, _ = router.open()
        d, _ = router.open()
        assert (a, b, c, d) == ("gw1-1", "gw1-2", "gw1-3", "gw1-4") and router.pending == 4
        assert router.deliver(a, {"ok": True, "n": 1}) == "answered"
        assert await fa == {"ok": True, "n": 1}
        assert router.deliver(a, {"ok": True, "n": 2}) == "unknown"  # a duplicate: dropped
        for cid in (b, c, d):
            router.give_up(cid)
        assert router.pending == 0
        # Only the two newest given-up ids are remembered (the memory has an end).
        assert [router.deliver(x, {}) for x in (b, c, d, d)] == ["unknown", "late", "late",
                                                                 "unknown"]
        assert router.late == 2
    asyncio.run(go())


def test_parse_body_refuses_what_is_not_an_object_or_a_list_of_objects():
    assert parse_body(b"[]", 3) == ([], True)
    assert parse_body(b'"x"', 3) == "the body is not a JSON object or a list of objects"
    assert parse_body(b"", 3) == "the body is not JSON"
    assert parse_body(b'[{}, {}, {}]', 3) == ([{}, {}, {}], True)


# -- start-up --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "env", "line"), [
    (["--stream", "streams/nope.toml"], {"UNDERTOW_REQUESTS_TOPIC": "r"},
     "undertow: bad stream file: streams/nope.toml: no such stream file"),
    (["--stream", FRAUD], {},
     "undertow: bad setting: UNDERTOW_REQUESTS_TOPIC: the gateway needs the requests topic "
     "(empty, and the stream file has no [requests] topic)"),
    (["--stream", FRAUD], {"UNDERTOW_REQUESTS_TOPIC": "r", "UNDERTOW_GATEWAY_TIMEOUT_MS": "0"},
     "undertow: bad setting: UNDERTOW_GATEWAY_TIMEOUT_MS: Input should be greater than 0 "
     "(got '0')"),
])
def test_a_bad_setting_or_stream_file_is_one_line_and_exit_2(args, env, line):
    child = ChildProcess([sys.executable, "-m", "connectors.gateway", *args, "--port", "1"],
                         env=own_env(**env), cwd=ROOT, name="gateway").start()
    try:
        assert child.wait(30) == 2
        assert child.log_tail().splitlines() == [line]
    finally:
        child.stop()


def test_healthz_is_503_until_both_topics_exist(kafka: EmbeddedKafka, gateways):
    suffix = os.urandom(4).hex()
    requests, replies = f"requests-hz-{suffix}", f"replies-hz-{suffix}"
    g = Gateway(kafka, requests, replies)
    gateways.append(g.start(ready=False))
    wait_until(lambda: g._health()[1] == {"status": f"waiting for topic {requests!r}"}, 10,
               "waiting for the requests topic")
    assert call("POST", f"{g.base}/v1/streams/fraud/predict", event(1)) == (
        503, {"error": "starting", "detail": f"waiting for topic {requests!r}"})
    kafka.create_topics([requests])
    wait_until(lambda: g._health() == (503, {"status": f"waiting for topic {replies!r}"}), 10,
               "waiting for the replies topic")
    kafka.create_topics([replies], partitions=2)
    wait_until(lambda: g._health() == (200, {"status": "ok"}), 10, "healthy")


def test_the_stream_files_requests_topics_are_used_when_the_variables_are_unset(
        kafka: EmbeddedKafka, gateways, tmp_path: Path):
    suffix = os.urandom(4).hex()
    requests, replies = f"requests-file-{suffix}", f"replies-file-{suffix}"
    stream = tmp_path / "fraud.toml"
    stream.write_text((ROOT / FRAUD).read_text()
                      + f'\n[requests]\ntopic = "{requests}"\nreplies = "{replies}"\n')
    g = Gateway(kafka, "", "")
    g.child.argv[g.child.argv.index(FRAUD)] = str(stream)
    gateways.append(g.start(ready=False))
    wait_until(lambda: g._health() == (503, {"status": f"waiting for topic {requests!r}"}), 10,
               "waiting for the stream file's requests topic")
    kafka.create_topics([requests])
    wait_until(lambda: g._health() == (503, {"status": f"waiting for topic {replies!r}"}), 10,
               "waiting for the stream file's replies topic")


# -- the gateway's own answers ---------------------------------------------------------------------

def test_bad_requests_and_refused_records_never_reach_kafka(kafka: EmbeddedKafka, topics,
                                                            gateways):
    t = topics("requests", "replies")
    g = Gateway(kafka, t["requests"], t["replies"], UNDERTOW_GATEWAY_MAX_BATCH="2")
    gateways.append(g.start())
    url = f"{g.base}/v1/streams/fraud/predict"
    assert call("POST", f"{g.base}/v1/streams/clicks/predict", event(1)) == (404, {
        "error": "unknown_stream", "detail": "this gateway serves stream 'fraud', not 'clicks'"})
    assert call("GET", f"{g.base}/v1/streams/clicks")[0] == 404
    bad = {
        b"{nope": "the body is not JSON",
        b"42": "the body is not a JSON object or a list of objects",
        b'[{"a": 1}, 2]': "item 1 of the list is not a JSON object",
        b"[{}, {}, {}]": "a list of 3 records is longer than UNDERTOW_GATEWAY_MAX_BATCH (2)",
    }
    for raw, detail in bad.items():
        assert call("POST", url, raw=raw) == (400, {"error": "bad_request", "detail": detail})
    assert call("POST", f"{url}?timeout_ms=soon", event(1)) == (400, {
        "error": "bad_request", "detail": "timeout_ms must be an integer from 1 to 600000, "
                                          "got 'soon'"})
    record = event(1)
    del record["amount"]
    assert call("POST", url, record) == (422, {"error": "missing_field",
                                               "detail": "field 'amount' is missing"})
    assert call("POST", url, event(2, amount=-1)) == (422, {
        "error": "below_min", "detail": "field 'amount' must be >= 0, got -1"})
    assert call("POST", url, [event(3, channel="fax"), record]) == (200, [
        {"error": "unknown_category",
         "detail": "field 'channel' has unknown value 'fax'"},
        {"error": "missing_field", "detail": "field 'amount' is missing"}])
    assert read_requests(kafka, t["requests"]) == []
    assert g.metric("undertow_gateway_requests_total", stream="fraud", outcome="bad_request") == 7
    assert g.metric("undertow_gateway_requests_total", stream="fraud", outcome="error") == 2
    assert g.metric("undertow_gateway_requests_total", stream="fraud", outcome="ok") == 1
    assert g.metric("undertow_gateway_request_seconds_count", stream="fraud") == 0  # no trip


def test_the_request_record_a_timeout_and_its_late_reply(kafka: EmbeddedKafka, topics,
                                                         gateways):
    """No dataflow: the request is written as docs/requests.md says, the caller gets 504 at its
    deadline, and the reply the test then writes is dropped and counted as late."""
    t = topics("requests", "replies", partitions=2)
    g = Gateway(kafka, t["requests"], t["replies"])
    gateways.append(g.start())
    for name in ("undertow_gateway_late_replies_total", "undertow_gateway_in_flight"):
        assert f"{name}{{stream=\"fraud\"}} 0.0" in call("GET", f"{g.base}/metrics")[1]
    before = int(time.time() * 1000)  # the gateway counts whole milliseconds
    started = time.monotonic()
    status, body = call("POST", f"{g.base}/v1/streams/fraud/predict?timeout_ms=300", event(1))
    waited = time.monotonic() - started
    assert (status, body) == (504, {"error": "timeout"})
    assert 0.3 <= waited < 2.0
    [(key, req)] = read_requests(kafka, t["requests"])
    cid = key.decode()
    assert req["correlation_id"] == cid and cid.startswith("gw") and cid.endswith("-1")
    assert (req["kind"], req["event"], req["reply_to"]) == ("predict", event(1), t["replies"])
    assert before + 300 <= req["deadline_ms"] <= time.time() * 1000 + 300
    assert g.metric("undertow_gateway_in_flight", stream="fraud") == 0
    p = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    late = {"correlation_id": cid, "ok": True, "event_id": "e1", "score": 0.5}
    other = {**late, "correlation_id": "gwsomeoneelse-1"}
    p.produce(t["replies"], orjson.dumps(other), b"gwsomeoneelse-1")
    p.produce(t["replies"], orjson.dumps(late), key)
    p.produce(t["replies"], orjson.dumps(late), key)  # a duplicate: not late twice
    assert p.flush(10) == 0
    wait_until(lambda: g.metric("undertow_gateway_late_replies_total", stream="fraud") == 1, 10,
               "the late reply counted")
    time.sleep(0.3)
    assert g.metric("undertow_gateway_late_replies_total", stream="fraud") == 1
    assert g.metric("undertow_gateway_requests_total", stream="fraud", outcome="timeout") == 1
    assert g.metric("undertow_gateway_request_seconds_count", stream="fraud") == 1


def test_two_copies_on_one_replies_topic_each_get_their_own_answers(kafka: EmbeddedKafka,
                                                                    topics, gateways):
    t = topics("requests", "replies", partitions=2)
    # Matching is tested here, not speed: a shared, loaded machine gets 10 s, not 2.
    gws = [Gateway(kafka, t["requests"], t["replies"], UNDERTOW_GATEWAY_TIMEOUT_MS="10000")
           for _ in range(2)]
    for g in gws:
        gateways.append(g.start())

    async def go() -> list[list[tuple[int, Any]]]:
        async with aiohttp.ClientSession() as s:
            singles = [acall(s, "POST", f"{gws[i % 2].base}/v1/streams/fraud/predict",
                             event(i, card_id=f"c{i % 5}")) for i in range(40)]
            lists = [acall(s, "POST", f"{g.base}/v1/streams/fraud/predict",
                           [event(100 * (k + 1) + j) for j in range(5)])
                     for k, g in enumerate(gws)]
            return [await asyncio.gather(*singles), await asyncio.gather(*lists)]

    with Responder(kafka, t["requests"], 2) as responder:
        singles, lists = asyncio.run(go())
    for i, (status, body) in enumerate(singles):
        assert status == 200
        assert body == {"stream": "fraud", "event_id": f"e{i}",
                        "echo": event(i, card_id=f"c{i % 5}")}
    for k, (status, body) in enumerate(lists):
        assert status == 200
        assert [b["event_id"] for b in body] == [f"e{100 * (k + 1) + j}" for j in range(5)]
    assert responder.seen == 50
    # Each copy saw the other's 25 replies and dropped them: none is late, none in flight.
    for g in gws:
        assert g.metric("undertow_gateway_late_replies_total", stream="fraud") == 0
        assert g.metric("undertow_gateway_in_flight", stream="fraud") == 0
        assert g.metric("undertow_gateway_requests_total", stream="fraud", outcome="ok") == 21


# -- behind it, the real dataflow ------------------------------------------------------------------

#: The events loaded before any request: card c1 at two merchants, and another card.
LOADED = [event(0), event(1, amount=250.0, channel="online"), event(2, merchant_id="m2"),
          event(3, card_id="c2"), event(4, amount=0.5, channel="atm")]


class Live:
    """The live fraud dataflow and one gateway in front of it, on topics of their own."""

    def __init__(self, kafka: EmbeddedKafka, names: dict[str, str], dataflow: ChildProcess,
                 gateway: Gateway) -> None:
        self.kafka, self.names, self.dataflow, self.gateway = kafka, names, dataflow, gateway
        self.url = f"{gateway.base}/v1/streams/fraud/predict"


@pytest.fixture(scope="module")
def live(kafka: EmbeddedKafka) -> Iterator[Live]:
    from harness.dataflow import start_dataflow
    from harness.kafka import end_offsets

    suffix = os.urandom(4).hex()
    names = {n: f"{n}-gw-{suffix}" for n in ("events", "labels", "predictions", "deadletter",
                                             "requests", "replies")}
    kafka.create_topics({t: 1 if n in ("predictions", "deadletter") else 2
                         for n, t in names.items()})
    env = own_env(UNDERTOW_KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
                  UNDERTOW_STREAM=FRAUD,
                  **{f"UNDERTOW_{n.upper()}_TOPIC": t for n, t in names.items()})
    dataflow = start_dataflow("dataflows.stream:flow", env=env)
    gateway = Gateway(kafka, names["requests"], names["replies"])
    try:
        p = Producer({"bootstrap.servers": kafka.bootstrap_servers})
        for e in LOADED:
            p.produce(names["events"], orjson.dumps(e), e["card_id"].encode())
        assert p.flush(10) == 0
        dataflow.wait_ready(
            lambda: sum(end_offsets(kafka.bootstrap_servers, names["predictions"]).values())
            == len(LOADED), timeout=60, what="the loaded events' predictions")
        gateway.start()
        yield Live(kafka, names, dataflow, gateway)
    finally:
        gateway.child.stop()
        dataflow.stop()


def oracle_features(loaded: list[dict[str, Any]], request: dict[str, Any]) -> dict[str, float]:
    """The request's features recomputed from the records alone: the stream's feature state
    over the loaded events, then the request (what an event with its fields would be served)."""
    from undertow.features.state import SpecState
    from undertow.stream import load_stream

    state = SpecState(load_stream(ROOT / FRAUD).features)
    for e in loaded:
        assert state.update(e, e["ts"]) is not None
    feats = state.update(request, request["ts"])
    assert feats is not None
    return feats


def test_one_record_is_answered_with_the_live_entity_features(live: Live):
    request = event(5, amount=42.0, channel="online")
    status, body = call("POST", live.url, request)
    assert status == 200, body
    assert sorted(body) == ["event_id", "event_ts", "features", "key", "labels_learned",
                            "model", "model_version", "predicted", "processed_at", "score",
                            "stream"]
    assert (body["stream"], body["event_id"], body["key"], body["event_ts"]) == (
        "fraud", "e5", "c1", request["ts"])
    assert (body["model"], body["model_version"], body["labels_learned"]) == ("fraud", 1, 0)
    # A model that has learned nothing scores 0.5 (the cold-start rule), not a positive.
    assert (body["score"], body["predicted"]) == (0.5, False)
    assert body["features"] == oracle_features(LOADED, request)
    # The request added nothing to the state: asked again, the same features.
    assert call("POST", live.url, request)[1]["features"] == body["features"]


def test_a_list_is_answered_in_order_with_refused_items_in_place(live: Live):
    records = [event(6, card_id="c2"), event(7, amount=-3.0), event(8, amount=9.0)]
    status, body = call("POST", live.url, records)
    assert status == 200, body
    assert [b.get("event_id") for b in body] == ["e6", None, "e8"]
    assert body[1] == {"error": "below_min", "detail": "field 'amount' must be >= 0, got -3.0"}
    assert body[0]["features"] == oracle_features(LOADED, records[0])
    assert body[2]["features"] == oracle_features(LOADED, records[2])


def test_the_stream_resource_gives_the_model_and_its_version(live: Live):
    status, body = call("GET", f"{live.gateway.base}/v1/streams/fraud")
    assert status == 200, body
    assert (body["stream"], body["model"], body["model_version"], body["labels_learned"]) == (
        "fraud", "fraud", 1, 0)
    assert body["models"] == [{"name": "fraud", "version": 1, "labels_learned": 0,
                               "champion": True}]
    from undertow.features.state import spec_names
    from undertow.stream import load_stream
    assert body["features"] == list(spec_names(load_stream(ROOT / FRAUD).features))


def test_two_copies_in_front_of_the_dataflow_each_get_their_own(live: Live, gateways):
    second = Gateway(live.kafka, live.names["requests"], live.names["replies"],
                     UNDERTOW_GATEWAY_TIMEOUT_MS="10000")
    gateways.append(second.start())
    urls = [live.url, f"{second.base}/v1/streams/fraud/predict"]

    async def go() -> list[tuple[int, Any]]:
        async with aiohttp.ClientSession() as s:
            return await asyncio.gather(*(
                acall(s, "POST", urls[i % 2], event(20 + i, card_id=f"c{i % 3}"))
                for i in range(12)))

    for i, (status, body) in enumerate(asyncio.run(go())):
        assert status == 200, body
        assert (body["event_id"], body["key"]) == (f"e{20 + i}", f"c{i % 3}")
    assert second.metric("undertow_gateway_requests_total", stream="fraud", outcome="ok") == 6


def test_a_stopped_dataflow_is_a_timeout_and_its_late_answer_is_counted(live: Live):
    import signal

    g = live.gateway
    late_before = g.metric("undertow_gateway_late_replies_total", stream="fraud")
    os.kill(live.dataflow.pid, signal.SIGSTOP)
    try:
        status, body = call("POST", f"{live.url}?timeout_ms=300", event(9))
    finally:
        os.kill(live.dataflow.pid, signal.SIGCONT)
    assert (status, body) == (504, {"error": "timeout"})
    wait_until(lambda: g.metric("undertow_gateway_late_replies_total", stream="fraud")
               == late_before + 1, 20, "the late reply counted")
    # The dataflow answered the stale request 'expired' instead of scoring it.
    replies = [orjson.loads(m.value())
               for m in read_topic(live.kafka.bootstrap_servers, live.names["replies"])]
    [stale] = [r for r in replies if r.get("event_id") == "e9" or r.get("error") == "expired"]
    assert (stale["ok"], stale["error"]) == (False, "expired")
    assert call("POST", live.url, event(10))[0] == 200  # and it serves again


def test_the_requests_benchmark_runs_with_tiny_numbers(tmp_path: Path):
    """benchmarks/requests.py kept working: every request of every row answered."""
    import subprocess

    out = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, "benchmarks/requests.py", "--warm-events", "50",
                        "--seconds", "0.5", "--max-seconds", "0.5", "--low-rate", "10",
                        "--concurrency", "4", "--json", str(out)],
                       cwd=ROOT, env=own_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [(x["path"], x["mode"]) for x in rows] == [
        ("kafka", "max (4 in flight)"), ("http", "max (4 in flight)"),
        ("kafka", "steady"), ("http", "steady"), ("kafka", "steady"), ("http", "steady")]
    for x in rows:
        assert x["failed"] == 0 and x["answered"] == x["sent"] > 0, x
    assert rows[2]["offered_per_s"] == rows[3]["offered_per_s"] == 10
    assert rows[4]["offered_per_s"] == max(
        1.0, min(rows[0]["answered_per_s"], rows[1]["answered_per_s"]) / 2)
