"""The one graph every stream runs through: events and delayed labels in, predictions out.

    UNDERTOW_STREAM=streams/payments.toml python -m bytewax.run dataflows.stream:flow

The stream file (:mod:`undertow.stream`) says what differs between streams: the schemas, the
target, the features and the models. The graph, the operators and the settings
(:mod:`connectors.settings`) are the same for every stream::

    events ─► decode ─► features (one step per entity key) ──────────────┐
                └─ errs ─► dead letters      └─ late ─► dead letters     ▼
    labels ─► decode ──────────────────────────────────────────► serve and learn ─► predictions
                └─ errs ─► dead letters ◄──── unusable labels ───────┘  │ └──► shadow predictions
    control ─► decode ───────────────────────────────────────────────────┤
    requests ─► decode ─► (with the events, read-only) ─► features ──────┘ ─► replies
                 └─ errs ─► dead letters, error replies

The model step serves the champion (the stream's first model, or ``UNDERTOW_MODEL``) and scores
the challengers (its other models, or ``UNDERTOW_CHALLENGERS``) in shadow. Requests
(``UNDERTOW_REQUESTS_TOPIC``, docs/requests.md) read the same entity state and the same champion
and change neither: they are answered on the replies topic. Where the records come
from and go to are objects: :class:`LiveInputs` (Kafka, or given Bytewax sources) or
:class:`ReplayInputs` (one merged, time-ordered input: the model step runs in ordered mode, which
is how backtests run the live code), and :class:`Outputs`. Importing this module builds nothing:
``flow`` is made on first access, from the environment.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream

from connectors import metrics
from connectors.alignment import SourceAlignment
from connectors.checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointPolicy,
    ModelStore,
    load_checkpoint,
)
from connectors.kafka import (
    KafkaRecord,
    dead_letter_sink,
    install_fault_hook,
    kafka_source,
    partition_count,
    prediction_sink,
    shadow_sink,
    window_sink,
)
from connectors.settings import ConfigError, Settings, load_settings, parse_challengers
from connectors.replies import reply_sink, with_stream_topics
from connectors.transactional import ResumableSink, prediction_key, resumable_prediction_sink
from connectors.updates import KafkaUpdates, MemoryUpdates
from operators.decode import decode_controls, decode_events, decode_labels, decode_requests
from operators.features import FeaturesOut, spec_features
from operators.learning import serve_and_learn
from operators.replicas import serve_replicas
from undertow.drift import FeatureDrift
from undertow.ensemble import Ensemble, from_stream
from undertow.errors import StreamError
from undertow.learning import LearnerConfig, OnlineLearner, PromotionRule
from undertow.models import make_model
from undertow.replica import Replica, UpdatePolicy
from undertow.schema import DeadLetter, Event
from undertow.features.state import spec_names
from undertow.stream import Stream as StreamFile
from undertow.targets import Target, target
from undertow.stream import load_stream

#: UNDERTOW_MAX_PENDING when unset: in memory a pending prediction holds about 1.5 KB; on disk
#: (UNDERTOW_STATE_DIR) about 230 bytes of disk and no memory of its own.
MAX_PENDING_IN_MEMORY = 1_000_000
MAX_PENDING_ON_DISK = 1_000_000_000

#: The shipped stream files.
STREAMS = Path(__file__).resolve().parents[1] / "streams"


# -- the stream and its models ---------------------------------------------------------------------

def shipped(name: str) -> StreamFile:
    """A shipped stream file by name: ``shipped("fraud")`` is ``streams/fraud.toml``."""
    return load_stream(STREAMS / f"{name}.toml")


def stream_of(s: Settings, path: str | os.PathLike[str] | None = None) -> StreamFile:
    """The stream file ``path`` (default: ``UNDERTOW_STREAM``), checked whole; the feature
    sections come from ``UNDERTOW_FEATURE_SPEC`` instead when that is set."""
    path = path or s.stream
    if not path:
        shipped = ", ".join(sorted(f"streams/{p.name}" for p in STREAMS.glob("*.toml")))
        raise ConfigError(f"UNDERTOW_STREAM: must name a stream file (shipped: {shipped})")
    return load_stream(path, features_from=s.feature_spec or None)


def served_models(s: Settings, stream: StreamFile) -> list[tuple[str, str]]:
    """(name, model expression) of the champion, then the challengers: the stream's models,
    with ``UNDERTOW_MODEL_NAME`` / ``UNDERTOW_MODEL`` / ``UNDERTOW_CHALLENGERS`` overriding."""
    champion = stream.models[0]
    name, expr = s.model_name or champion.name, s.model or champion.model
    rest = (list(s.challenger_models.items()) if s.challengers
            else [(m.name, m.model) for m in stream.models[1:]])
    if any(n == name for n, _ in rest):
        raise ConfigError(f"UNDERTOW_CHALLENGERS: a challenger has the champion's name {name!r}")
    return [(name, expr), *rest]


def champion_name(s: Settings, stream: StreamFile) -> str:
    return s.model_name or stream.models[0].name


def make_learner(
    settings: Settings,
    stream: StreamFile,
    *,
    label_partitions: int | None = None,
    event_partitions: int | None = None,
    replay: bool = False,
) -> OnlineLearner:
    """The model step's state from settings. In a ``replay``, stamps come from event time and
    every learned label is also emitted as an :class:`~undertow.schema.Outcome`. With the
    stream's ``[ensemble]``, the ensemble of the served models is served and they are its
    components, in shadow."""
    s = settings
    (champ, champ_expr), challengers = served_models(s, stream)[0], served_models(s, stream)[1:]
    promotion = None
    if s.promotion_metric:
        promotion = PromotionRule(
            s.promotion_metric, s.promotion_margin, s.promotion_min_labels, s.promotion_every
        )
    model, version, learned = make_model(champ_expr, seed=settings.model_seed), 1, 0
    if s.start_checkpoint:
        model, meta = load_checkpoint(_store(s).resolve(s.start_checkpoint, champ))
        version, learned = int(meta["version"]), int(meta["labels_learned"])
    config = LearnerConfig(
        target=target_of(s, stream),
        label_ttl_ms=stream.label_ttl_ms if s.label_ttl_s is None else int(s.label_ttl_s * 1000),
        early_label_ttl_ms=int(settings.early_label_ttl_s * 1000),
        ttl_clock=s.label_ttl_clock,
        max_pending=settings.max_pending or (
            MAX_PENDING_ON_DISK if settings.state_dir else MAX_PENDING_IN_MEMORY),
        threshold=settings.threshold,
        quality_window=settings.quality_window,
        label_partitions=label_partitions,
        event_partitions=event_partitions,
        promotion=promotion,
        emit_outcomes=replay,
        max_future_skew_ms=int(s.max_future_skew_s * 1000),
    )
    ensemble = ensemble_of(s, stream)
    learner = OnlineLearner(
        champ,
        model,
        config,
        version=version,
        challengers={name: make_model(expr, seed=s.model_seed) for name, expr in challengers},
        feature_drift=FeatureDrift(
            reference_size=settings.drift_reference_size,
            recent_size=settings.drift_recent_size,
            every=settings.drift_every,
            refresh_every=settings.drift_refresh_every,
            # warm: once every feature window has filled, and after UNDERTOW_DRIFT_WARMUP_EVENTS
            warmup_ms=max((f.window_ms for f in stream.features.rolling), default=0),
            warmup_events=settings.drift_warmup_events,
            stride=settings.drift_stride,
        ),
        wall_clock=None if replay else time.time,
        ensemble=ensemble,
        pending=_state_on_disk(s, stream, champ),
    )
    learner.slots[champ].labels_learned = learned
    return learner


def make_replica(settings: Settings, stream: StreamFile) -> Replica:
    """A scoring replica of the model step's models (replicated mode): the models the trainer
    starts with (its checkpoint, or new ones from the same seed), until the first update."""
    own = make_learner(settings.model_copy(update={"state_dir": ""}), stream)
    return Replica.of(own)


def _state_on_disk(s: Settings, stream: StreamFile, step: str) -> Any:
    """With UNDERTOW_STATE_DIR, the label join's state in RocksDB (a new, empty database for
    this stream's model step); None (in memory) without."""
    if not s.state_dir:
        return None
    from connectors.store import RocksJoinState

    return RocksJoinState(Path(s.state_dir) / f"{stream.name}.{step}", keep=s.state_keep)


def ensemble_of(s: Settings, stream: StreamFile) -> Ensemble | None:
    """The stream's ``[ensemble]`` over the models served (the stream's or the settings'), or
    None; a ConfigError naming the file and the key if it does not fit them."""
    if stream.ensemble is None:
        return None
    try:
        return from_stream(stream.ensemble, target_of(s, stream),
                           [n for n, _ in served_models(s, stream)], seed=s.model_seed)
    except ValueError as ex:
        raise ConfigError(f"{stream.path or stream.name}: {ex}") from None


def target_of(s: Settings, stream: StreamFile) -> Target:
    """The stream's target, with the decision threshold of ``UNDERTOW_THRESHOLD``."""
    return target(stream.labels.target, threshold=s.threshold, classes=stream.labels.classes)


def _store(s: Settings) -> ModelStore:
    return ModelStore(s.model_dir or ".", keep=s.checkpoint_keep)


def check_model_settings(s: Settings, stream: StreamFile) -> None:
    """Start-up checks of the model settings that need the file system: one clear line."""
    if s.model_mode == "replicated" and s.delivery == "exactly_once":
        raise ConfigError("UNDERTOW_MODEL_MODE: replicated mode writes predictions from every "
                          "worker; UNDERTOW_DELIVERY=exactly_once needs exact mode")
    if (s.checkpoint_every_labels or s.checkpoint_every_s) and not s.model_dir:
        raise ConfigError("UNDERTOW_MODEL_DIR: must be set to write checkpoints "
                          "(UNDERTOW_CHECKPOINT_EVERY_LABELS / _EVERY_S)")
    served_models(s, stream)
    ensemble_of(s, stream)
    measures = target_of(s, stream).metrics
    if s.promotion_metric and s.promotion_metric not in measures:
        raise ConfigError(f"UNDERTOW_PROMOTION_METRIC: {s.promotion_metric!r} is not a measure "
                          f"of the stream's {stream.labels.target} target; one of "
                          f"{', '.join(measures)}")
    if s.start_checkpoint:
        try:
            _, meta = load_checkpoint(_store(s).resolve(s.start_checkpoint,
                                                        champion_name(s, stream)))
            check_checkpoint_stream(meta, stream)
        except CheckpointError as ex:
            raise ConfigError(f"UNDERTOW_START_CHECKPOINT: {ex}") from None


def check_checkpoint_stream(meta: dict[str, Any], stream: StreamFile) -> None:
    """A checkpoint made for another stream (other schema, target or features) is refused."""
    digest = meta.get("stream_digest")
    if digest is not None and digest != stream.digest:
        raise CheckpointError(
            f"the checkpoint was made for stream {meta.get('stream')!r} (digest {digest}); "
            f"{stream.path or stream.name} is another (digest {stream.digest}: its schema, "
            "target or features differ)")
    trained_on = meta.get("feature_spec")
    if digest is None and trained_on is not None and trained_on != stream.name:
        raise CheckpointError(f"the checkpoint was served the features of {trained_on!r}, "
                              f"this run computes {stream.name!r}")


def model_loader(s: Settings) -> Callable[[str], tuple[object, int | None]]:
    """Loads a ``swap`` command's checkpoint (a path, or relative to UNDERTOW_MODEL_DIR)."""
    store = _store(s)

    def load(ref: str) -> tuple[object, int | None]:
        model, meta = load_checkpoint(store.resolve(ref, ""))
        return model, int(meta["version"])

    return load


def own_topics(s: Settings) -> tuple[str, ...]:
    """The dataflow's own topics: a request may not name one as its ``reply_to``."""
    return tuple(t for t in (s.events_topic, s.labels_topic, s.predictions_topic,
                             s.deadletter_topic, s.control_topic, s.shadow_topic,
                             s.features_topic, s.requests_topic) if t)


def featurize(
    events: Stream[Event], s: Settings, stream: StreamFile, *,
    partitions: Callable[[], int | None] | None = None,
) -> FeaturesOut:
    """The stream's features of each event, as of its own time (shared with bulk scoring)."""
    lateness = stream.features.allowed_lateness_ms if s.allowed_lateness_s is None \
        else int(s.allowed_lateness_s * 1000)
    return spec_features(
        "features", events, spec=stream.features, shards=s.feature_shards,
        allowed_lateness_ms=lateness, partitions=partitions,
        max_future_skew_ms=int(s.max_future_skew_s * 1000),
    )


def checkpointer(s: Settings, stream: StreamFile, *, replay: bool) -> Checkpointer | None:
    """Checkpoints every N labels and/or T seconds; a replay uses labels only (deterministic)."""
    every_s = None if replay or not s.checkpoint_every_s else s.checkpoint_every_s
    every_labels = s.checkpoint_every_labels or None
    if not s.model_dir or (every_s is None and every_labels is None):
        return None
    # The stream's name and digest go into meta.json: scoring refuses another stream's model.
    return Checkpointer(_store(s), CheckpointPolicy(every_labels, every_s),
                        feature_spec=stream.name, stream_digest=stream.digest)


# -- where records come from and go to -------------------------------------------------------------

@dataclass(frozen=True)
class RawInputs:
    """The undecoded records of one dataflow; ``control`` is None without a control topic and
    ``requests`` without a requests topic."""

    events: Stream[KafkaRecord]
    labels: Stream[KafkaRecord]
    control: Stream[KafkaRecord] | None
    requests: Stream[KafkaRecord] | None = None


@dataclass
class LiveInputs:
    """The live inputs: each of ``events``, ``labels``, ``control``, ``requests`` from the given
    Bytewax source (tests) or else from its Kafka topic (``control`` only when
    ``UNDERTOW_CONTROL_TOPIC`` is set, ``requests`` when ``UNDERTOW_REQUESTS_TOPIC`` is). Events
    and labels are read aligned by event time (catch-up); commands and requests never wait.
    Watermarks wait for every partition of a Kafka topic, asked of the broker at run time on
    the worker (building the graph does no I/O); a given source's partitions are not known."""

    sources: dict[str, Any] = field(default_factory=dict)
    ordered = False

    def attach(self, flow: Dataflow, s: Settings, stream: StreamFile | None = None) -> RawInputs:
        # Catch-up: the events topic is read no further ahead of the labels than
        # UNDERTOW_MAX_SOURCE_LAG_S of event time (connectors/alignment.py, docs/broker.md).
        lag_ms = round(s.max_source_lag_s * 1000)
        align = SourceAlignment(lag_ms) if lag_ms > 0 else None
        times = {"events": stream.events.ts_field if stream else "ts",
                 "labels": stream.labels.ts_field if stream else "ts"}

        def inp(name: str, topic: str) -> Stream[KafkaRecord]:
            source = self.sources.get(name) or (
                kafka_source(s, topic, alignment=align, side=name, time_field=times[name])
                if name in times else kafka_source(s, topic))
            return op.input(name, flow, source)

        control = requests = None
        if "control" in self.sources or s.control_topic:
            control = inp("control", s.control_topic)
        if "requests" in self.sources or s.requests_topic:
            requests = inp("requests", s.requests_topic)
        return RawInputs(inp("events", s.events_topic), inp("labels", s.labels_topic), control,
                         requests)

    def partitions(self, s: Settings, name: str) -> int | None:
        """How many partitions input ``name`` has (None: not known; wait for none)."""
        if name in self.sources:
            return None
        return partition_count(s, s.events_topic if name == "events" else s.labels_topic)


@dataclass
class ReplayInputs:
    """One merged, time-ordered input (a :class:`connectors.replay.ReplaySource`): its order is
    the watermark, so no partitions are waited for, and records that never reach the model step
    (dead letters, late events) are passed to it as gaps so it does not wait for them."""

    replay: Any
    ordered = True

    def attach(self, flow: Dataflow, s: Settings, stream: StreamFile | None = None) -> RawInputs:
        merged = op.input("replay", flow, self.replay)
        split = op.branch("split_replay", merged, lambda r: r.topic in self.replay.event_topics)
        return RawInputs(split.trues, split.falses, None)

    def partitions(self, s: Settings, name: str) -> int | None:
        return None


#: The outputs of the graph; the first two always exist.
OUTPUT_NAMES = ("predictions", "deadletter", "shadow", "features", "outcomes", "summaries",
                "replies")


@dataclass
class Outputs:
    """Where each output goes: the given Bytewax sink, or else (with ``kafka``) its topic:
    predictions and dead letters always, the challengers' shadow predictions and closed windows
    when ``UNDERTOW_SHADOW_TOPIC`` / ``UNDERTOW_FEATURES_TOPIC`` are set, replies to requests
    when there are requests (:mod:`connectors.replies`). ``outcomes`` and
    ``summaries`` (learned labels and end-of-input model summaries, for reports) are written only
    to given sinks."""

    sinks: dict[str, Any] = field(default_factory=dict)
    kafka: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.sinks) - set(OUTPUT_NAMES))
        if unknown:
            raise ValueError(f"unknown outputs {unknown}; expected some of {OUTPUT_NAMES}")

    def sink(self, name: str, s: Settings) -> Any | None:
        if name in self.sinks:
            return self.sinks[name]
        if not self.kafka:
            return None
        if name in ("predictions", "shadow") and s.delivery == "exactly_once":
            if name == "predictions" or s.shadow_topic:
                return resumable_prediction_sink(s, shadow=name == "shadow")
        if name == "predictions":
            return prediction_sink(s)
        if name == "deadletter":
            return dead_letter_sink(s)
        if name == "shadow" and s.shadow_topic:
            return shadow_sink(s)
        if name == "features" and s.features_topic:
            return window_sink(s)
        if name == "replies":
            return reply_sink(s)
        return None


def count_dead_letters(batch: list[DeadLetter]) -> list[DeadLetter]:
    """The one counting tap before the dead-letter sink: by step and reason."""
    counts: dict[tuple[str, str], int] = {}
    for d in batch:
        k = (d.step, d.reason)
        counts[k] = counts.get(k, 0) + 1
    for (step, reason), n in counts.items():
        metrics.DEAD_LETTERS.labels(step=step, reason=reason).inc(n)
    return batch


# -- the graph ------------------------------------------------------------------------------------

def build_flow(
    settings: Settings | None = None,
    stream: StreamFile | None = None,
    *,
    inputs: LiveInputs | ReplayInputs | None = None,
    outputs: Outputs | None = None,
    sources: dict[str, Any] | None = None,
    sinks: dict[str, Any] | None = None,
    replay: Any = None,
) -> Dataflow:
    """The dataflow of ``stream`` (default: ``UNDERTOW_STREAM``). ``inputs`` and ``outputs``
    default to Kafka; ``sources`` / ``sinks`` / ``replay`` are shorthands for
    ``LiveInputs(sources)`` / ``Outputs(sinks)`` / ``ReplayInputs(replay)``."""
    s = settings if settings is not None else load_settings()
    stream = stream if stream is not None else stream_of(s)
    s = with_stream_topics(s, stream)
    check_model_settings(s, stream)
    if inputs is None:
        inputs = ReplayInputs(replay) if replay is not None else LiveInputs(dict(sources or {}))
    if outputs is None:
        outputs = Outputs(dict(sinks or {}), kafka=not inputs.ordered)
    ordered = inputs.ordered

    flow = Dataflow(f"undertow_{stream.name}")
    raw = inputs.attach(flow, s, stream)
    controls = control_errs = None
    if raw.control is not None:
        decoded_control = decode_controls("decode_control", raw.control,
                                          max_record_bytes=s.max_record_bytes)
        controls, control_errs = decoded_control.oks, decoded_control.errs
    events = decode_events("decode_events", raw.events, schema=stream.events,
                           max_record_bytes=s.max_record_bytes)
    labels = decode_labels("decode_labels", raw.labels, schema=stream.labels,
                           max_record_bytes=s.max_record_bytes)

    reply_extra = {"stream": stream.name}
    requests = None
    if raw.requests is not None:
        requests = decode_requests(
            "decode_requests", raw.requests, schema=stream.events,
            own_topics=own_topics(s), max_record_bytes=s.max_record_bytes,
            reply_extra=reply_extra)
        # A request travels with the events through the feature steps (it reads the same
        # entity state, as of its time, and changes none of it) to the model step, which answers.
        to_featurize = op.merge("events_and_requests", events.oks, requests.featured)
    else:
        to_featurize = events.oks
    features = featurize(to_featurize, s, stream,
                         partitions=lambda: inputs.partitions(s, "events"))

    def learner_at_run_time() -> OnlineLearner:
        return make_learner(
            s, stream, replay=ordered,
            label_partitions=inputs.partitions(s, "labels"),
            event_partitions=inputs.partitions(s, "events"),
        )

    # Replicated mode (docs/scaling.md): replicas on every worker serve; the model step is the
    # trainer, learning on what they served and publishing model updates. Replays are exact.
    replicated = s.model_mode == "replicated" and not ordered
    replicas = updates = None
    if replicated:
        updates = MemoryUpdates() if inputs.sources or not outputs.kafka else KafkaUpdates(s)
        replicas = serve_replicas(
            "replicas", features.featured, make_replica=lambda: make_replica(s, stream),
            make_feed=updates.feed, reply_extra=reply_extra)

    gaps = op.merge("gaps", events.errs, labels.errs, features.late) if ordered else None
    # Replicated mode: the labels cross to the trainer's worker a list per batch, not one by one.
    to_learn = op.flat_map_batch("bundle_labels", labels.oks, lambda b: [b]) if replicated \
        else labels.oks
    served = serve_and_learn(
        "model", None if replicas is not None else features.featured, to_learn,
        model_name=champion_name(s, stream),
        make_learner=learner_at_run_time, controls=controls, gaps=gaps, ordered=ordered,
        load_model=model_loader(s) if s.model_dir else None,
        after_batch=checkpointer(s, stream, replay=ordered),
        requests=requests.describes if requests is not None else None,
        reply_extra=reply_extra,
        describe_extra={"features": list(spec_names(stream.features))},
        served=replicas.served if replicas is not None else None,
        publish=UpdatePolicy(s.model_update_every_labels, s.model_update_every_ms)
        if replicated else None,
    )
    if updates is not None:
        op.output("model_updates_out", served.updates, updates.sink())

    scored = replicas if replicas is not None else served
    streams = {"predictions": scored.predictions, "shadow": scored.shadow,
               "features": features.windows, "outcomes": served.outcomes,
               "summaries": served.summaries}
    for name, out in streams.items():
        sink = outputs.sink(name, s)
        if isinstance(sink, ResumableSink):  # routed to its lane by record key
            out = op.key_on(f"{name}_lane", out, prediction_key)
        if sink is not None:
            op.output(f"{name}_out", out, sink)
    dead_streams = [events.errs, labels.errs, features.late, served.errs]
    if replicas is not None:
        dead_streams.append(replicas.errs)
    if control_errs is not None:
        dead_streams.append(control_errs)
    if requests is not None:
        answered = [requests.replies, served.replies]
        if replicas is not None:
            answered.append(replicas.replies)
        replies = op.merge("replies", *answered)
        op.output("replies_out", replies, outputs.sink("replies", s))
        dead_streams.append(requests.errs)
    dead = op.flat_map_batch("count_dead_letters", op.merge("dead_letters", *dead_streams),
                             count_dead_letters)
    op.output("deadletter_out", dead, outputs.sink("deadletter", s))
    return flow


# -- from the environment --------------------------------------------------------------------------

def flow_from_environment(stream_path: str | os.PathLike[str] | None = None) -> Dataflow:
    """The dataflow of the stream file ``stream_path`` (default: ``UNDERTOW_STREAM``) from
    ``UNDERTOW_*``; a bad setting or stream file exits with one line."""
    install_fault_hook()  # a Kafka fault at run time is one line and a status (docs/broker.md)
    try:
        s = load_settings(dict(os.environ))
        return build_flow(s, stream_of(s, stream_path))
    except StreamError as ex:
        # One clear line naming the file, the section and the field, not a traceback.
        print(f"undertow: bad stream file: {ex}", file=sys.stderr)
        raise SystemExit(2) from None
    except ConfigError as ex:
        # One clear line naming the setting.
        print(f"undertow: bad setting: {ex}", file=sys.stderr)
        raise SystemExit(2) from None


def lazy_flow(stream_path: str | os.PathLike[str] | None = None) -> Callable[[str], Any]:
    """A module ``__getattr__`` that builds ``flow`` on first access (PEP 562), so importing a
    dataflow module builds nothing, and ``python -m bytewax.run module:flow`` builds it once."""
    built: list[Dataflow] = []

    def __getattr__(name: str) -> Any:
        if name != "flow":
            raise AttributeError(name)
        if not built:
            built.append(flow_from_environment(stream_path))
        return built[0]

    return __getattr__


__getattr__ = lazy_flow()
