"""The card-fraud dataflow: Kafka events and delayed labels in, scored predictions out.

Run it with ``python -m bytewax.run dataflows.fraud:flow``; settings come from ``UNDERTOW_*``
environment variables (:mod:`connectors.settings`). Importing this module reads the environment
and builds the graph, and does no network or file I/O.

    events ─► decode ─► base features ─► merchant window ─► card window ──┐
                └─ errs ─► dead letters                                   ▼
    labels ─► decode ────────────────────────────────────────► serve and learn ─► predictions
                └─ errs ─► dead letters ◄──── unusable labels ───────┘  │ └──► shadow predictions
    control ─► decode ────────────────────────────────────────────────────┘

The model step serves the champion (``UNDERTOW_MODEL``) and scores the challengers
(``UNDERTOW_CHALLENGERS``) in shadow. Given a ``replay`` source (:mod:`connectors.replay`), the same
graph reads one merged, time-ordered input and the model step runs in ordered mode: this is how
backtests run the live code (:mod:`dataflows.backtest`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream

from connectors.checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointPolicy,
    ModelStore,
    load_checkpoint,
)
from connectors.kafka import (
    dead_letter_sink,
    kafka_source,
    partition_count,
    prediction_sink,
    shadow_sink,
    window_sink,
)
from connectors.settings import ConfigError, Settings, load_settings
from operators.decode import decode_controls, decode_events, decode_labels
from operators.features import FeaturesOut, spec_features
from operators.learning import serve_and_learn
from undertow import fraud
from undertow.drift import FeatureDrift
from undertow.featurespec import FeatureSpec, SpecError, load_spec
from undertow.learning import OnlineLearner, PromotionRule
from undertow.models import make_model
from undertow.schema import Event, EventSchema


def make_learner(
    settings: Settings,
    *,
    label_partitions: int | None = None,
    event_partitions: int | None = None,
    replay: bool = False,
) -> OnlineLearner:
    """The model step's state from settings. In a ``replay``, stamps come from event time and
    every learned label is also emitted as an :class:`~undertow.schema.Outcome`."""
    s = settings
    promotion = None
    if s.promotion_metric:
        promotion = PromotionRule(
            s.promotion_metric, s.promotion_margin, s.promotion_min_labels, s.promotion_every
        )
    model, version, learned = make_model(settings.model, seed=settings.model_seed), 1, 0
    if s.start_checkpoint:
        model, meta = load_checkpoint(_store(s).resolve(s.start_checkpoint, s.model_name))
        version, learned = int(meta["version"]), int(meta["labels_learned"])
    learner = OnlineLearner(
        settings.model_name,
        model,
        version=version,
        challengers={
            name: make_model(kind, seed=s.model_seed)
            for name, kind in s.challenger_models.items()
        },
        promotion=promotion,
        ttl_clock=s.label_ttl_clock,
        wall_clock=None if replay else time.time,
        emit_outcomes=replay,
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
    learner.slots[s.model_name].labels_learned = learned
    return learner


def _store(s: Settings) -> ModelStore:
    return ModelStore(s.model_dir or ".", keep=s.checkpoint_keep)


def check_model_settings(s: Settings) -> None:
    """Start-up checks of the model settings that need the file system: one clear line."""
    if (s.checkpoint_every_labels or s.checkpoint_every_s) and not s.model_dir:
        raise ConfigError("UNDERTOW_MODEL_DIR: must be set to write checkpoints "
                          "(UNDERTOW_CHECKPOINT_EVERY_LABELS / _EVERY_S)")
    if s.start_checkpoint:
        try:
            load_checkpoint(_store(s).resolve(s.start_checkpoint, s.model_name))
        except CheckpointError as ex:
            raise ConfigError(f"UNDERTOW_START_CHECKPOINT: {ex}") from None


def model_loader(s: Settings):
    """Loads a ``swap`` command's checkpoint (a path, or relative to UNDERTOW_MODEL_DIR)."""
    store = _store(s)

    def load(ref: str) -> tuple[object, int | None]:
        model, meta = load_checkpoint(store.resolve(ref, ""))
        return model, int(meta["version"])

    return load


SPECS = Path(__file__).resolve().parents[1] / "specs"


@dataclass(frozen=True)
class Scenario:
    """What differs between streams: the event schema, the default feature spec, the label's
    key and value fields. The graph, the operators and the settings are the same."""

    name: str
    schema: EventSchema
    spec_file: str
    label_key_field: str
    label_value_field: str


FRAUD = Scenario("fraud", fraud.SCHEMA, "fraud.toml", "card_id", "is_fraud")


def feature_spec(s: Settings, scenario: Scenario = FRAUD) -> FeatureSpec:
    """The feature spec: ``UNDERTOW_FEATURE_SPEC`` or the scenario's shipped one."""
    path = s.feature_spec or str(SPECS / scenario.spec_file)
    try:
        return load_spec(path)
    except SpecError as ex:
        raise ConfigError(f"UNDERTOW_FEATURE_SPEC: {ex}") from None


def featurize(
    events: Stream[Event], s: Settings, *, partitions: Callable[[], int | None] | None = None,
    scenario: Scenario = FRAUD,
) -> FeaturesOut:
    """The spec's features of each event, as of its own time (shared with bulk scoring)."""
    return spec_features(
        "features", events, spec=feature_spec(s, scenario), shards=s.feature_shards,
        allowed_lateness_ms=int(s.allowed_lateness_s * 1000), partitions=partitions,
    )


def checkpointer(
    s: Settings, *, replay: bool, scenario: Scenario = FRAUD
) -> Checkpointer | None:
    """Checkpoints every N labels and/or T seconds; a replay uses labels only (deterministic)."""
    every_s = None if replay or not s.checkpoint_every_s else s.checkpoint_every_s
    every_labels = s.checkpoint_every_labels or None
    if not s.model_dir or (every_s is None and every_labels is None):
        return None
    # The spec's name goes into meta.json: bulk scoring refuses a model served other features.
    return Checkpointer(_store(s), CheckpointPolicy(every_labels, every_s),
                        feature_spec=feature_spec(s, scenario).name)


def build_flow(
    settings: Settings | None = None,
    *,
    sources: dict[str, Any] | None = None,
    sinks: dict[str, Any] | None = None,
    replay: Any = None,
    scenario: Scenario = FRAUD,
) -> Dataflow:
    """The fraud dataflow. ``sources`` (``events``, ``labels``, ``control``) and ``sinks``
    (``predictions``, ``deadletter``, ``shadow``, ``outcomes``, ``summaries``) replace the Kafka
    connectors, e.g. with Bytewax's testing ones; ``outcomes`` and ``summaries`` are only written
    when given. ``replay`` (a :class:`connectors.replay.ReplaySource`) replaces both inputs with
    one merged, time-ordered input and puts the model step in ordered mode."""
    s = settings if settings is not None else load_settings()
    check_model_settings(s)
    sources = sources or {}
    sinks = sinks or {}

    flow = Dataflow(f"undertow_{scenario.name}")
    if replay is not None:
        merged_in = op.input("replay", flow, replay)
        split_in = op.branch("split_replay", merged_in, lambda r: r.topic in replay.event_topics)
        raw_events, raw_labels = split_in.trues, split_in.falses
    else:
        raw_events = op.input(
            "events", flow, sources.get("events") or kafka_source(s, s.events_topic)
        )
        raw_labels = op.input(
            "labels", flow, sources.get("labels") or kafka_source(s, s.labels_topic)
        )
    controls = None
    control_errs = None
    if "control" in sources or (s.control_topic and replay is None):
        raw_control = op.input(
            "control", flow, sources.get("control") or kafka_source(s, s.control_topic)
        )
        decoded_control = decode_controls("decode_control", raw_control)
        controls, control_errs = decoded_control.oks, decoded_control.errs
    events = decode_events("decode_events", raw_events, schema=scenario.schema)
    labels = decode_labels("decode_labels", raw_labels, key_field=scenario.label_key_field,
                           value_field=scenario.label_value_field)

    features = featurize(
        events.oks, s, scenario=scenario,
        partitions=None if replay is not None or "events" in sources
        else (lambda: partition_count(s, s.events_topic)),
    )
    featured = features.featured
    def learner_at_run_time() -> OnlineLearner:
        if replay is not None:  # one merged input: its order is the watermark
            return make_learner(s, replay=True)
        # Watermarks wait for every partition of their stream; ask the broker how many there
        # are (at run time, on the worker: importing this module does no I/O).
        return make_learner(
            s,
            label_partitions=None if "labels" in sources else partition_count(s, s.labels_topic),
            event_partitions=None if "events" in sources else partition_count(s, s.events_topic),
        )

    gaps = None
    if replay is not None:  # records that never reach the model step: it must not wait for them
        gaps = op.merge("gaps", events.errs, labels.errs, features.late)
    served = serve_and_learn(
        "model", featured, labels.oks, model_name=s.model_name, make_learner=learner_at_run_time,
        controls=controls, gaps=gaps, ordered=replay is not None,
        load_model=model_loader(s) if s.model_dir else None,
        after_batch=checkpointer(s, replay=replay is not None, scenario=scenario),
    )

    op.output("predictions_out", served.predictions, sinks.get("predictions") or prediction_sink(s))
    if "shadow" in sinks:
        op.output("shadow_out", served.shadow, sinks["shadow"])
    elif s.shadow_topic:
        op.output("shadow_out", served.shadow, shadow_sink(s))
    if "features" in sinks:
        op.output("features_out", features.windows, sinks["features"])
    elif s.features_topic and replay is None:
        op.output("features_out", features.windows, window_sink(s))
    for name in ("outcomes", "summaries"):
        if name in sinks:
            op.output(f"{name}_out", getattr(served, name), sinks[name])
    dead_streams = [events.errs, labels.errs, features.late, served.errs]
    if control_errs is not None:
        dead_streams.append(control_errs)
    dead = op.merge("dead_letters", *dead_streams)
    op.output("deadletter_out", dead, sinks.get("deadletter") or dead_letter_sink(s))
    return flow


def flow_from_environment(scenario: Scenario = FRAUD) -> Dataflow:
    """The dataflow of ``scenario`` from ``UNDERTOW_*``; a bad setting exits with one line."""
    try:
        env = dict(os.environ)
        overrides = {} if "UNDERTOW_MODEL_NAME" in env else {"model_name": scenario.name}
        return build_flow(load_settings(env, **overrides), scenario=scenario)
    except ConfigError as ex:
        # One clear line naming the setting, not a traceback.
        print(f"undertow: bad setting: {ex}", file=sys.stderr)
        raise SystemExit(2) from None


flow = flow_from_environment(FRAUD)
