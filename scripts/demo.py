"""The undertow demo: a shipped stream, live, on an embedded Kafka broker with generated data.

    bash scripts/demo.sh [--stream fraud|clicks|income] [--events 100000] [--model logreg|hat]
                         [--metrics-port 3030] [--rate 2000]

1. starts the embedded broker (Tansu) and creates the topics;
2. writes a deterministic workload of the stream to it: for ``fraud`` (the default) card
   transactions with delayed labels, a concept drift half way, 5 % of events never labelled and a
   few malformed records; for ``clicks`` and ``income`` their generators' (harness/); all of it
   first, or with ``--rate`` as a live stream while the dataflow runs (to watch it in
   Prometheus/Grafana);
3. runs ``python -m bytewax.run dataflows.fraud:flow`` (``dataflows.stream:flow`` with
   ``UNDERTOW_STREAM=streams/NAME.toml`` for the others) with Bytewax's API server on, so its
   metrics are at ``http://127.0.0.1:PORT/metrics`` while it runs, and prints progress from them;
4. once every record is accounted for, stops the dataflow (as Ctrl-C would) and the broker, and
   prints a summary: events, predictions, labels learned, expiries, dead letters, quality of the
   served predictions (before and after the drift, for fraud), drift detections, events/s,
   p50/p99 latency.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from river import metrics as rm  # noqa: E402

from connectors.summary import samples_of, summary_lines, total  # noqa: E402
from harness.generate import OTHER_STREAMS, STREAMS, KafkaSink, run_records  # noqa: E402
from harness.generate import run as write_workload  # noqa: E402
from harness.kafka import EmbeddedKafka, free_port, read_topic  # noqa: E402
from harness.process import ChildProcess  # noqa: E402
from harness.workload import WorkloadConfig, drift_index  # noqa: E402

DRIFT_UP = "undertow_concept_drift_detections_total"
UP = {"detector": "adwin", "stream": "error", "direction": "up"}
TOPICS = {"events": 3, "labels": 3, "predictions": 1, "deadletter": 1}


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return None
    return samples_of(text_string_to_metric_families(text.decode()))


def quantile(m: dict, name: str, q: float) -> float:
    """histogram_quantile() as Prometheus computes it, from the scraped buckets."""
    buckets = sorted(
        (float(dict(labels)["le"]), v) for (n, labels), v in m.items() if n == f"{name}_bucket"
    )
    merged: dict[float, float] = {}
    for le, v in buckets:
        merged[le] = merged.get(le, 0.0) + v
    points = sorted(merged.items())
    if not points or points[-1][1] == 0:
        return float("nan")
    rank = q * points[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in points:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-12)
        prev_le, prev_c = le, c
    return prev_le


def quality(pairs: list[tuple[bool, float]]) -> str:
    if not pairs:
        return "n/a"
    acc, auc, ll = rm.Accuracy(), rm.ROCAUC(), rm.LogLoss()
    for y, p in pairs:
        acc.update(y, p > 0.5)
        auc.update(y, p)
        ll.update(y, p)
    return f"accuracy {acc.get():.3f}  ROC AUC {auc.get():.3f}  log-loss {ll.get():.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--stream", choices=STREAMS, default="fraud",
                    help="the shipped stream (streams/NAME.toml) to generate and run")
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--model", default="",
                    help="the champion instead of the stream file's (logreg, hat, or a River "
                         "expression)")
    ap.add_argument("--metrics-port", type=int, default=0, help="default: 3030 if free")
    ap.add_argument("--label-ttl-s", type=float, default=None,
                    help="default: 3600 for fraud, the stream file's [labels] ttl for others")
    ap.add_argument("--timeout-s", type=float, default=900.0)
    ap.add_argument("--rate", type=float, default=0.0,
                    help="events/s while the dataflow runs (0: load everything first)")
    args = ap.parse_args()
    port = args.metrics_port or (3030 if _port_free(3030) else free_port())
    tty = sys.stdout.isatty()

    other = OTHER_STREAMS.get(args.stream)
    if other is None and args.label_ttl_s is None:
        args.label_ttl_s = 3600.0
    print(f"undertow demo: stream {args.stream}, {args.events} events, model "
          f"{args.model or 'of the stream file'}")
    with EmbeddedKafka() as kafka:
        bs = kafka.bootstrap_servers
        kafka.create_topics({name: n for name, n in TOPICS.items()})
        print(f"  embedded Kafka (Tansu) at {bs}, pid {kafka.pid}")

        config = WorkloadConfig(seed=args.seed, n_events=args.events, label_coverage=0.95)
        result: dict = {}

        def write() -> None:
            sink = KafkaSink(bs, "events", "labels", 60.0)
            t0 = time.monotonic()
            if other is None:
                result["written"] = write_workload(config, sink, n_malformed=25, rate=args.rate)
            else:
                evs, lbs = other.generate(args.seed, args.events)
                result["written"] = {**run_records(other, evs, lbs, sink, rate=args.rate),
                                     "malformed": 0, "drift_ts": None}
            result["errors"] = sink.close()
            result["seconds"] = time.monotonic() - t0

        def report_written() -> bool:
            if result.get("errors"):
                print(f"  {result['errors']} records could not be written to Kafka",
                      file=sys.stderr)
                return False
            w = result["written"]
            drift = f"; drift at event {drift_index(config)}" if other is None else ""
            print(f"  wrote {w['events']} events, {w['labels']} labels, {w['malformed']} "
                  f"malformed records in {result['seconds']:.1f} s{drift}")
            return True

        writer = threading.Thread(target=write, daemon=True)
        if args.rate <= 0:  # load first, then watch the dataflow catch up
            writer.run()
            if not report_written():
                return 1

        env = {
            **os.environ,
            "UNDERTOW_KAFKA_BOOTSTRAP_SERVERS": bs,
            "UNDERTOW_MODEL": args.model,
            **({} if args.label_ttl_s is None else {"UNDERTOW_LABEL_TTL_S": str(args.label_ttl_s)}),
            **({} if other is None else {"UNDERTOW_STREAM": str(ROOT / "streams" /
                                                                 f"{args.stream}.toml")}),
            "BYTEWAX_DATAFLOW_API_ENABLED": "true",
            "BYTEWAX_DATAFLOW_API_PORT": str(port),
            "PYTHONPATH": str(ROOT),
        }
        flow = "dataflows.fraud:flow" if other is None else "dataflows.stream:flow"
        cmd = [sys.executable, "-m", "bytewax.run", flow]
        print(f"  running: {' '.join(cmd[1:])}   (metrics: http://127.0.0.1:{port}/metrics)")
        proc = ChildProcess(cmd, cwd=ROOT, env=env, inherit_output=True, stop_timeout=30).start()
        if args.rate > 0:  # a live stream at the given rate while the dataflow runs
            print(f"  writing {args.events} events at {args.rate:g} events/s")
            writer.start()
        first_pred_at = last = None
        done_at = None
        final: dict = {}
        deadline = time.monotonic() + args.timeout_s
        try:
            while time.monotonic() < deadline:
                time.sleep(1.0)
                if not proc.running:
                    print(f"\n  the dataflow exited with status {proc.returncode}", file=sys.stderr)
                    return 1
                m = scrape(port)
                if m is None:
                    continue
                final = m
                preds = total(m, "undertow_predictions_total")
                learned = total(m, "undertow_labels_learned_total")
                label_dl = sum(total(m, "undertow_dead_letters_total", reason=r) for r in (
                    "expired_event", "unknown_event", "duplicate_label", "conflicting_label"))
                held = total(m, "undertow_labels_waiting_for_time") + total(
                    m, "undertow_early_labels_waiting")
                now = time.monotonic()
                if preds and first_pred_at is None:
                    first_pred_at = now
                line = (f"  events {int(total(m, 'undertow_events_total')):>8}  "
                        f"predictions {int(preds):>8}  labels learned {int(learned):>8}  "
                        f"dead letters {int(total(m, 'undertow_dead_letters_total')):>5}  "
                        f"rolling acc {total(m, 'undertow_model_accuracy_ratio'):.3f}  "
                        f"drift up {int(total(m, DRIFT_UP, **UP))}")
                print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
                if writer.is_alive() or "written" not in result:
                    continue
                written = result["written"]
                if preds >= written["events"] and last is None:
                    last = now
                if preds >= written["events"] and learned + label_dl + held >= written["labels"]:
                    done_at = now
                    time.sleep(1.0)  # the last dead letters reach their counters: scrape again
                    final = scrape(port) or final
                    break
        finally:
            proc.stop(30)
        print()
        if done_at is None:
            print("  timed out before every record was accounted for", file=sys.stderr)
            return 1
        if args.rate > 0 and not report_written():
            return 1
        written = result["written"]
        n_labels = written["labels"]
        drift_ts = written["drift_ts"]

        preds = [orjson.loads(m.value()) for m in read_topic(bs, "predictions")]
        dead = read_topic(bs, "deadletter")
        labels = {}
        value_field = "is_fraud" if other is None else other.label_field
        for m in read_topic(bs, "labels"):
            lb = orjson.loads(m.value())
            labels[lb["event_id"]] = lb[value_field]
        served = [(labels[p["event_id"]], p["score"], p["event_ts"]) for p in preds
                  if p["event_id"] in labels]
        if drift_ts is None:  # no drift: one line for the whole stream
            before = [(y, s) for y, s, _ in served]
            after = first_hour = []
        else:
            before = [(y, s) for y, s, ts in served if ts < drift_ts]
            after = [(y, s) for y, s, ts in served if ts >= drift_ts]
            first_hour = [(y, s) for y, s, ts in served if drift_ts <= ts < drift_ts + 3600_000]
        elapsed = (last or done_at) - (first_pred_at or done_at) + 1.0  # 1 s scrape granularity
        m = final
        print("summary")
        print(f"  written                {written['events']} events, {n_labels} labels, "
              f"{written['malformed']} malformed records")
        for line in summary_lines(m):  # the lines a bounded live run prints at its end
            print(line)
        counted = int(total(m, "undertow_dead_letters_total"))
        if len(dead) != counted:
            print(f"  (the dead-letter topic holds {len(dead)} records, the metrics count {counted})")
        if drift_ts is None:
            print(f"  served predictions     {quality(before)}")
        else:
            print(f"  before the drift       {quality(before)}")
            print(f"  first hour after it    {quality(first_hour)}")
            print(f"  after the drift        {quality(after)}")
        ups = int(total(m, DRIFT_UP, **UP))
        downs = int(total(m, DRIFT_UP, **{**UP, "direction": "down"}))
        print(f"  drift detections       {ups} up / {downs} down (ADWIN on the served error;"
              f" up = the model got worse)")
        worst = sorted(((total(m, "undertow_feature_drift_psi", feature=f), f) for f in {
            dict(lb)["feature"] for (n, lb) in m if n == "undertow_feature_drift_psi"}),
            reverse=True)[:3]
        print("  feature drift (PSI)    " + (", ".join(f"{f} {v:.2f}" for v, f in worst) or
                                             "not computed yet (every UNDERTOW_DRIFT_EVERY "
                                             "events)"))
        print(f"  throughput             {len(preds) / elapsed:,.0f} events/s (scraped each second)")
        print(f"  processing latency     p50 {1000 * quantile(m, 'undertow_processing_latency_seconds', 0.5):.1f} ms"
              f"  p99 {1000 * quantile(m, 'undertow_processing_latency_seconds', 0.99):.1f} ms"
              f" (read -> prediction written, from the histogram)")
    return 0


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
