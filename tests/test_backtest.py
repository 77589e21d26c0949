"""Backtests end to end: deterministic bytes, no peeking (the plain loop as the oracle), the
workload's drift in the report, the HTML page rendered by headless Chromium, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from connectors.replay import EVENT, LABEL, FileInput, KafkaInput, ReplaySource
from dataflows.backtest import run_backtest
from harness import chromium
from harness.workload import WorkloadConfig, generate
from undertow.models import make_model
from undertow.reference import run_reference

ROOT = Path(__file__).resolve().parents[1]
FILES = ("predictions.jsonl", "deadletters.jsonl", "report.json", "report.html")


@pytest.fixture(scope="module")
def drifting():
    return generate(WorkloadConfig(seed=1, n_events=30_000))


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def produce_all(bootstrap: str, topic: str, records: list[dict], *, linger_ms: int,
                order: int) -> None:
    """Write records over 3 partitions by card, partition by partition in ``order``: the
    batching and the interleaving of the partitions differ, each partition's order does not."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": linger_ms})
    by_part: dict[int, list[dict]] = {}
    for r in records:
        by_part.setdefault(zlib.crc32(r["card_id"].encode()) % 3, []).append(r)
    parts = sorted(by_part) if order > 0 else sorted(by_part, reverse=True)
    for part in parts:
        for r in by_part[part]:
            p.produce(topic, orjson.dumps(r), r["card_id"].encode(), partition=part)
            p.poll(0)
    assert p.flush(60) == 0


def test_two_backtests_are_byte_identical_whatever_the_batching(kafka, topics, tmp_path,
                                                                drifting):
    w = generate(WorkloadConfig(seed=4, n_events=6000, n_cards=300, n_merchants=40))
    runs = []
    for i, (linger, order, batch) in enumerate([(0, 1, 1000), (50, -1, 37)]):
        names = topics("events", "labels", partitions=3)
        produce_all(kafka.bootstrap_servers, names["events"], w.events, linger_ms=linger,
                    order=order)
        produce_all(kafka.bootstrap_servers, names["labels"], w.labels, linger_ms=linger,
                    order=order)
        b = kafka.bootstrap_servers
        replay = ReplaySource([KafkaInput(names["events"], EVENT, b)],
                              [KafkaInput(names["labels"], LABEL, b)], batch_size=batch)
        out = tmp_path / f"run{i}"
        run_backtest(replay, out, models=[("lr", "logreg"), ("tree", "hat")])
        runs.append({f: (out / f).read_bytes() for f in FILES})
    assert runs[0] == runs[1]
    preds = [orjson.loads(x) for x in runs[0]["predictions.jsonl"].splitlines()]
    assert len(preds) == 2 * len(w.events)
    report = json.loads(runs[0]["report.json"])
    assert [(m["model"], m["champion"], m["learned"]) for m in report["models"]] == [
        ("lr", True, len(w.labels)), ("tree", False, len(w.labels))]


def test_a_backtest_serves_what_the_plain_loop_serves_and_never_peeks(tmp_path):
    w = generate(WorkloadConfig(seed=8, n_events=5000, n_cards=200, n_merchants=30))
    events = write_jsonl(tmp_path / "events.jsonl", w.events)
    labels = write_jsonl(tmp_path / "labels.jsonl", w.labels)
    replay = ReplaySource([FileInput(str(events), EVENT, "events")],
                          [FileInput(str(labels), LABEL, "labels")])
    report = run_backtest(replay, tmp_path / "out", models=[("lr", "logreg")])
    got = {p["event_id"]: p["score"] for p in map(
        orjson.loads, (tmp_path / "out" / "predictions.jsonl").read_bytes().splitlines())}
    # The oracle: the plain River loop, events and labels merged by time, a label learned
    # before an event at the same time, never before its own time.
    ref = run_reference(w.events, w.labels, make_model("logreg"))
    assert got == ref.scores
    assert report["models"][0]["learned"] == ref.learned == len(w.labels)
    # The comparison can fail: a loop that learns each label at its event's time (peeking at
    # the future) serves other scores.
    ts_of = {e["event_id"]: e["ts"] for e in w.events}
    peeking = run_reference(w.events, [{**x, "ts": ts_of[x["event_id"]]} for x in w.labels],
                            make_model("logreg"))
    assert sum(peeking.scores[k] != got[k] for k in got) > len(got) // 2


def test_the_workload_drift_shows_in_the_report(tmp_path, drifting):
    w = drifting
    events = write_jsonl(tmp_path / "events.jsonl", w.events)
    labels = write_jsonl(tmp_path / "labels.jsonl", w.labels)
    replay = ReplaySource([FileInput(str(events), EVENT, "events")],
                          [FileInput(str(labels), LABEL, "labels")])
    drift_ts = w.drift_ts
    report = run_backtest(replay, tmp_path / "out", models=[("lr", "logreg")], mark_ms=drift_ts)
    (lr,) = report["models"]
    ups = [d for d in lr["drift"] if d["stream"] == "error" and d["direction"] == "up"]
    assert any(d["ts_ms"] > drift_ts for d in ups), ups
    assert not [d for d in ups if d["detector"] == "adwin" and d["ts_ms"] <= drift_ts]
    # Quality over event time drops right after the drift: the bucket holding the drift is
    # worse than the last bucket before it.
    rolling = [r for r in lr["rolling"] if r["roc_auc"] is not None]
    before = [r for r in rolling if r["to_ms"] <= drift_ts][-1]
    after = next(r for r in rolling if r["from_ms"] <= drift_ts < r["to_ms"])
    assert after["roc_auc"] < before["roc_auc"]
    assert lr["label_delay"]["count"] == len(w.labels)

    # The page renders in headless Chromium, with its three plots and its tables.
    chromium.ensure_installed()
    page = tmp_path / "out" / "report.html"
    dom = chromium.dump_dom(page)
    assert dom.count("<svg") == 3 and "Drift detections" in dom and "lr ★" in dom
    png = chromium.screenshot(page, tmp_path / "report.png")
    # A page, not a blank: the window's size, many colours (text antialiasing, plots), and
    # matplotlib's first colour (the model's line and the histogram's bars) drawn in quantity.
    # Pillow comes with matplotlib.
    from PIL import Image

    with Image.open(png) as im:
        assert im.size == (1200, 2400)
        colours = dict((c, n) for n, c in im.convert("RGB").getcolors(1 << 24))
    assert len(colours) > 200 and colours.get((31, 119, 180), 0) > 10_000


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dataflows.backtest", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_help_and_clear_errors(kafka, tmp_path):
    r = cli("--help")
    assert r.returncode == 0 and "--events-topic" in r.stdout and "--model NAME=MODEL" in r.stdout
    events = write_jsonl(tmp_path / "e.jsonl", [{"event_id": "e1", "card_id": "c",
                                                 "merchant_id": "m", "amount": 1.0,
                                                 "channel": "pos", "ts": 1000}])
    labels = write_jsonl(tmp_path / "l.jsonl", [])
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"not json at all\n")
    out = str(tmp_path / "out")
    cases = [
        (["--events-topic", "nope-bt", "--labels-topic", "nope-bt2", "--brokers",
          kafka.bootstrap_servers], "cannot read Kafka topic 'nope-bt'"),
        (["--events-file", str(events), "--labels-file", str(labels), "--start", "5000"],
         "empty range: no record of the inputs falls between the start and the end"),
        (["--events-file", str(events), "--labels-file", str(labels), "--start", "9",
          "--end", "2"], "empty range: the start (9) is not before the end (2)"),
        (["--events-file", str(bad), "--labels-file", str(labels)],
         "line 1 is not a JSON object"),
        (["--events-file", str(events), "--labels-file", str(labels), "--model", "x=zzz"],
         "--model: model 'x': model 'zzz': 'zzz' is not a river module"),
        (["--events-file", str(events), "--labels-file", str(labels), "--start", "yesterday"],
         "--start: not an ISO-8601 time"),
    ]
    for args, message in cases:
        r = cli(*args, "--out", out)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 2 and last.startswith("undertow backtest: ") and message in last, (
            args, r.stderr[-1500:])
    ok = cli("--events-file", str(events), "--labels-file", str(labels), "--out", out)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "fraud *" in ok.stdout and (Path(out) / "report.html").is_file()
