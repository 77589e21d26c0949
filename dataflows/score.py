"""Bulk scoring: score a file or topic of events with a saved checkpoint, without learning.

    python -m dataflows.score --checkpoint run/models/fraud/v000001-n000000005000 \\
        --input events.jsonl --output scores.jsonl
    python -m dataflows.score --checkpoint ... --topic events --brokers 127.0.0.1:9092 \\
        --output scores.jsonl

The events go through the live dataflow's own decoder and feature steps (the features of each
event as of its time, from the events before it in the input), then are scored in batches with
the model's ``predict_proba_many`` where River has it (``logreg``: one vectorised pass per batch)
and ``predict_proba_one`` otherwise (trees). Nothing learns. Each output line is a prediction
naming the checkpoint's model and version; malformed records go to ``--deadletters`` with their
raw bytes (base64) and the reason. Missing inputs and bad checkpoints stop it with one line and
exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import bytewax.operators as op
import pandas as pd
from bytewax.dataflow import Dataflow, Stream
from bytewax.testing import run_main

from connectors.checkpoint import CheckpointError, load_checkpoint
from connectors.files import JsonlSink, JsonlSource, dead_letter_json
from connectors.kafka import kafka_source, partition_count
from connectors.settings import ConfigError, Settings, load_settings
from dataflows.fraud import featurize
from operators.decode import decode_events
from undertow import fraud
from undertow.schema import FeaturedEvent, Prediction


def score_batch_fn(
    model: Any, *, name: str, version: int, labels_learned: int, threshold: float,
    batch_size: int, clock: Callable[[], float] = time.time,
) -> Callable[[list[FeaturedEvent]], list[Prediction]]:
    """Scores a batch of featured events, ``batch_size`` at a time, never learning."""
    many = getattr(model, "predict_proba_many", None)

    def score(batch: list[FeaturedEvent]) -> list[Prediction]:
        out: list[Prediction] = []
        for i in range(0, len(batch), batch_size):
            chunk = batch[i:i + batch_size]
            if many is not None:
                probs = many(pd.DataFrame([fe.features for fe in chunk]))
                scores = probs[True].tolist() if True in probs else [0.0] * len(chunk)
            else:
                scores = [float(model.predict_proba_one(fe.features).get(True, 0.0))
                          for fe in chunk]
            now = clock()
            for fe, s in zip(chunk, scores, strict=True):
                ev = fe.event
                out.append(Prediction(ev.event_id, ev.key, float(s), s >= threshold, name,
                                      version, labels_learned, ev.ts, now))
        return out

    return score


def build_flow(
    source: Any, settings: Settings, model: Any, meta: dict[str, Any], *, output: Any,
    deadletters: Any, batch_size: int = 1000,
) -> Dataflow:
    flow = Dataflow("undertow_score")
    raw = op.input("input", flow, source)
    events = decode_events("decode_events", raw, schema=fraud.SCHEMA)
    features = featurize(events.oks, settings)
    featured: Stream[FeaturedEvent] = features.featured
    score = score_batch_fn(model, name=str(meta["name"]), version=int(meta["version"]),
                           labels_learned=int(meta["labels_learned"]),
                           threshold=settings.threshold, batch_size=batch_size)
    scored = op.flat_map_batch("score", featured, score)
    op.output("predictions_out", scored, output)
    op.output("deadletter_out", op.merge("dead", events.errs, features.late), deadletters)
    return flow


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dataflows.score", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a checkpoint directory")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="a JSON Lines file of events")
    src.add_argument("--topic", help="a Kafka topic of events (read to its end)")
    ap.add_argument("--brokers", default=None, help="Kafka brokers (else UNDERTOW_KAFKA_...)")
    ap.add_argument("--output", required=True, help="predictions, one JSON object per line")
    ap.add_argument("--deadletters", default=None,
                    help="malformed records (default: OUTPUT with .deadletters.jsonl)")
    ap.add_argument("--batch-size", type=int, default=1000, help="rows per predict_proba_many")
    a = ap.parse_args(argv)
    try:
        if a.batch_size <= 0:
            raise ConfigError("--batch-size: must be > 0")
        model, meta = load_checkpoint(a.checkpoint)
        overrides: dict[str, Any] = {"tail": False, "start_from": "earliest"}
        if a.brokers:
            overrides["kafka_bootstrap_servers"] = a.brokers
        settings = load_settings(**overrides)
        if a.input:
            source: Any = JsonlSource(a.input, name="events")
        else:
            if partition_count(settings, a.topic) is None:
                raise ConfigError(f"--topic: topic {a.topic!r} does not exist")
            source = kafka_source(settings, a.topic)
    except (CheckpointError, ConfigError, OSError) as ex:
        print(f"undertow score: {ex}", file=sys.stderr)
        return 2
    dead_path = a.deadletters or f"{a.output.removesuffix('.jsonl')}.deadletters.jsonl"
    for path in (a.output, dead_path):
        open(path, "wb").close()  # a fresh file each run
    t0 = time.perf_counter()
    run_main(build_flow(source, settings, model, meta, batch_size=a.batch_size,
                        output=JsonlSink(a.output, Prediction.to_json),
                        deadletters=JsonlSink(dead_path, dead_letter_json)))
    with open(a.output, "rb") as f:
        n = sum(1 for _ in f)
    elapsed = time.perf_counter() - t0
    print(f"scored {n} events with {meta['name']} v{meta['version']} in {elapsed:.1f} s "
          f"({n / max(elapsed, 1e-9):,.0f} events/s) -> {a.output}; dead letters -> {dead_path}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
