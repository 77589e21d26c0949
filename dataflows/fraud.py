"""The card-fraud dataflow: Kafka events and delayed labels in, scored predictions out.

Run it with ``python -m bytewax.run dataflows.fraud:flow``; settings come from ``UNDERTOW_*``
environment variables (:mod:`connectors.settings`). Importing this module reads the environment
and builds the graph, and does no network or file I/O.

    events ─► decode ─► base features ─► merchant window ─► card window ──┐
                └─ errs ─► dead letters                                   ▼
    labels ─► decode ────────────────────────────────────────► serve and learn ─► predictions
                └─ errs ─► dead letters ◄──── unusable labels ───────┘
"""

from __future__ import annotations

import sys
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from connectors.kafka import dead_letter_sink, kafka_source, partition_count, prediction_sink
from connectors.settings import ConfigError, Settings, load_settings
from operators.decode import decode_events, decode_labels
from operators.features import rolling_features
from operators.learning import serve_and_learn
from undertow import fraud
from undertow.drift import FeatureDrift
from undertow.learning import OnlineLearner
from undertow.models import make_model


def make_learner(
    settings: Settings,
    *,
    label_partitions: int | None = None,
    event_partitions: int | None = None,
) -> OnlineLearner:
    return OnlineLearner(
        settings.model_name,
        make_model(settings.model, seed=settings.model_seed),
        label_ttl_ms=int(settings.label_ttl_s * 1000),
        early_label_ttl_ms=int(settings.early_label_ttl_s * 1000),
        max_pending=settings.max_pending,
        threshold=settings.threshold,
        quality_window=settings.quality_window,
        feature_drift=FeatureDrift(
            reference_size=settings.drift_reference_size,
            recent_size=settings.drift_recent_size,
            every=settings.drift_every,
            refresh_every=settings.drift_refresh_every,
        ),
        label_partitions=label_partitions,
        event_partitions=event_partitions,
    )


def build_flow(
    settings: Settings | None = None,
    *,
    sources: dict[str, Any] | None = None,
    sinks: dict[str, Any] | None = None,
) -> Dataflow:
    """The fraud dataflow. ``sources`` (``events``, ``labels``) and ``sinks`` (``predictions``,
    ``deadletter``) replace the Kafka connectors, e.g. with Bytewax's testing ones."""
    s = settings if settings is not None else load_settings()
    sources = sources or {}
    sinks = sinks or {}
    lateness = int(s.allowed_lateness_s * 1000)

    flow = Dataflow("undertow_fraud")
    raw_events = op.input("events", flow, sources.get("events") or kafka_source(s, s.events_topic))
    raw_labels = op.input("labels", flow, sources.get("labels") or kafka_source(s, s.labels_topic))
    events = decode_events("decode_events", raw_events, schema=fraud.SCHEMA)
    labels = decode_labels("decode_labels", raw_labels)

    featured = op.map("base_features", events.oks, fraud.base_features)
    featured = rolling_features(
        "merchant_features", featured, entity_field="merchant_id", value_field=None,
        make_state=lambda: fraud.merchant_state(lateness), shards=s.feature_shards,
    )
    featured = rolling_features(
        "card_features", featured, entity_field="card_id", value_field="amount",
        make_state=lambda: fraud.card_state(lateness), shards=s.feature_shards,
        finish=fraud.derive_features,
    )
    def learner_at_run_time() -> OnlineLearner:
        # Watermarks wait for every partition of their stream; ask the broker how many there
        # are (at run time, on the worker: importing this module does no I/O).
        return make_learner(
            s,
            label_partitions=None if "labels" in sources else partition_count(s, s.labels_topic),
            event_partitions=None if "events" in sources else partition_count(s, s.events_topic),
        )

    served = serve_and_learn(
        "model", featured, labels.oks, model_name=s.model_name, make_learner=learner_at_run_time
    )

    op.output("predictions_out", served.predictions, sinks.get("predictions") or prediction_sink(s))
    dead = op.merge("dead_letters", events.errs, labels.errs, served.errs)
    op.output("deadletter_out", dead, sinks.get("deadletter") or dead_letter_sink(s))
    return flow


def _flow_from_environment() -> Dataflow:
    try:
        return build_flow()
    except ConfigError as ex:
        # One clear line naming the setting, not a traceback.
        print(f"undertow: bad setting: {ex}", file=sys.stderr)
        raise SystemExit(2) from None


flow = _flow_from_environment()
