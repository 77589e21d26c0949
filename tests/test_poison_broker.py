"""A 10,000-record mix of valid and poison records through the real dataflow on the broker.

The fraud dataflow runs as users run it (``python -m bytewax.run dataflows.fraud:flow``, two
workers, bounded) over events and labels topics of 3 partitions holding valid records mixed with
every kind of poison the probes found: malformed JSON of every kind, records over the size
limit, lone surrogates, deep nesting, unusual unicode, duplicates, far-future and late times,
labels that are malformed, unknown, duplicated, conflicting or far ahead. It must not exit with
an error, and every record must come out accounted for, per topic: an event as a prediction or a
dead letter, a label as learned, held or a dead letter; every dead letter with its record's own
raw bytes, and the decode steps' reasons exactly those of the poison written.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
from confluent_kafka import Producer

from harness.kafka import EmbeddedKafka, read_topic
from harness.workload import WorkloadConfig, generate, malformed_records

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 100_000  # UNDERTOW_MAX_RECORD_BYTES of the run: bigger records are too_large


def poison_events(valid: list[dict]) -> list[tuple[bytes | None, bytes, str | None]]:
    """(key, value, the decode step's reason or None when it passes decode)."""
    base = valid[len(valid) // 2]
    out: list[tuple[bytes | None, bytes, str | None]] = [
        (None, raw, reason) for raw, reason in malformed_records(31, 330)]
    big = orjson.dumps(dict(base, event_id="big", merchant_id="m" * 300_000))
    out += [(b"c1", big, "too_large")] * 3
    out += [(b"c1", b"", "bad_json"), (None, b"\x00\xff\xfe", "bad_json")]
    surrogate = orjson.dumps(dict(base, event_id="sur")).replace(
        base["card_id"].encode(), b"\\ud800")
    out.append((b"sur", surrogate, "bad_json"))
    deep = b'{"event_id":"deep","x":' + b"[" * 3000 + b"]" * 3000 + b"}"
    out.append((None, deep, "bad_json"))
    # Valid at decode; what becomes of them is the model step's or the features' business.
    for i, odd in enumerate(["e\u0301", "\U0001f0a1" * 3, "\u202eabc", "a\u0000b", "x" * 5000]):
        out.append((None, orjson.dumps(dict(base, event_id=f"uni{i}", card_id=odd)), None))
    out.append((None, orjson.dumps(dict(valid[10], amount=1.0)), None))  # a duplicate id
    out.append((None, orjson.dumps(dict(base, event_id="far", ts=4_070_908_800_000)), None))
    out.append((None, orjson.dumps(dict(base, event_id="late", ts=base["ts"] - 7_200_000)),
                None))
    return out


def poison_labels(valid: list[dict]) -> list[tuple[bytes | None, bytes, str | None]]:
    x = valid[5]
    out: list[tuple[bytes | None, bytes, str | None]] = [
        (b"c1", b"{oops", "bad_json"), (b"c1", b"[1, 2]", "not_object"),
        (b"c1", orjson.dumps({"event_id": "e1"}), "missing_field"),
        (b"c1", orjson.dumps(dict(x, is_fraud="yes")), "wrong_type"),
        (b"c1", orjson.dumps(dict(x, event_id="l" * MAX_BYTES)), "too_large"),
    ] * 20
    out += [(None, orjson.dumps(dict(x, event_id=f"nobody-{i}")), None) for i in range(20)]
    out.append((None, orjson.dumps(x), None))  # a duplicate label
    out.append((None, orjson.dumps(dict(valid[6], is_fraud=not valid[6]["is_fraud"])), None))
    out.append((None, orjson.dumps(dict(valid[7], ts=4_070_908_800_000)), None))  # 2099
    return out


def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                  "message.max.bytes": 2_000_000})
    errors: list = []
    for i, (key, value) in enumerate(records):
        p.produce(topic, value, key, partition=i % 3,
                  on_delivery=lambda err, _m: errors.append(err) if err else None)
        p.poll(0)
    assert p.flush(30) == 0 and not errors, errors[:3]


def test_ten_thousand_records_of_poison_and_valid_all_accounted_for(kafka: EmbeddedKafka,
                                                                     topics):
    w = generate(WorkloadConfig(seed=23, n_events=5100, n_cards=400, label_coverage=0.9))
    rng = random.Random(5)
    bad_events, bad_labels = poison_events(w.events), poison_labels(w.labels)
    events = [(e["card_id"].encode(), orjson.dumps(e), None) for e in w.events]
    labels = [(x["card_id"].encode(), orjson.dumps(x), None) for x in w.labels]
    for bad, into in ((bad_events, events), (bad_labels, labels)):
        for rec in bad:  # spread through the stream, in its time order otherwise
            into.insert(rng.randrange(len(into) + 1), rec)
    assert len(events) + len(labels) >= 10_000
    t = topics("events", "labels", partitions=3)
    t.update(topics("predictions", "deadletter", partitions=1))
    produce(kafka.bootstrap_servers, t["events"], [(k, v) for k, v, _ in events])
    produce(kafka.bootstrap_servers, t["labels"], [(k, v) for k, v, _ in labels])

    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNDERTOW_", "BYTEWAX_"))}
    env.update({
        "UNDERTOW_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "UNDERTOW_EVENTS_TOPIC": t["events"], "UNDERTOW_LABELS_TOPIC": t["labels"],
        "UNDERTOW_PREDICTIONS_TOPIC": t["predictions"],
        "UNDERTOW_DEADLETTER_TOPIC": t["deadletter"],
        "UNDERTOW_TAIL": "false", "UNDERTOW_MAX_RECORD_BYTES": str(MAX_BYTES),
        "UNDERTOW_KAFKA_OPT_MESSAGE_MAX_BYTES": "2000000",
    })
    r = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.fraud:flow", "-w", "2"],
                       cwd=ROOT, env=env, capture_output=True, timeout=300)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]

    preds = [orjson.loads(m.value()) for m in read_topic(kafka.bootstrap_servers,
                                                         t["predictions"])]
    dead = read_topic(kafka.bootstrap_servers, t["deadletter"])
    meta = [dict(m.headers()) for m in dead]
    by_topic = Counter(h["undertow.error.topic"].decode() for h in meta)
    # Events: each one a prediction or a dead letter (a duplicate id is both: its first copy was
    # served, the second is dead-lettered), nothing else, nothing twice.
    assert len(preds) == len({p["event_id"] for p in preds})
    assert len(preds) + by_topic[t["events"]] == len(events)
    # Labels: learned, held, or dead letters, as the run's own summary counts them.
    m = re.search(r"labels learned +(\d+) by fraud \(champion\); held until their time (\d+); "
                  r"waiting for their event (\d+)", err)
    assert m, err[-3000:]
    learned, held, waiting = map(int, m.groups())
    assert learned + held + waiting + by_topic[t["labels"]] == len(labels)
    assert learned > 3500, (learned, held, waiting, by_topic, len(preds))
    # Every dead letter has its record's own bytes, and the decode steps found exactly the
    # poison written, reason for reason.
    written = {v for _, v, _ in events} | {v for _, v, _ in labels}
    assert all(m.value() in written or m.value() == b"" or m.value() is None for m in dead)
    for step, bad in (("decode_events", bad_events), ("decode_labels", bad_labels)):
        got = Counter(h["undertow.error.reason"].decode() for h in meta
                      if h["undertow.error.step"].decode().endswith(step))
        assert got == Counter(reason for _, _, reason in bad if reason), (step, got)
    later = Counter(h["undertow.error.reason"].decode() for h in meta
                    if not h["undertow.error.step"].decode().endswith(("decode_events",
                                                                       "decode_labels")))
    assert later["duplicate_event"] == 1 and later["future_event"] == 2, later
    assert later["unknown_event"] >= 20 and later["duplicate_label"] >= 1, later
    assert later["conflicting_label"] >= 1, later
