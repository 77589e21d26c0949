"""Settings of an undertow dataflow, read once from ``UNDERTOW_*`` environment variables.

Every field has a local-development default. A bad value stops start-up with one line that names
the environment variable (:class:`ConfigError`), never a traceback.

librdkafka options (security included) pass through untouched: every variable
``UNDERTOW_KAFKA_OPT_<NAME>`` becomes the option ``<name>`` with ``_`` read as ``.``, e.g.
``UNDERTOW_KAFKA_OPT_SECURITY_PROTOCOL=SASL_SSL`` -> ``security.protocol``; or give a JSON object
in ``UNDERTOW_KAFKA_OPTIONS``. Values are treated as secrets: they are never logged or printed.

The environment is read by :func:`load_settings` from an explicit mapping (a plain pydantic model,
not pydantic-settings' implicit ``os.environ`` lookup), so tests never inherit the caller's
environment by accident.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from undertow.errors import ConfigError, UndertowError  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from undertow.stream import Stream

PREFIX = "UNDERTOW_"
KAFKA_OPT_PREFIX = f"{PREFIX}KAFKA_OPT_"


class Settings(BaseModel):
    """All settings of the fraud dataflow (and the defaults of the others)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_options: dict[str, SecretStr] = Field(default_factory=dict)
    events_topic: str = "events"
    labels_topic: str = "labels"
    predictions_topic: str = "predictions"
    deadletter_topic: str = "deadletter"
    #: Keep reading when the end of the topics is reached (live); false stops at the end (bounded).
    tail: bool = True
    #: Where a new dataflow starts reading: "earliest" or "latest". Recovery resumes regardless.
    start_from: Literal["earliest", "latest"] = "earliest"
    source_batch_size: int = Field(1000, gt=0)
    #: Catch-up: an events partition pauses while it is more than this (seconds of event time)
    #: ahead of the slowest labels or events partition still reading a backlog, so a backlog is
    #: learned as the replay learns it (connectors/alignment.py, docs/broker.md); 0 = off.
    max_source_lag_s: float = Field(1.0, ge=0)
    #: What a source does when the broker no longer has the offset it reads next (the broker
    #: lost the topic, or retention deleted it): "fail" (exit status 5, the default: nothing is
    #: skipped or re-read unnoticed), "earliest" or "latest" (read on; docs/broker.md, Faults).
    on_data_loss: Literal["fail", "earliest", "latest"] = "fail"
    #: Predictions after a crash: "at_least_once" (those scored after the last snapshot are
    #: written again on restart) or "exactly_once" (connectors/transactional.py: each written
    #: once; the topics must exist). docs/lifecycle.md, Delivery after a crash.
    delivery: Literal["at_least_once", "exactly_once"] = "at_least_once"

    #: The served model (the champion): a River expression such as
    #: "preprocessing.StandardScaler() | linear_model.LogisticRegression(l2=0.001)",
    #: "package.module:factory", or an alias (logreg, hat, arf, nb); see undertow/models.py.
    #: Empty = the stream file's first model.
    model: str = ""
    #: The champion's name (the ``model`` label on metrics and predictions); empty = the stream
    #: file's first model's name.
    model_name: str = ""
    model_seed: int = 42
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    #: A pending prediction whose label has not come this long (event time) after its event expires.
    #: Unset: the stream file's ``[labels] ttl`` (default 1 day).
    label_ttl_s: float | None = Field(None, gt=0)
    #: A label that comes before its event waits this long (event time) for it.
    early_label_ttl_s: float = Field(3_600.0, ge=0)
    #: Cap on predictions waiting for labels (the oldest expire first). Unset: 1M in memory,
    #: 1G with UNDERTOW_STATE_DIR (on disk, where 10M take 2.3 GB: docs/lifecycle.md).
    max_pending: int | None = Field(None, gt=0)
    #: Where the label join keeps pending predictions, early labels and finished ids: RocksDB,
    #: one database per model step under this directory (connectors/store.py); empty = in
    #: memory. Raise UNDERTOW_MAX_PENDING with it. docs/lifecycle.md, State on disk.
    state_dir: str = ""
    #: Checkpoints of the state on disk kept: the snapshots a restart may still resume from.
    state_keep: int = Field(3, gt=0)
    quality_window: int = Field(1000, gt=0)
    #: Data drift: served vectors in the reference and recent windows, how often PSI/KS are
    #: recomputed, and after how many events the reference is replaced (0 = never).
    drift_reference_size: int = Field(2000, gt=0)
    drift_recent_size: int = Field(2000, gt=0)
    drift_every: int = Field(5000, gt=0)
    drift_refresh_every: int = Field(0, ge=0)
    #: Events served before the data-drift reference starts, at the least; it also waits for
    #: the stream's longest feature window of event time (docs/metrics.md, Drift).
    drift_warmup_events: int = Field(0, ge=0)
    #: Both data-drift windows keep every n-th vector (they span their size * n vectors).
    drift_stride: int = Field(5, gt=0)
    #: Challengers scored in shadow on the same events, learning from the same labels:
    #: "name=model,name=model" with the models of UNDERTOW_MODEL; empty = the stream file's
    #: other models (set, it replaces them).
    challengers: str = ""
    #: Optional promotion rule: a challenger beating the champion by the margin on this rolling
    #: metric ("roc_auc", "accuracy" or "log_loss") becomes the champion; empty = off.
    promotion_metric: Literal["", "roc_auc", "accuracy", "log_loss", "macro_f1", "mae", "rmse",
                              "r2"] = ""
    promotion_margin: float = Field(0.01, ge=0)
    promotion_min_labels: int = Field(1000, ge=0)
    promotion_every: int = Field(500, gt=0)
    #: The label TTL's clock: "event" time (default), or "wall" time since the event was served,
    #: for live streams whose labels may never come.
    label_ttl_clock: Literal["event", "wall"] = "event"
    #: Commands for the model step (swap/rollback/promote/remove); empty = none.
    control_topic: str = ""
    #: Where the challengers' shadow predictions are written; empty = not written.
    shadow_topic: str = ""
    #: Versioned model checkpoints go here (empty = none); swap commands load from here.
    model_dir: str = ""
    #: Write a checkpoint of every model every N labels learned and/or every T seconds (0 = off).
    checkpoint_every_labels: int = Field(0, ge=0)
    checkpoint_every_s: float = Field(0.0, ge=0)
    checkpoint_keep: int = Field(5, gt=0)
    #: Start the champion from this checkpoint ("latest" in UNDERTOW_MODEL_DIR, or a path).
    start_checkpoint: str = ""

    #: The stream file (TOML: schemas, target, models, features) of dataflows.stream, the
    #: backtests and bulk scoring; dataflows.fraud and dataflows.clicks name their own.
    stream: str = ""
    #: A TOML file whose feature sections replace the stream file's (empty = the stream's own).
    feature_spec: str = ""
    #: Where closed tumbling/hopping window aggregates are written; empty = not written.
    features_topic: str = ""
    #: Entity state is split into this many shards, spread over the workers by Bytewax.
    feature_shards: int = Field(32, gt=0)
    #: Records up to this much older than the newest seen still get exact window features.
    #: Unset: the stream file's ``allowed_lateness``.
    allowed_lateness_s: float | None = Field(None, ge=0)
    #: A record whose value is longer than this (bytes) is a ``too_large`` dead letter, never
    #: decoded; the consumer's fetch limits are set to match (:func:`connectors.kafka.kafka_source`).
    max_record_bytes: int = Field(1_000_000, gt=0)
    #: An event more than this (seconds) ahead of the newest time its feature shard has seen (and
    #: of the wall clock when it was read) is a ``future_event`` dead letter: it moves no clock.
    #: A year by default: sparse streams (a survey a year, a record a day) have gaps of days, and
    #: an event stamped in 2099 is still decades ahead.
    max_future_skew_s: float = Field(365 * 86_400.0, gt=0)

    #: Requests to score, not to learn from (docs/requests.md); empty = the stream file's
    #: ``[requests] topic``, or none (requests off).
    requests_topic: str = ""
    #: Where replies go when a request names no ``reply_to``; empty = the stream file's
    #: ``[requests] replies``, or "replies".
    replies_topic: str = ""
    #: The HTTP gateway (connectors.gateway): how long a caller waits for a reply by default,
    #: and the most records one POST may carry.
    gateway_timeout_ms: int = Field(2_000, gt=0)
    gateway_max_batch: int = Field(1_000, gt=0)

    #: How the model step scales (docs/scaling.md): "exact" (one model step that scores and
    #: learns, in record order: equal to progressive validation; always for replays) or
    #: "replicated" (a scoring replica of the models on every worker, one trainer that learns
    #: and publishes versioned model updates; for more than one process).
    model_mode: Literal["exact", "replicated"] = "exact"
    #: Replicated mode: where the trainer publishes model updates, which every replica reads.
    model_updates_topic: str = "model-updates"
    #: Replicated mode: the trainer publishes an update after this many labels learned, or this
    #: long after the first label learned since the last one, whichever comes first.
    model_update_every_labels: int = Field(500, gt=0)
    model_update_every_ms: int = Field(1_000, gt=0)

    @field_validator("kafka_bootstrap_servers", "events_topic", "labels_topic",
                     "predictions_topic", "deadletter_topic")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        from pydantic_core import PydanticCustomError

        from undertow.errors import ModelError
        from undertow.models import check_model

        if v.strip():
            try:
                check_model(v)
            except ModelError as ex:
                raise PydanticCustomError("model", str(ex)) from None
        return v

    @field_validator("challengers")
    @classmethod
    def _challengers(cls, v: str, info: ValidationInfo) -> str:
        from pydantic_core import PydanticCustomError

        try:
            names = parse_challengers(v)
        except ValueError as ex:
            raise PydanticCustomError("challengers", str(ex)) from None
        if info.data.get("model_name") in names:
            raise PydanticCustomError(
                "challengers", "a challenger has the champion's name (UNDERTOW_MODEL_NAME)")
        return v

    @property
    def challenger_models(self) -> dict[str, str]:
        """The challengers as name -> model expression."""
        return parse_challengers(self.challengers)

    @property
    def brokers(self) -> list[str]:
        return [b.strip() for b in self.kafka_bootstrap_servers.split(",") if b.strip()]

    def librdkafka(self) -> dict[str, str]:
        """The pass-through librdkafka options, secrets revealed (for the client only)."""
        return {k: v.get_secret_value() for k, v in self.kafka_options.items()}


def parse_challengers(spec: str, what: str = "challenger") -> dict[str, str]:
    """Parse "name=model,name=model" into a dict, checking each model and unique names;
    errors call each pair ``what``.

    A model is anything :func:`undertow.models.make_model` takes; the pairs are split on the
    commas outside parentheses, brackets, braces and quotes only.

    >>> parse_challengers("tree=hat, forest=arf")
    {'tree': 'hat', 'forest': 'arf'}
    >>> parse_challengers("tree=tree.HoeffdingTreeClassifier(grace_period=50, max_depth=8),nb=nb")
    {'tree': 'tree.HoeffdingTreeClassifier(grace_period=50, max_depth=8)', 'nb': 'nb'}
    >>> parse_challengers("tree")
    Traceback (most recent call last):
    ...
    ValueError: 'tree' is not name=kind
    >>> parse_challengers("t=hat, u=tree.Tree()")
    Traceback (most recent call last):
    ...
    undertow.errors.ModelError: challenger 'u': model 'tree.Tree()': river.tree has no 'Tree'
    """
    from undertow.errors import ModelError
    from undertow.models import check_model

    out: dict[str, str] = {}
    for part in _top_level_split(spec):
        part = part.strip()
        if not part:
            continue
        name, sep, kind = (x.strip() for x in part.partition("="))
        if not sep or not name or not all(c.isalnum() or c in "_.-" for c in name):
            raise ValueError(f"{part!r} is not name=kind")
        if name in out:
            raise ValueError(f"{what} {name!r} is named twice")
        try:
            check_model(kind)
        except ModelError as ex:
            raise ModelError(f"{what} {name!r}: {ex}") from None
        out[name] = kind
    return out


def _top_level_split(spec: str) -> list[str]:
    """``spec`` split on the commas outside brackets and quotes (unbalanced input is split as
    far as it goes: the expressions' parser reports what is wrong with it)."""
    parts: list[str] = []
    depth, quote, start, i = 0, "", 0, 0
    while i < len(spec):
        ch = spec[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(depth - 1, 0)
        elif ch == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
        i += 1
    parts.append(spec[start:])
    return parts


#: The replies topic when neither a request, the settings nor the stream file name one.
DEFAULT_REPLIES_TOPIC = "replies"


def with_stream_topics(settings: Settings, stream: Stream) -> Settings:
    """The settings with the stream file's ``[requests]`` topics where the variables are unset
    (``UNDERTOW_REQUESTS_TOPIC`` / ``UNDERTOW_REPLIES_TOPIC`` win): the dataflow's and the
    gateway's one rule."""
    update = {}
    if not settings.requests_topic and stream.requests_topic:
        update["requests_topic"] = stream.requests_topic
    if not settings.replies_topic and stream.replies_topic:
        update["replies_topic"] = stream.replies_topic
    return settings.model_copy(update=update) if update else settings


def replies_topic(settings: Settings) -> str:
    """Where replies go when a request names no ``reply_to``."""
    return settings.replies_topic or DEFAULT_REPLIES_TOPIC


#: ``UNDERTOW_*`` variables that are not settings of a dataflow but are the project's all the same
#: (Grafana's provisioning reads the dashboards folder from it).
OTHER_VARIABLES = frozenset({f"{PREFIX}DASHBOARDS_DIR"})


def _check_names(env: dict[str, str]) -> None:
    """A misspelt ``UNDERTOW_`` variable stops start-up, naming the nearest valid one: a setting
    that silently does nothing is worse than an error.

    >>> _check_names({"UNDERTOW_MODLE": "hat"})
    Traceback (most recent call last):
    ...
    undertow.errors.ConfigError: UNDERTOW_MODLE: not a setting; did you mean UNDERTOW_MODEL?
    """
    import difflib

    known = {f"{PREFIX}{name.upper()}" for name in Settings.model_fields} | OTHER_VARIABLES
    for name in sorted(env):
        if (not name.startswith(PREFIX) or name in known
                or (name.startswith(KAFKA_OPT_PREFIX) and len(name) > len(KAFKA_OPT_PREFIX))):
            continue
        near = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        hint = f"did you mean {near[0]}?" if near else (
            f"the settings are listed in docs/settings.md ({PREFIX}KAFKA_OPT_<NAME> passes "
            "librdkafka options)")
        raise ConfigError(f"{name}: not a setting; {hint}")


def _kafka_opts_from_env(environ: dict[str, str]) -> dict[str, str]:
    opts: dict[str, str] = {}
    for name, value in environ.items():
        if name.startswith(KAFKA_OPT_PREFIX) and len(name) > len(KAFKA_OPT_PREFIX):
            opts[name[len(KAFKA_OPT_PREFIX):].lower().replace("_", ".")] = value
    return opts


def load_settings(environ: dict[str, str] | None = None, **overrides: object) -> Settings:
    """Read settings from the environment (or ``environ``); raise :class:`ConfigError` if bad.

    >>> load_settings({"UNDERTOW_MODEL": "hat"}).model
    'hat'
    >>> load_settings({"UNDERTOW_LABEL_TTL_S": "-1"})
    Traceback (most recent call last):
    ...
    undertow.errors.ConfigError: UNDERTOW_LABEL_TTL_S: Input should be greater than 0 (got '-1')
    """
    env = dict(os.environ if environ is None else environ)
    _check_names(env)
    values: dict[str, object] = {}
    for name in Settings.model_fields:
        var = f"{PREFIX}{name.upper()}"
        if var in env:
            values[name] = env[var]
    opts: dict[str, object] = {}
    if isinstance(values.get("kafka_options"), str):
        try:
            parsed = json.loads(str(values["kafka_options"]))
        except ValueError as ex:
            raise ConfigError(f"{PREFIX}KAFKA_OPTIONS: not a JSON object ({ex})") from None
        if not isinstance(parsed, dict):
            raise ConfigError(f"{PREFIX}KAFKA_OPTIONS: not a JSON object")
        opts.update({str(k): str(v) for k, v in parsed.items()})
    opts.update(_kafka_opts_from_env(env))
    values["kafka_options"] = opts
    values.update(overrides)
    try:
        return Settings.model_validate(values)
    except ValidationError as ex:
        err = ex.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        got = values.get(field, "<default>")
        shown = "<secret>" if field == "kafka_options" else repr(got)
        raise ConfigError(f"{PREFIX}{field.upper()}: {err['msg']} (got {shown})") from None
