"""Requests through the real dataflow on the embedded broker (docs/requests.md): features equal to
what the entity state held (an oracle over the same events), the score of the current model (its
own checkpoint), many requests in flight matched by id, bad requests answered, nothing changed,
and a restart that loses no request."""

from __future__ import annotations

import os
import random
import time
import uuid
from pathlib import Path

import orjson
import pytest
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from connectors.checkpoint import ModelStore, load_checkpoint
from dataflows.stream import shipped
from harness.dataflow import start_dataflow
from harness.kafka import EmbeddedKafka, read_topic
from harness.workload import WorkloadConfig, generate
from undertow.features import SpecState

FRAUD = shipped("fraud")
ROOT = Path(__file__).resolve().parents[1]


class Client:
    """A plain Kafka client of the wire format: sends requests, collects replies by id."""

    def __init__(self, bootstrap: str, requests: str, replies: str) -> None:
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
        self.requests = requests
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 20})
        md = self.consumer.list_topics(replies, timeout=10)
        self.consumer.assign([TopicPartition(replies, p, OFFSET_END)
                              for p in md.topics[replies].partitions])
        self.replies: dict[str, list[dict]] = {}

    def send(self, cid: str, envelope: dict | bytes) -> None:
        value = envelope if isinstance(envelope, bytes) else orjson.dumps(envelope)
        self.producer.produce(self.requests, value, cid.encode())

    def flush(self) -> None:
        assert self.producer.flush(10) == 0

    def wait(self, cids: set[str], timeout: float = 60.0) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while not cids <= set(self.replies) and time.monotonic() < deadline:
            for m in self.consumer.consume(500, 0.1):
                if m.error() is None:
                    body = orjson.loads(m.value())
                    assert m.key().decode() == body["correlation_id"]
                    self.replies.setdefault(body["correlation_id"], []).append(body)
        missing = cids - set(self.replies)
        assert not missing, f"{len(missing)} requests unanswered, e.g. {sorted(missing)[:3]}"
        return {c: self.replies[c][-1] for c in cids}

    def close(self) -> None:
        self.consumer.close()


def ask(event: dict, **envelope) -> dict:
    return {"event": event, **envelope}


@pytest.fixture
def live(kafka: EmbeddedKafka, topics, tmp_path):
    """A fraud workload on 3 partitions, and the live dataflow over it answering requests,
    writing a checkpoint of its model after every batch that learned a label."""
    w = generate(WorkloadConfig(seed=11, n_events=2500, n_cards=60, n_merchants=20))
    t = topics("events", "labels", "predictions", "deadletter", "requests", "replies", "other",
               partitions=3)
    p = Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 5})
    for e in w.events:
        p.produce(t["events"], orjson.dumps(e), e["card_id"].encode())
    for x in w.labels:
        p.produce(t["labels"], orjson.dumps(x), x["card_id"].encode())
    assert p.flush(30) == 0
    env = {
        **os.environ, "UNDERTOW_STREAM": str(ROOT / "streams/fraud.toml"),
        "UNDERTOW_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "UNDERTOW_EVENTS_TOPIC": t["events"], "UNDERTOW_LABELS_TOPIC": t["labels"],
        "UNDERTOW_PREDICTIONS_TOPIC": t["predictions"],
        "UNDERTOW_DEADLETTER_TOPIC": t["deadletter"],
        "UNDERTOW_REQUESTS_TOPIC": t["requests"], "UNDERTOW_REPLIES_TOPIC": t["replies"],
        "UNDERTOW_MODEL_DIR": str(tmp_path / "models"),
        "UNDERTOW_CHECKPOINT_EVERY_LABELS": "1", "UNDERTOW_CHECKPOINT_KEEP": "2",
    }
    flow = start_dataflow("dataflows.stream:flow", env=env)
    client = Client(kafka.bootstrap_servers, t["requests"], t["replies"])
    try:
        yield w, t, env, flow, client, tmp_path
    finally:
        client.close()
        flow.stop()


def settled(client: Client, flow, timeout: float = 90.0) -> dict:
    """Ask ``describe`` until the labels learned stop changing: the dataflow has caught up."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        assert flow.running, flow.log_tail()
        cid = f"d-{uuid.uuid4().hex[:8]}"
        client.send(cid, {"kind": "describe"})
        client.flush()
        body = client.wait({cid})[cid]
        if last is not None and body["labels_learned"] == last["labels_learned"] > 0:
            return body
        last = body
        time.sleep(1.5)
    raise AssertionError(f"the dataflow did not settle: {last}")


def test_requests_are_scored_from_the_live_state_by_the_current_model(live, kafka):
    w, t, env, flow, client, tmp_path = live
    info = settled(client, flow)
    assert info["stream"] == "fraud" and info["model"] == "fraud"
    served = {orjson.loads(m.value())["event_id"] for m in read_topic(kafka.bootstrap_servers,
                                                                       t["predictions"])}
    assert served == {e["event_id"] for e in w.events}
    # The oracle: the documented feature rules over the same events, in time order.
    state = SpecState(FRAUD.features)
    for e in sorted(w.events, key=lambda e: (e["ts"], e["event_id"])):
        assert state.update(e, e["ts"]) is not None
    model, meta = load_checkpoint(ModelStore(env["UNDERTOW_MODEL_DIR"]).resolve("latest",
                                                                               "fraud"))
    assert meta["labels_learned"] == info["labels_learned"]
    rng = random.Random(3)
    end = max(e["ts"] for e in w.events)
    cards = sorted({e["card_id"] for e in w.events})
    asks = {}
    for i in range(200):  # all in flight at once, their replies matched by id
        base = rng.choice(w.events)
        event = dict(base, event_id=f"ask-{i}", card_id=rng.choice(cards + ["new-card"]),
                     amount=round(rng.uniform(0, 500), 2), ts=end + rng.randrange(1, 60_000))
        asks[f"r{i}"] = event
    for cid, event in asks.items():
        client.send(cid, ask(event))
    client.flush()
    replies = client.wait(set(asks))
    for cid, event in asks.items():
        body = replies[cid]
        want = state.peek(event, event["ts"])
        assert body["ok"] is True, body
        assert body["features"] == want, cid
        score = model.predict_proba_one(want)[True]
        assert (body["event_id"], body["key"], body["score"], body["predicted"]) == (
            event["event_id"], event["card_id"], score, score > 0.5)
        assert (body["model"], body["model_version"], body["labels_learned"]) == (
            "fraud", info["model_version"], info["labels_learned"])
    # Nothing changed: the same request again has the same answer, no request was served as an
    # event, and the model learned nothing from them.
    client.send("again", ask(asks["r0"]))
    client.flush()
    again = client.wait({"again"})["again"]
    assert {k: v for k, v in again.items() if k not in ("correlation_id", "processed_at")} == {
        k: v for k, v in replies["r0"].items() if k not in ("correlation_id", "processed_at")}
    after = settled(client, flow)
    assert after["labels_learned"] == info["labels_learned"]
    served = [orjson.loads(m.value())["event_id"]
              for m in read_topic(kafka.bootstrap_servers, t["predictions"])]
    assert len(served) == len(w.events) and not any(e.startswith("ask-") for e in served)


def test_bad_requests_are_answered_and_dead_lettered_and_reply_to_is_kept(live, kafka):
    w, t, env, flow, client, tmp_path = live
    other = Client(kafka.bootstrap_servers, t["requests"], t["other"])
    event = dict(w.events[0], event_id="x1")
    bad = {
        "b1": b"{not json",
        "b2": orjson.dumps(ask(dict(event, amount=-3))),
        "b3": orjson.dumps({"event": event, "reply_to": t["predictions"]}),
        "b4": orjson.dumps({"kind": "learn", "event": event}),
    }
    for cid, raw in bad.items():
        client.send(cid, raw)
    client.send("o1", ask(event, reply_to=t["other"]))
    client.flush()
    got = client.wait(set(bad))
    assert {c: (b["ok"], b["error"]) for c, b in got.items()} == {
        "b1": (False, "bad_json"), "b2": (False, "below_min"), "b3": (False, "bad_request"),
        "b4": (False, "bad_request")}
    assert got["b3"]["detail"] == (
        f"field 'reply_to' names the dataflow's own topic {t['predictions']!r}")
    mine = other.wait({"o1"})["o1"]
    other.close()
    assert mine["ok"] is True and mine["event_id"] == "x1" and "o1" not in client.replies
    deadline = time.monotonic() + 30
    while True:
        dead = [m for m in read_topic(kafka.bootstrap_servers, t["deadletter"])
                if dict(m.headers() or [])["undertow.error.step"].endswith(b"decode_requests")]
        if len(dead) >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted((m.key(), m.value(), dict(m.headers())["undertow.error.reason"])
                  for m in dead) == sorted(
        (cid.encode(), raw, reason.encode()) for (cid, raw), reason in zip(
            bad.items(), ("bad_json", "below_min", "bad_request", "bad_request"), strict=True))


def test_a_restart_loses_no_request(live, kafka):
    """Requests sent while the dataflow is down (killed with SIGKILL) are all answered once it
    is back; so are the ones it had already answered (at least once: the client drops those)."""
    w, t, env, flow, client, tmp_path = live
    event = dict(w.events[-1], event_id="during")
    client.send("before", ask(event))
    client.flush()
    client.wait({"before"})
    flow.kill()
    down = {f"down-{i}" for i in range(50)}
    for cid in down:
        client.send(cid, ask(dict(event, event_id=cid)))
    client.flush()
    time.sleep(1.0)
    assert not down & set(client.replies)
    again = start_dataflow("dataflows.stream:flow", env=env)
    try:
        got = client.wait(down, timeout=90)
        assert all(b["ok"] and b["event_id"] == cid for cid, b in got.items())
    finally:
        again.stop()
