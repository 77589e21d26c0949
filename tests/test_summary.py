"""The run summary (connectors/summary.py): one formatter for scraped and collected samples, the
end-of-run hook, and a bounded live run that ends with the exact counts of what it read."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from connectors import topics as topics_tool
from connectors.summary import EndOfRun, registry_samples, samples_of, summary_lines
from harness.generate import KafkaSink
from harness.generate import run as write_workload
from harness.kafka import count_records, free_port
from harness.workload import WorkloadConfig

ROOT = Path(__file__).resolve().parents[1]


def _registry() -> CollectorRegistry:
    """A registry holding the families the summary reads, as a finished run leaves them."""
    reg = CollectorRegistry()
    read = Counter("undertow_records_read", "", ["stream"], registry=reg)
    read.labels(stream="events").inc(1005)
    read.labels(stream="labels").inc(950)
    preds = Counter("undertow_predictions", "", ["model"], registry=reg)
    preds.labels(model="fraud").inc(1000)
    preds.labels(model="tree").inc(1000)
    learned = Counter("undertow_labels_learned", "", ["model"], registry=reg)
    learned.labels(model="fraud").inc(940)
    learned.labels(model="tree").inc(940)
    expired = Counter("undertow_pending_expired", "", ["model", "reason"], registry=reg)
    expired.labels(model="fraud", reason="ttl").inc(7)
    expired.labels(model="fraud", reason="capacity").inc(0)
    Counter("undertow_early_labels_expired", "", ["model"], registry=reg).labels("fraud").inc(2)
    dead = Counter("undertow_dead_letters", "", ["step", "reason"], registry=reg)
    dead.labels(step="decode_events", reason="bad_json").inc(3)
    dead.labels(step="decode_events", reason="below_min").inc(2)
    dead.labels(step="decode_labels", reason="bad_json").inc(1)
    dead.labels(step="model", reason="unknown_event").inc(4)
    dead.labels(step="model", reason="expired_event").inc(0)
    for name, value in (("undertow_pending_predictions", 53), ("undertow_labels_waiting_for_time",
                        1), ("undertow_early_labels_waiting", 5)):
        Gauge(name, "", ["model"], registry=reg).labels("fraud").set(value)
    champion = Gauge("undertow_model_champion", "", ["model"], registry=reg)
    champion.labels("fraud").set(1)
    champion.labels("tree").set(0)
    for name, f, t in (("undertow_model_accuracy_ratio", 0.9514, 0.5),
                       ("undertow_model_log_loss", 0.12345, 0.7),
                       ("undertow_model_roc_auc_ratio", float("nan"), 0.5)):
        g = Gauge(name, "", ["model"], registry=reg)
        g.labels("fraud").set(f)
        g.labels("tree").set(t)
    return reg


EXPECTED = [
    "  records read           events 1005, labels 950",
    "  predictions            1000 by fraud (champion); challengers: tree 1000",
    "  labels learned         940 by fraud (champion); challengers: tree 940; held until their "
    "time 1; waiting for their event 5",
    "  expiries               predictions never labelled: ttl 7; labels whose event never came: 2;"
    " still pending 53",
    "  dead letters           10: bad_json 4, below_min 2, unknown_event 4",
    "  served quality         fraud: accuracy 0.951, log loss 0.123, ROC AUC n/a (rolling)",
]


def test_the_same_lines_from_the_registry_and_from_a_scrape_of_it():
    reg = _registry()
    assert summary_lines(registry_samples(reg)) == EXPECTED
    scraped = samples_of(text_string_to_metric_families(generate_latest(reg).decode()))
    assert summary_lines(scraped) == EXPECTED


def test_without_a_model_step_the_quality_is_not_invented():
    reg = CollectorRegistry()
    Counter("undertow_records_read", "", ["stream"], registry=reg).labels("events").inc(3)
    Counter("undertow_predictions", "", ["model"], registry=reg).labels("fraud")
    assert summary_lines(registry_samples(reg)) == [
        "  records read           events 3",
        "  predictions            fraud 0",
        "  labels learned         0; held until their time 0; waiting for their event 0",
        "  expiries               none; still pending 0",
        "  dead letters           0",
        "  served quality         n/a (no model step ran in this process)",
    ]


def test_end_of_run_reports_once_after_the_last_partition_closes():
    calls: list[tuple[list[int], int]] = []
    end = EndOfRun(lambda workers, count: calls.append((workers, count)))
    # Two output steps on workers 2 and 3 of 4 (this process is the second of two).
    closes = [end.opened(step, w, 4) for step in ("predictions_out", "deadletter_out")
              for w in (2, 3)]
    for close in closes[:-1]:
        close()
        closes[0]()  # a second close of the same partition counts once
        assert calls == []
    closes[-1]()
    assert calls == [([2, 3], 4)]
    # A later run in the same process does not report again (the registry counts since start).
    again = end.opened("predictions_out", 0, 1)
    again()
    assert calls == [([2, 3], 4)]


# -- a bounded live run -------------------------------------------------------------------------

#: Malformed event records and the reason each is dead-lettered with.
MALFORMED = [
    (b"{oops", "bad_json"),
    (b'{"event_id": "x2", "card_id": "c000001", "merchant_id": "m00001", "amo', "bad_json"),
    (b"[1, 2, 3]", "not_object"),
    (b'{"event_id": "x4", "card_id": "c000001", "merchant_id": "m00001", "channel": "pos", '
     b'"ts": 1767225600000}', "missing_field"),
    (b'{"event_id": "x5", "card_id": "c000001", "merchant_id": "m00001", "amount": -5, '
     b'"channel": "pos", "ts": 1767225600000}', "below_min"),
]


def _env(kafka, names: dict[str, str], *, tail: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("UNDERTOW_", "BYTEWAX_"))}
    env.update({
        "PYTHONPATH": str(ROOT),
        "UNDERTOW_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "UNDERTOW_EVENTS_TOPIC": names["events"],
        "UNDERTOW_LABELS_TOPIC": names["labels"],
        "UNDERTOW_PREDICTIONS_TOPIC": names["predictions"],
        "UNDERTOW_DEADLETTER_TOPIC": names["deadletter"],
        "UNDERTOW_TAIL": str(tail).lower(),
    })
    return env


def _load_workload(kafka, topics, tmp_path, n_events: int):
    names = topics("events", "labels", partitions=3)
    names.update(topics("predictions", "deadletter", partitions=1))
    config = WorkloadConfig(seed=11, n_events=n_events, label_coverage=0.9)
    sink = KafkaSink(kafka.bootstrap_servers, names["events"], names["labels"], 30.0)
    written = write_workload(config, sink)
    assert sink.close() == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(raw for raw, _ in MALFORMED) + b"\n")
    assert topics_tool.main(["--brokers", kafka.bootstrap_servers, "load", "--topic",
                             names["events"], "--file", str(bad)]) == 0
    return names, written


def test_a_bounded_run_ends_with_the_summary_of_what_it_read(kafka, topics, tmp_path):
    names, written = _load_workload(kafka, topics, tmp_path, 600)
    n_events, n_labels = written["events"], written["labels"]
    assert n_events == 600 and 0 < n_labels < n_events  # label_coverage 0.9: some never come
    r = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflows.fraud:flow", "-w", "2"], cwd=ROOT,
        env=_env(kafka, names, tail=False), capture_output=True, timeout=180,
    )
    err = r.stderr.decode()
    assert r.returncode == 0, err
    lines = err.splitlines()
    heads = [i for i, line in enumerate(lines) if line.startswith("undertow: end of input")]
    assert len(heads) == 1, err  # one summary for the process, not one per worker
    i = heads[0]
    assert lines[i] == ("undertow: end of input; summary of process 0 of 1 (2 workers) from its "
                        "own metrics")
    got = lines[i + 1:i + 7]
    assert len(got) == 6, err
    assert got[0] == (f"  records read           events {n_events + len(MALFORMED)}, "
                      f"labels {n_labels}")
    assert got[1] == f"  predictions            {n_events} by fraud (champion)"
    # Every label's event was read, and no delay reaches the 24 h TTL: all are learned. The
    # unlabelled tenth waits for a label that never comes, within its TTL: pending.
    assert got[2] == (f"  labels learned         {n_labels} by fraud (champion); held until their "
                      "time 0; waiting for their event 0")
    assert got[3] == f"  expiries               none; still pending {n_events - n_labels}"
    reasons: dict[str, int] = {}
    for _, reason in MALFORMED:
        reasons[reason] = reasons.get(reason, 0) + 1
    by_reason = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
    assert got[4] == f"  dead letters           {len(MALFORMED)}: {by_reason}"
    assert got[4] == ("  dead letters           5: bad_json 2, below_min 1, missing_field 1, "
                      "not_object 1")
    assert got[5].startswith("  served quality         fraud: accuracy 0.")
    assert got[5].endswith(" (rolling)") and "n/a" not in got[5]
    # What the summary counted is what reached the topics.
    assert sum(count_records(kafka.bootstrap_servers, names["predictions"]).values()) == n_events
    assert sum(count_records(kafka.bootstrap_servers, names["deadletter"]).values()) == 5


def test_a_tailing_run_prints_no_summary(kafka, topics, tmp_path):
    names, written = _load_workload(kafka, topics, tmp_path, 200)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "dataflows.fraud:flow", "-w", "2"], cwd=ROOT,
        env=_env(kafka, names, tail=True), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            done = sum(count_records(kafka.bootstrap_servers, names["predictions"]).values())
            if done >= written["events"]:
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert done == written["events"]
        time.sleep(1.0)  # at the end of its input, still running: it tails
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C, to this process only
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert "end of input" not in err.decode()
    assert "records read" not in err.decode()


def _summary_of(err: str) -> tuple[str, dict[str, str]]:
    """The head line of a process's summary and its lines by subject."""
    lines = err.splitlines()
    heads = [i for i, line in enumerate(lines) if line.startswith("undertow: end of input")]
    assert len(heads) == 1, err
    i = heads[0]
    body = {line[2:25].strip(): line[25:] for line in lines[i + 1:i + 7]}
    return lines[i], body


def test_each_process_of_a_cluster_prints_its_own_summary(kafka, topics, tmp_path):
    names, written = _load_workload(kafka, topics, tmp_path, 300)
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "dataflows.fraud:flow", "-i", str(i), "-a",
         addresses], cwd=ROOT, env=_env(kafka, names, tail=False), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, start_new_session=True) for i in (0, 1)]
    errs = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        errs.append(err.decode())
        assert p.returncode == 0, errs[-1]
    summaries = [_summary_of(err) for err in errs]
    for i, (head, _) in enumerate(summaries):
        assert head == (f"undertow: end of input; summary of process {i} of 2 (1 worker) from "
                        f"its own metrics; every process prints its own")

    def count(body: dict[str, str], subject: str, word: str) -> int:
        parts = dict(p.strip().rsplit(" ", 1) for p in body[subject].split(","))
        return int(parts.get(word, "0"))

    bodies = [body for _, body in summaries]
    assert sum(count(b, "records read", "events") for b in bodies) == written["events"] + 5
    assert sum(count(b, "records read", "labels") for b in bodies) == written["labels"]
    served = [b for b in bodies if b["served quality"].startswith("fraud: accuracy 0.")]
    assert len(served) == 1  # the model step is one key, on one worker, in one process
    assert served[0]["predictions"] == f"{written['events']} by fraud (champion)"
    other = next(b for b in bodies if b is not served[0])
    assert other["served quality"] == "n/a (no model step ran in this process)"
    dead = [int(b["dead letters"].split(":")[0]) for b in bodies]
    assert sum(dead) == len(MALFORMED)
