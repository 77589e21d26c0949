"""Bulk scoring: score a file or topic of events with a saved checkpoint, without learning.

    python -m dataflows.score --stream streams/fraud.toml \\
        --checkpoint run/models/fraud/v000001-n000000005000 --input events.jsonl \\
        --output scores.jsonl
    python -m dataflows.score --stream ... --checkpoint ... --topic events \\
        --brokers 127.0.0.1:9092 --output scores.jsonl

The events go through the live dataflow's own decoder and feature steps (the features of each
event as of its time, from the events before it in the input), then are scored in batches with
the model's ``predict_proba_many`` where River has it (``logreg``: one vectorised pass per batch)
and ``predict_proba_one`` otherwise (trees). Nothing learns. Each output line is a prediction
naming the checkpoint's model and version; malformed records go to ``--deadletters`` with their
raw bytes (base64) and the reason. The stream file (``--stream``, else ``UNDERTOW_STREAM``, else
the shipped fraud stream) gives the schema and the features. Missing inputs, unreachable
brokers, bad checkpoints, a bad stream file and a checkpoint made for another stream (its
``meta.json`` records the stream's digest: schema, target and features) stop it with one line and
exit status 2.

``predict_proba_many`` takes a pandas DataFrame (pandas is what River's mini-batch methods take).
It is used only when every row of a chunk has the same feature names; the spec serves a fixed set,
so a ragged chunk (a model trained on other features) is scored row by row rather than with
NaN columns, which would score differently from ``predict_proba_one``.
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
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from connectors.checkpoint import CheckpointError, load_checkpoint
from connectors.files import JsonlSink, JsonlSource, dead_letter_json
from connectors.kafka import kafka_source
from connectors.replay import check_jsonl
from connectors.settings import ConfigError, Settings, load_settings
from dataflows.stream import STREAMS, check_checkpoint_stream, featurize, stream_of, target_of
from operators.decode import decode_events
from undertow.schema import FeaturedEvent, Prediction
from undertow.stream import Stream as StreamFile
from undertow.targets import Binary, Target


def score_batch_fn(
    model: Any, *, name: str, version: int, labels_learned: int, threshold: float,
    batch_size: int, clock: Callable[[], float] = time.time, target: Target | None = None,
) -> Callable[[list[FeaturedEvent]], list[Prediction]]:
    """Scores a batch of featured events, ``batch_size`` at a time, never learning: with the
    model's mini-batch method where it has one (``predict_proba_many`` for classes,
    ``predict_many`` for numbers), else row by row, as the live model step serves."""
    t = target if target is not None else Binary(threshold)
    kind = t.name

    def score(batch: list[FeaturedEvent]) -> list[Prediction]:
        out: list[Prediction] = []
        for i in range(0, len(batch), batch_size):
            chunk = batch[i:i + batch_size]
            served = None
            if _same_names(chunk):
                served = t.serve_many(model, pd.DataFrame([fe.features for fe in chunk]),
                                      len(chunk))
            if served is None:
                served = [t.serve(model, fe.features) for fe in chunk]
            now = clock()
            for fe, v in zip(chunk, served, strict=True):
                ev = fe.event
                out.append(Prediction(ev.event_id, ev.key, v if kind == "binary" else None,
                                      t.decide(v), name, version, labels_learned, ev.ts, now,
                                      proba=v if kind == "multiclass" else None))
        return out

    return score


def _same_names(chunk: list[FeaturedEvent]) -> bool:
    first = chunk[0].features.keys()
    return all(fe.features.keys() == first for fe in chunk)


def topic_partitions(settings: Settings, topic: str, timeout: float = 5.0) -> int:
    """How many partitions ``topic`` has; a ConfigError if it does not exist or the brokers
    cannot be reached (librdkafka's connection log is kept off the terminal)."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers,
                         **settings.librdkafka()}, logger=_QUIET)
    try:
        md = admin.list_topics(timeout=timeout)
    except KafkaException as ex:
        raise ConfigError(f"--brokers: cannot reach {settings.kafka_bootstrap_servers}: "
                          f"{ex.args[0].str() if ex.args else ex}") from None
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        raise ConfigError(f"--topic: topic {topic!r} does not exist")
    return len(t.partitions)


class _Quiet:
    """A logger for librdkafka that drops its lines: the one error line is ours."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    debug = info = warning = error = critical = exception = log


_QUIET = _Quiet()


def build_flow(
    source: Any, settings: Settings, model: Any, meta: dict[str, Any], *, output: Any,
    deadletters: Any, batch_size: int = 1000, stream: StreamFile | None = None,
) -> Dataflow:
    stream = stream if stream is not None else stream_of(settings, STREAMS / "fraud.toml")
    flow = Dataflow("undertow_score")
    raw = op.input("input", flow, source)
    events = decode_events("decode_events", raw, schema=stream.events)
    features = featurize(events.oks, settings, stream)
    featured: Stream[FeaturedEvent] = features.featured
    score = score_batch_fn(model, name=str(meta["name"]), version=int(meta["version"]),
                           labels_learned=int(meta["labels_learned"]),
                           threshold=settings.threshold, batch_size=batch_size,
                           target=target_of(settings, stream))
    scored = op.flat_map_batch("score", featured, score)
    op.output("predictions_out", scored, output)
    op.output("deadletter_out", op.merge("dead", events.errs, features.late), deadletters)
    return flow


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dataflows.score", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stream", help="the stream file (default: UNDERTOW_STREAM, else "
                                     "streams/fraud.toml)")
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
        overrides: dict[str, Any] = {"tail": False, "start_from": "earliest"}
        if a.brokers:
            overrides["kafka_bootstrap_servers"] = a.brokers
        settings = load_settings(**overrides)
        stream = stream_of(settings, a.stream or settings.stream or STREAMS / "fraud.toml")
        model, meta = load_checkpoint(a.checkpoint)
        try:
            check_checkpoint_stream(meta, stream)
        except CheckpointError as ex:
            raise ConfigError(f"--checkpoint: {ex}") from None
        if a.input:
            check_jsonl(a.input)  # a file that is not JSON Lines is an error, not "scored 0"
            source: Any = JsonlSource(a.input, name="events")
        else:
            topic_partitions(settings, a.topic)
            source = kafka_source(settings, a.topic)
    except (CheckpointError, ConfigError, OSError) as ex:
        print(f"undertow score: {ex}", file=sys.stderr)
        return 2
    dead_path = a.deadletters or f"{a.output.removesuffix('.jsonl')}.deadletters.jsonl"
    for path in (a.output, dead_path):
        open(path, "wb").close()  # a fresh file each run
    t0 = time.perf_counter()
    run_main(build_flow(source, settings, model, meta, batch_size=a.batch_size, stream=stream,
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
