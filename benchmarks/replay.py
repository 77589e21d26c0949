"""Replay benchmark: a backtest's throughput beside the live dataflow's, on the same events.

Run from the repository root (a plain script, not a test; pytest never collects it)::

    .venv/bin/python benchmarks/replay.py --events 100000 [--model logreg|hat]
                                          [--partitions 3] [--seed 1] [--json out.json]

All in one process and one invocation, on the deterministic workload
(``WorkloadConfig(seed, n_events=N)``):

* **live on Kafka**: :func:`benchmarks.e2e.run_on_kafka`: the workload is written to an
  embedded broker's events/labels topics (``--partitions`` each, not timed), then the live
  dataflow (Kafka sources, predictions to Kafka) runs to the end of the topics. events/s = N /
  wall time of ``run_main``.
* **replay from Kafka**: a backtest (:func:`dataflows.backtest.run_backtest`, one model) of those
  same topics: the merged time-ordered :class:`~connectors.replay.ReplaySource`, the same graph
  with the model step in ordered mode, outputs collected in memory. events/s = N / wall time of
  its ``run_main`` (``timing.json``); writing the report files is timed apart.
* **live without Kafka**: :func:`benchmarks.e2e.run_without_kafka` (Bytewax ``TestingSource``).
* **replay from files**: a backtest of the same workload as two JSON Lines files.

Both replays must serve exactly N predictions and learn every label, or the script fails (exit
status 1). The ratios replay / live (events/s) are printed last. Machines are shared and noisy:
quote ratios, not absolute rates.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from benchmarks.e2e import environment, run_on_kafka, run_without_kafka  # noqa: E402
from connectors.replay import EVENT, LABEL, FileInput, KafkaInput, ReplaySource  # noqa: E402
from connectors.settings import load_settings  # noqa: E402
from dataflows.backtest import run_backtest  # noqa: E402
from harness.kafka import EmbeddedKafka  # noqa: E402
from harness.workload import Workload, WorkloadConfig, generate  # noqa: E402
from undertow.models import MODELS  # noqa: E402


def replay_result(name: str, w: Workload, replay: ReplaySource, model: str,
                  out: Path) -> dict[str, Any]:
    report = run_backtest(replay, out, models=[("bench", model)])
    timing = json.loads((out / "timing.json").read_text())
    (m,) = report["models"]
    if (m["events"], m["learned"], timing["predictions"]) != (
            len(w.events), len(w.labels), len(w.events)):
        raise RuntimeError(f"{name}: {m['events']} events, {m['learned']} labels learned, "
                           f"{timing['predictions']} predictions for {len(w.events)} events and "
                           f"{len(w.labels)} labels")
    return {"name": name, "events": len(w.events), "seconds": timing["seconds"],
            "events_per_s": timing["events_per_s"], "report_seconds": timing["report_seconds"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=100_000, help="events in the workload")
    ap.add_argument("--model", choices=MODELS, default="logreg")
    ap.add_argument("--partitions", type=int, default=3, help="partitions of events and labels")
    ap.add_argument("--seed", type=int, default=1, help="workload seed")
    ap.add_argument("--json", type=Path, default=None, help="also write every number here")
    args = ap.parse_args(argv)
    if args.events < 1 or args.partitions < 1:
        ap.error("--events and --partitions must be >= 1")

    env = environment()
    w = generate(WorkloadConfig(seed=args.seed, n_events=args.events))
    print(f"undertow replay benchmark: {len(w.events)} events, {len(w.labels)} labels, seed "
          f"{args.seed}, model {args.model}, {args.partitions} partitions; nproc {env['nproc']}",
          flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="undertow-replay-bench-") as tmp:
        kafka = EmbeddedKafka()
        try:
            kafka.start()
            live = run_on_kafka(kafka, w, args)
            live["name"] = "live on Kafka"
            print(f"live on Kafka: {live['events_per_s']:,.0f} events/s", flush=True)
            s = load_settings({}, kafka_bootstrap_servers=kafka.bootstrap_servers)
            b = kafka.bootstrap_servers
            replay = ReplaySource([KafkaInput(s.events_topic, EVENT, b)],
                                  [KafkaInput(s.labels_topic, LABEL, b)])
            on_kafka = replay_result("replay from Kafka", w, replay, args.model,
                                     Path(tmp, "kafka"))
            print(f"replay from Kafka: {on_kafka['events_per_s']:,.0f} events/s", flush=True)
        except RuntimeError as ex:
            print(f"ERROR: {ex}", file=sys.stderr)
            return 1
        finally:
            kafka.stop()
        live_nk = run_without_kafka(w, args.model)
        live_nk["name"] = "live without Kafka"
        print(f"live without Kafka: {live_nk['events_per_s']:,.0f} events/s", flush=True)
        events, labels = Path(tmp, "events.jsonl"), Path(tmp, "labels.jsonl")
        events.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in w.events))
        labels.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in w.labels))
        replay = ReplaySource([FileInput(str(events), EVENT, "events")],
                              [FileInput(str(labels), LABEL, "labels")])
        try:
            files = replay_result("replay from files", w, replay, args.model, Path(tmp, "files"))
        except RuntimeError as ex:
            print(f"ERROR: {ex}", file=sys.stderr)
            return 1
        rows = [live, on_kafka, live_nk, files]

    print(f"\n{'':22} {'events/s':>10} {'seconds':>8} {'report s':>9}")
    for r in rows:
        rep = f"{r['report_seconds']:.1f}" if "report_seconds" in r else "-"
        print(f"{r['name']:22} {r['events_per_s']:>10,.0f} {r['seconds']:>8.1f} {rep:>9}")
    ratio = on_kafka["events_per_s"] / live["events_per_s"]
    ratio_nk = files["events_per_s"] / live_nk["events_per_s"]
    print(f"ratio replay / live: {ratio:.2f}x from Kafka, {ratio_nk:.2f}x without Kafka "
          "(files vs TestingSource)")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "events": len(w.events), "labels": len(w.labels), "seed": args.seed,
            "model": args.model, "partitions": args.partitions, "environment": env,
            "rows": rows, "ratio_kafka": ratio, "ratio_without_kafka": ratio_nk,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
