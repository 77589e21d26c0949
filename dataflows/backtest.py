"""Backtest: replay history through the live dataflow and compare models, leak-free.

    python -m dataflows.backtest --stream streams/fraud.toml --events-topic events \\
        --labels-topic labels --brokers 127.0.0.1:9092 --model lr=logreg --model tree=hat \\
        --out run/backtest
    python -m dataflows.backtest --stream streams/clicks.toml --events-file events.jsonl \\
        --labels-file labels.jsonl --start 2026-01-01T00:00:00Z --end 2026-01-02T00:00:00Z \\
        --out run/bt

The events and labels are merged into one input in event-time order (:mod:`connectors.replay`)
and run through the same graph as the live dataflow (:func:`dataflows.stream.build_flow`), with
the model step in ordered mode: labels are learned only once the replay clock reaches them, with
the tie rule of ``river.stream.simulate_qa``. The stream file (``--stream``, else
``UNDERTOW_STREAM``, else the shipped fraud stream) gives the schemas, features and models; the
first model is the champion, the others are challengers scored in shadow on the same events and
learning from the same labels. ``--model NAME=MODEL`` (repeated) replaces the file's models.

Outputs in ``--out``: ``predictions.jsonl`` (every model's predictions), ``deadletters.jsonl``,
``report.json`` and ``report.html`` (byte-identical for the same inputs and settings, whatever
the machine's speed), and ``timing.json`` (throughput, which depends on the machine and so is
kept out of the report). Other settings come from ``UNDERTOW_*`` as for the live dataflow.
The replay runs on one worker: its input is one ordered stream and the model step is one key.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from bytewax.testing import run_main

from connectors.files import ListSink, dead_letter_json
from connectors.replay import EVENT, LABEL, FileInput, KafkaInput, ReplaySource
from connectors.settings import ConfigError, load_settings, parse_challengers
from dataflows.stream import STREAMS, Outputs, ReplayInputs, build_flow, served_models, stream_of
from undertow.report import build_report, render_html
from undertow.schema import DeadLetter, ModelSummary, Outcome, Prediction
from undertow.stream import ModelDecl, Stream


def parse_time(text: str, what: str) -> int:
    """Epoch milliseconds from an integer or an ISO-8601 time (UTC unless it says otherwise).

    >>> parse_time("1767225600000", "--start"), parse_time("2026-01-01T00:00:00Z", "--start")
    (1767225600000, 1767225600000)
    """
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{what}: not an ISO-8601 time or epoch milliseconds: {text!r}") from None
    if dt.tzinfo is None:
        from datetime import UTC

        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def prediction_json(p: Prediction) -> bytes:
    """A prediction's wire fields (those of the predictions topic, per target) without the
    wall-clock stamp, so the file is deterministic."""
    d = p.wire()
    del d["processed_at"]
    return orjson.dumps(d, option=orjson.OPT_NON_STR_KEYS)


def run_backtest(
    replay: ReplaySource, out_dir: Path, *, models: list[tuple[str, str]] | None = None,
    env: dict[str, str] | None = None, mark_ms: int | None = None,
    meta: dict[str, Any] | None = None, stream: Stream | None = None,
) -> dict[str, Any]:
    """Run one backtest of ``stream`` (default: the shipped fraud stream) and write its files;
    return the report. ``models`` (name, model expression) replace the stream's models."""
    base = load_settings(env)
    stream = stream if stream is not None else stream_of(base, STREAMS / "fraud.toml")
    if models == []:
        raise ConfigError("--model: at least one NAME=MODEL is needed")
    if models is None:
        models = served_models(base, stream)
    # The models run are the stream's, replaced whole by --model (an [ensemble] must name
    # models among them); the settings' own model overrides have been applied above.
    stream = replace(stream, models=tuple(ModelDecl(n, m) for n, m in models))
    settings = load_settings(env, model_name="", model="", challengers="", tail=False)
    preds: list[Prediction] = []
    dead: list[DeadLetter] = []
    outcomes: list[Outcome] = []
    summaries: list[ModelSummary] = []
    flow = build_flow(settings, stream, inputs=ReplayInputs(replay), outputs=Outputs({
        "predictions": ListSink(preds), "shadow": ListSink(preds), "deadletter": ListSink(dead),
        "outcomes": ListSink(outcomes), "summaries": ListSink(summaries),
    }, kafka=False))
    t0 = time.perf_counter()
    run_main(flow)
    seconds = time.perf_counter() - t0
    if not preds and not dead:
        raise ConfigError("empty range: no record of the inputs falls between the start and the "
                          "end")
    t1 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    preds.sort(key=lambda p: (p.event_ts, p.event_id, p.model))
    (out_dir / "predictions.jsonl").write_bytes(b"".join(prediction_json(p) + b"\n"
                                                         for p in preds))
    dead.sort(key=lambda d: (d.seq, d.reason, d.detail))
    (out_dir / "deadletters.jsonl").write_bytes(b"".join(dead_letter_json(d) + b"\n"
                                                         for d in dead))
    report = build_report(outcomes, summaries, target=stream.labels.target, meta={
        **(meta or {}), "stream": stream.name,
        "models": " ".join(f"{n}={k}" for n, k in models),
        "dead_letters": len(dead)})
    (out_dir / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    (out_dir / "report.html").write_text(render_html(report, mark_ms=mark_ms))
    events = max((m["events"] for m in report["models"]), default=0)
    timing = {"seconds": seconds, "events": events, "events_per_s": events / max(seconds, 1e-9),
              "predictions": len(preds), "report_seconds": time.perf_counter() - t1}
    (out_dir / "timing.json").write_text(json.dumps(timing, indent=1, sort_keys=True) + "\n")
    return report


def parse_models(values: list[str]) -> list[tuple[str, str]]:
    try:
        parsed = parse_challengers(",".join(values), what="model")
    except ValueError as ex:
        raise ConfigError(f"--model: {ex}") from None
    return list(parsed.items())


#: The headline measures of each target in the closing lines: (key of ``final``, name).
HEADLINE = {"binary": (("roc_auc", "ROC AUC"),),
            "multiclass": (("accuracy", "accuracy"), ("macro_f1", "macro F1")),
            "regression": (("mae", "MAE"), ("r2", "R²"))}


def closing_line(m: dict[str, Any], target: str) -> str:
    """One model's closing line: its counts, its target's headline measures, its drifts."""
    f = m["final"]
    measures = "  ".join(f"{name} {'–' if f[k] is None else format(f[k], '.4f')}"
                         for k, name in HEADLINE[target])
    return (f"{m['model']:>12}{' *' if m['champion'] else '  '} events {m['events']}  "
            f"learned {m['learned']}  {measures}  drift detections {len(m['drift'])}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dataflows.backtest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stream", help="the stream file (default: UNDERTOW_STREAM, else "
                                     "streams/fraud.toml)")
    ap.add_argument("--brokers", help="Kafka brokers (default: UNDERTOW_KAFKA_BOOTSTRAP_SERVERS)")
    ap.add_argument("--events-topic")
    ap.add_argument("--labels-topic")
    ap.add_argument("--events-file", help="JSON Lines events, as on the events topic")
    ap.add_argument("--labels-file", help="JSON Lines labels, as on the labels topic")
    ap.add_argument("--start", help="first event time replayed (ISO-8601 or epoch ms)")
    ap.add_argument("--end", help="last event time replayed (ISO-8601 or epoch ms)")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=MODEL",
                    help="a model to run instead of the stream file's (repeat; the first is the "
                         "champion): a River expression, package.module:factory, or logreg, "
                         "hat, arf, nb")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--mark", help="an event time to mark on the plots (e.g. a known change)")
    ap.add_argument("--progress-every", type=int, default=100_000,
                    help="log progress every N records")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stderr)
    try:
        base = load_settings()
        stream = stream_of(base, a.stream or base.stream or STREAMS / "fraud.toml")
        models = parse_models(a.model) if a.model else None
        start = parse_time(a.start, "--start") if a.start else None
        end = parse_time(a.end, "--end") if a.end else None
        mark = parse_time(a.mark, "--mark") if a.mark else None
        if a.events_file or a.labels_file:
            if not (a.events_file and a.labels_file) or a.events_topic or a.labels_topic:
                raise ConfigError("give --events-file and --labels-file, or the two topics")
            events: list[Any] = [FileInput(a.events_file, EVENT, "events",
                                           stream.events.ts_field)]
            labels: list[Any] = [FileInput(a.labels_file, LABEL, "labels",
                                           stream.labels.ts_field)]
        else:
            if not (a.events_topic and a.labels_topic):
                raise ConfigError("give --events-topic and --labels-topic, or the two files")
            s = load_settings(**({"kafka_bootstrap_servers": a.brokers} if a.brokers else {}))
            opts = tuple(sorted(s.librdkafka().items()))
            brokers = s.kafka_bootstrap_servers
            events = [KafkaInput(a.events_topic, EVENT, brokers, opts, stream.events.ts_field)]
            labels = [KafkaInput(a.labels_topic, LABEL, brokers, opts, stream.labels.ts_field)]
        replay = ReplaySource(events, labels, start_ms=start, end_ms=end,
                              progress_every=a.progress_every)
        report = run_backtest(replay, Path(a.out), models=models, mark_ms=mark, stream=stream,
                              meta={"start": a.start or "the beginning",
                                    "end": a.end or "the end of the inputs"})
    except ConfigError as ex:
        print(f"undertow backtest: {ex}", file=sys.stderr)
        return 2
    for m in report["models"]:
        print(closing_line(m, report["target"]))
    print(f"report: {Path(a.out) / 'report.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
