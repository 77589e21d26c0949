"""Catch-up like a replay (issue 13, item 5): a live run over a backlog learns as the backtest does.

After downtime both topics hold a backlog. The live sources read the events no further ahead of
the labels (and of each other) than ``UNDERTOW_MAX_SOURCE_LAG_S`` of event time
(:mod:`connectors.alignment`), so each event is served by a model that has learned the labels
the backtest (:mod:`dataflows.backtest`, the merged, time-ordered replay of the same records)
had learned by then, give or take the labels of the lag.

The oracle: ``L(t)``, the labels whose own time and whose event's time are both ``<= t``. The
backtest learns exactly ``L(E)`` before an event at ``E`` (checked); a live run over the same
records, loaded beforehand on 3 partitions each, learns between ``L(E - lag)`` and
``L(E + lag)`` before each event, and its ROC AUC over the same predictions is within 0.01 of
the backtest's. With the setting at 0 (alignment off) the same measure fails, by far: the fix
is what fixes it.
"""

from __future__ import annotations

import bisect
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from bytewax.testing import cluster_main, run_main
from confluent_kafka import OFFSET_BEGINNING

from connectors.alignment import (
    EVENTS,
    LABELS,
    NOTHING,
    SourceAlignment,
    record_time,
)
from connectors.files import ListSink
from connectors.kafka import KafkaRecordSource
from connectors.replay import EVENT, LABEL, FileInput, ReplaySource
from connectors.settings import load_settings
from connectors.topics import load_file
from dataflows.backtest import run_backtest
from dataflows.stream import Outputs, build_flow, shipped
from undertow.report import roc_auc

ROOT = Path(__file__).resolve().parents[1]
N_EVENTS = 2000
DEFAULT_LAG_MS = 1000  # UNDERTOW_MAX_SOURCE_LAG_S's default, 1 s


# -- the alignment itself (pure) -------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_events_wait_for_the_slowest_active_labels_partition():
    a = SourceAlignment(max_lag_ms=50, clock=FakeClock())
    l0, l1 = a.join(LABELS, "l0"), a.join(LABELS, "l1")
    ev = a.join(EVENTS, "e0")
    assert ev.limit() == NOTHING  # no labels partition has a position yet
    l0.report(1_000, at_end=False)
    assert ev.limit() == NOTHING  # l1 still has none
    l1.report(400, at_end=False)
    assert ev.limit() == 450  # the slowest labels partition, plus the lag
    l1.report(None, at_end=True)  # l1 is caught up: it holds nothing back (its time is kept)
    assert ev.limit() == 1_050
    l1.report(None, at_end=False)  # new records on l1: back at its last time
    assert ev.limit() == 450
    l1.leave()
    l0.report(2_000, at_end=True)
    assert ev.limit() is None  # every labels partition at its end: no limit


def test_events_partitions_are_aligned_with_each_other_but_not_with_themselves():
    a = SourceAlignment(max_lag_ms=10, clock=FakeClock())
    e0, e1 = a.join(EVENTS, "e0"), a.join(EVENTS, "e1")
    assert e0.limit() == NOTHING and e1.limit() == NOTHING
    e0.report(100, at_end=False)  # e0's next record is at 100
    e1.report(500, at_end=False)
    assert e0.limit() == 510  # only e1 holds e0 back: e0 is the slowest, it may go
    assert e1.limit() == 110  # e1 waits for e0
    e0.report(None, at_end=True)
    assert e1.limit() is None
    # Labels are never limited, whatever the events do: they are not asked.
    labels = a.join(LABELS, "l0")
    assert e1.limit() == NOTHING
    labels.report(300, at_end=False)
    assert e1.limit() == 310


def test_at_start_up_events_wait_a_bounded_time_for_the_listed_labels_partitions():
    clock = FakeClock()
    a = SourceAlignment(max_lag_ms=0, start_wait_s=3.0, clock=clock)
    a.expect(LABELS, 2)  # Kafka lists two labels partitions
    ev = a.join(EVENTS, "e0")
    ev.report(5, at_end=False)
    l0 = a.join(LABELS, "l0")
    l0.report(None, at_end=True)
    assert ev.limit() == NOTHING  # the other labels partition may still be built here
    clock.now = 2.9
    assert ev.limit() == NOTHING
    clock.now = 3.0  # another process reads it (-i/-a): go on with the partitions built here
    assert ev.limit() is None
    a.join(LABELS, "l1")  # it comes after all: it holds the events until it has a position
    assert ev.limit() == NOTHING


def test_a_negative_lag_or_an_unknown_side_is_refused():
    with pytest.raises(ValueError, match="max_lag_ms must be >= 0"):
        SourceAlignment(-1)
    with pytest.raises(ValueError, match="side must be"):
        SourceAlignment(1).join("requests", "r0")


def test_record_time_reads_the_stream_files_time_field_or_nothing():
    assert record_time(b'{"at": 17, "ts": 3}', "at") == 17
    assert record_time(b'{"ts": 1.5}', "ts") is None  # not an integer epoch-ms time
    assert record_time(b'{"x": 1}', "ts") is None
    assert record_time(b"\xff\xfe", "ts") is None
    assert record_time(b"", "ts") is None


def test_the_setting_defaults_on_and_zero_is_off():
    assert load_settings({}).max_source_lag_s == DEFAULT_LAG_MS / 1000
    assert load_settings({"UNDERTOW_MAX_SOURCE_LAG_S": "0"}).max_source_lag_s == 0
    with pytest.raises(Exception, match="UNDERTOW_MAX_SOURCE_LAG_S"):
        load_settings({"UNDERTOW_MAX_SOURCE_LAG_S": "-1"})


# -- one partition on the broker -------------------------------------------------------------------

def _records(n: int, start: int = 0, step: int = 10) -> list[bytes]:
    return [orjson.dumps({"event_id": f"e{i}", "k": "a", "ts": start + i * step})
            for i in range(n)]


def _produce(kafka, topic: str, values: list[bytes]) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for v in values:
        p.produce(topic, v, b"a", partition=0)
    assert p.flush(10) == 0


def _drain(part, until, timeout: float = 10.0) -> list:
    """Call ``next_batch`` until ``until(got)`` holds (records so far), as Bytewax would."""
    got: list = []
    deadline = time.monotonic() + timeout
    while not until(got):
        assert time.monotonic() < deadline, f"timed out with {len(got)} records"
        got.extend(part.next_batch())
        time.sleep(0.002)
    return got


def test_an_events_partition_holds_what_the_labels_have_not_reached(kafka, topics):
    """On the broker: records past the labels' time plus the lag are held, in order, and not in
    the partition's recovery state; the labels catching up (or reaching their end) lets them
    out. A malformed record at the head is not held."""
    t = topics("events", "labels")
    bad = b"{not json"
    _produce(kafka, t["events"], _records(5, start=1_000) + [bad] + _records(3, start=2_000))
    align = SourceAlignment(max_lag_ms=100)
    src = KafkaRecordSource([kafka.bootstrap_servers], [t["events"]], tail=True,
                            starting_offset=OFFSET_BEGINNING, alignment=align, side=EVENTS)
    labels = align.join(LABELS, "labels-0")
    part = src.build_part("events", f"0-{t['events']}", None)
    try:
        deadline = time.monotonic() + 10
        while not part._held:  # read from the broker, and held: the labels have no time yet
            assert time.monotonic() < deadline
            assert part.next_batch() == []
            time.sleep(0.005)
        for _ in range(20):
            assert part.next_batch() == []
        assert part.snapshot() == 0  # nothing emitted: a resumed partition reads it all again
        labels.report(1_000 + 20 - 100, at_end=False)  # up to ts 1020
        got = _drain(part, lambda g: len(g) >= 3)
        assert [r.offset for r in got] == [0, 1, 2] and part.snapshot() == 3
        assert part.next_batch() == []
        labels.report(1_045 - 100, at_end=False)  # up to 1045: 1030, 1040, then the malformed
        got = _drain(part, lambda g: len(g) >= 3)
        assert [r.offset for r in got] == [3, 4, 5] and got[-1].value == bad
        assert part.snapshot() == 6
        labels.report(None, at_end=True)  # the labels are caught up: everything goes
        got = _drain(part, lambda g: len(g) >= 3)
        assert [r.offset for r in got] == [6, 7, 8] and part.snapshot() == 9
    finally:
        part.close()


def test_a_labels_partition_reports_its_newest_time_and_its_end(kafka, topics):
    t = topics("labels")
    _produce(kafka, t["labels"], _records(4, start=500, step=100))
    align = SourceAlignment(max_lag_ms=1)
    src = KafkaRecordSource([kafka.bootstrap_servers], [t["labels"]], tail=True,
                            starting_offset=OFFSET_BEGINNING, alignment=align, side=LABELS)
    events = align.join(EVENTS, "events-0")
    part = src.build_part("labels", f"0-{t['labels']}", None)
    try:
        assert events.limit() == NOTHING
        got = _drain(part, lambda g: len(g) >= 4)
        assert [r.offset for r in got] == [0, 1, 2, 3]
        deadline = time.monotonic() + 10
        while events.limit() is not None:  # partition EOF: caught up, holds nothing back
            assert time.monotonic() < deadline
            assert part.next_batch() == []
            time.sleep(0.005)
        _produce(kafka, t["labels"], _records(1, start=2_000))
        _drain(part, lambda g: len(g) >= 1)
        limit = events.limit()
        assert limit is None or limit == 2_001  # read, then at its end again
    finally:
        part.close()


# -- a live run over a backlog against the backtest ------------------------------------------------

def _jsonl(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@pytest.fixture(scope="module", params=["clicks", "fraud"])
def backlog(request, tmp_path_factory):
    """A shipped stream's generated events and labels, and the backtest of them."""
    name = request.param
    d = tmp_path_factory.mktemp(name)
    subprocess.run([sys.executable, "-m", "harness.generate", "--stream", name, "--events",
                    str(N_EVENTS), "--seed", "3", "--to", "jsonl", "--out-dir", str(d),
                    "--quiet"], cwd=ROOT, check=True, capture_output=True, timeout=120)
    stream = shipped(name)
    run_backtest(ReplaySource([FileInput(str(d / "events.jsonl"), EVENT, "events",
                                         stream.events.ts_field)],
                              [FileInput(str(d / "labels.jsonl"), LABEL, "labels",
                                         stream.labels.ts_field)]),
                 d / "bt", stream=stream, env={})
    champion = stream.models[0].name
    bt = {p["event_id"]: p for p in _jsonl(d / "bt" / "predictions.jsonl")
          if p["model"] == champion}
    events = _jsonl(d / "events.jsonl")
    labels = _jsonl(d / "labels.jsonl")
    assert len(bt) == len(events) == N_EVENTS
    return name, stream, d, events, labels, bt


def learnable(events: list[dict], labels: list[dict]):
    """``L(t)``: how many labels have their own time and their event's time ``<= t``."""
    ev_ts = {e["event_id"]: e["ts"] for e in events}
    times = sorted(max(lab["ts"], ev_ts[lab["event_id"]]) for lab in labels
                   if lab["event_id"] in ev_ts)
    return lambda t: bisect.bisect_right(times, t)


def live_run(kafka, topics, stream, d: Path, lag_s: str | None, workers: int = 1) -> dict:
    t = topics("events", "labels", partitions=3)
    env = {"UNDERTOW_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "UNDERTOW_TAIL": "false",
           "UNDERTOW_EVENTS_TOPIC": t["events"], "UNDERTOW_LABELS_TOPIC": t["labels"],
           # Many reads per partition, as a real backlog takes: with one read of 1,000 records
           # each, an unaligned run is right or wrong by which topic's read happens first.
           "UNDERTOW_SOURCE_BATCH_SIZE": "100"}
    if lag_s is not None:
        env["UNDERTOW_MAX_SOURCE_LAG_S"] = lag_s
    s = load_settings(env)
    load_file(s, t["events"], str(d / "events.jsonl"), key_field=stream.events.key_field)
    load_file(s, t["labels"], str(d / "labels.jsonl"), key_field=stream.labels.key_field)
    preds: list = []
    flow = build_flow(s, stream, outputs=Outputs(
        {"predictions": ListSink(preds), "deadletter": ListSink([])}, kafka=False))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    live = {p.event_id: p for p in preds}
    assert len(live) == len(preds) == N_EVENTS
    return live


def measure(live: dict, bt: dict, events, labels, stream, lag_ms: int) -> dict:
    """Per event: learned within [L(E - lag), L(E + lag)]? And both ROC AUCs."""
    L = learnable(events, labels)
    for p in bt.values():  # the backtest is the oracle's own rule, exactly
        assert p["labels_learned"] == L(p["event_ts"]), p
    behind = [i for i, p in live.items() if p.labels_learned < L(p.event_ts - lag_ms)]
    ahead = [i for i, p in live.items() if p.labels_learned > L(p.event_ts + lag_ms)]
    value = {lab["event_id"]: lab[stream.labels.value_field] for lab in labels}
    ids = sorted(i for i in bt if i in value)
    return {
        "behind": len(behind),  # served before labels the lag allowed had been learned
        "ahead": len(ahead),  # served after labels later than the lag allows
        "unlearned": sum(1 for p in live.values() if p.labels_learned == 0),
        "auc_live": roc_auc([value[i] for i in ids], [live[i].score for i in ids]),
        "auc_backtest": roc_auc([value[i] for i in ids], [bt[i]["score"] for i in ids]),
    }


def test_a_catch_up_learns_the_labels_the_backtest_learned(backlog, kafka, topics):
    name, stream, d, events, labels, bt = backlog
    live = live_run(kafka, topics, stream, d, None)  # the default: on, 1 s
    m = measure(live, bt, events, labels, stream, DEFAULT_LAG_MS)
    assert m["behind"] == m["ahead"] == 0, m
    assert m["unlearned"] == sum(1 for p in bt.values() if p["labels_learned"] == 0), m
    assert abs(m["auc_live"] - m["auc_backtest"]) <= 0.01, m


def test_without_alignment_a_catch_up_serves_events_before_their_labels(backlog, kafka, topics):
    """The same measure with the setting at 0 fails by far: as the two topics' reads race,
    many events are served with fewer labels than the backtest had learned by their time
    (measured over runs: 33 to 1,046 of 2,000) and often many others with more (up to 1,310;
    330 in the run with 33 fewer): more than 5 % of the events are off the lag's bounds."""
    name, stream, d, events, labels, bt = backlog
    live = live_run(kafka, topics, stream, d, "0")
    m = measure(live, bt, events, labels, stream, DEFAULT_LAG_MS)
    assert m["behind"] + m["ahead"] > N_EVENTS // 20, m


def test_two_workers_of_one_process_share_the_alignment(backlog, kafka, topics):
    """Two workers (threads) share the alignment. Their records reach the model step through
    Bytewax's exchange between workers a few records out of order, though (the sources can
    align what they emit, not what is in flight), and the step releases the labels due by each
    event's own time: some events are served with labels up to about 25 s of clicks' event
    time (5 events) off the lag's bounds, most of them ahead (measured: 241 ahead, 0 to 17
    behind, of 2,000), against more than a quarter behind without alignment."""
    name, stream, d, events, labels, bt = backlog
    if name != "clicks":
        pytest.skip("one stream is enough for the workers")
    live = live_run(kafka, topics, stream, d, None, workers=2)
    m = measure(live, bt, events, labels, stream, DEFAULT_LAG_MS)
    assert m["behind"] <= N_EVENTS // 20, m
    assert abs(m["auc_live"] - m["auc_backtest"]) <= 0.01, m


# -- live: a quiet labels topic never holds the events ---------------------------------------------

def test_a_live_run_with_a_quiet_labels_topic_is_not_stalled(kafka, topics, tmp_path):
    """Tail mode, alignment on, an empty labels topic: every event is served (the labels
    partitions are at their end, so they hold nothing back)."""
    t = topics("events", "labels", "predictions", "deadletter", partitions=2)
    n = 200
    values = [orjson.dumps({"event_id": f"q{i}", "user_id": f"u{i % 7}", "page": "home",
                                    "device": "mobile", "dwell_s": 1.0, "price": 2.0,
                                    "ts": 1_767_225_600_000 + i * 1000}) for i in range(n)]
    events_file = tmp_path / "events.jsonl"
    events_file.write_bytes(b"\n".join(values) + b"\n")
    env = {**os.environ, "UNDERTOW_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "UNDERTOW_STREAM": str(ROOT / "streams" / "clicks.toml"),
           "UNDERTOW_EVENTS_TOPIC": t["events"], "UNDERTOW_LABELS_TOPIC": t["labels"],
           "UNDERTOW_PREDICTIONS_TOPIC": t["predictions"],
           "UNDERTOW_DEADLETTER_TOPIC": t["deadletter"]}
    s = load_settings({k: v for k, v in env.items() if k.startswith("UNDERTOW_")
                       and k != "UNDERTOW_STREAM"})
    load_file(s, t["events"], str(events_file), key_field="user_id")
    proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflows.stream:flow"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "catchup-t",
                      "enable.auto.commit": "false"})
        c.assign([TopicPartition(t["predictions"], i, OFFSET_BEGINNING) for i in (0, 1)])
        seen: set[bytes] = set()
        deadline = time.monotonic() + 60
        while len(seen) < n and time.monotonic() < deadline and proc.poll() is None:
            for msg in c.consume(500, 0.2):
                if msg.error() is None:
                    seen.add(orjson.loads(msg.value())["event_id"])
        c.close()
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert len(seen) == n
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
