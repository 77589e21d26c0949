"""Records that cross dataflow steps, and the one place the JSON wire format is decoded.

Every record is an immutable ``NamedTuple``: as immutable as a frozen dataclass and five times
cheaper to build (0.3 us against 1.5 us for ten fields, measured), which matters because the
hot path builds about six of them per event. Raw bytes from Kafka are decoded exactly once, at the
edge, by :func:`decode_event` / :func:`decode_label`; a record that fails validation becomes a
:class:`DeadLetter` value carrying its raw bytes and a machine-readable ``reason``. Nothing here
raises on bad input.

The schemas are data, not code: an :class:`EventSchema` lists a stream's fields with their types
and rules (:class:`FieldRule`), a :class:`LabelSchema` its label's fields and target; both come
from the stream file (:mod:`undertow.stream`). Each rule a value breaks has its own reason,
whatever the stream: ``missing_field``, ``wrong_type``, ``empty_field``, ``not_finite``,
``below_min``, ``above_max``, ``unknown_category``.

>>> schema = EventSchema(key_field="card_id", fields=(
...     FieldRule("amount", "number", min=0), FieldRule("channel", "category", values=("pos",))))
>>> ev = decode_event(b'{"event_id":"e1","card_id":"c1","amount":12.5,"channel":"pos","ts":1000}',
...                   schema)
>>> (ev.event_id, ev.key, ev.ts, ev.fields["amount"])
('e1', 'c1', 1000, 12.5)
>>> decode_event(b'{"event_id":"e1"}', schema).reason
'missing_field'
>>> dl = decode_event(b'{"event_id":"e1","card_id":"c1","amount":-1,"channel":"pos","ts":1}',
...                   schema)
>>> dl.reason, dl.detail
('below_min', "field 'amount' must be >= 0, got -1")
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

# Reason codes of the dead-letter topic. Stable strings: dashboards and alerts select on them.
BAD_JSON = "bad_json"
NOT_OBJECT = "not_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
NOT_FINITE = "not_finite"
BELOW_MIN = "below_min"
ABOVE_MAX = "above_max"
UNKNOWN_CATEGORY = "unknown_category"
UNKNOWN_CLASS = "unknown_class"
MODEL_ERROR = "model_error"
EMPTY_FIELD = "empty_field"
KAFKA_ERROR = "kafka_error"
DUPLICATE_EVENT = "duplicate_event"
UNKNOWN_EVENT = "unknown_event"
DUPLICATE_LABEL = "duplicate_label"
CONFLICTING_LABEL = "conflicting_label"
EXPIRED_EVENT = "expired_event"
OUT_OF_RANGE = "out_of_range"
INVALID_RECORD = "invalid_record"
BAD_CONTROL = "bad_control"
LATE_EVENT = "late_event"
TOO_LARGE = "too_large"
FUTURE_EVENT = "future_event"

#: The latest event time accepted: 2100-01-01T00:00:00Z. A record stamped beyond it would drag
#: every event-time clock forward and expire all state at once.
MAX_TS_MS = 4_102_444_800_000

#: Every reason a record can be dead-lettered for, so metrics can be pre-declared at zero.
DEAD_LETTER_REASONS = (
    BAD_JSON,
    NOT_OBJECT,
    MISSING_FIELD,
    WRONG_TYPE,
    NOT_FINITE,
    BELOW_MIN,
    ABOVE_MAX,
    UNKNOWN_CATEGORY,
    EMPTY_FIELD,
    KAFKA_ERROR,
    DUPLICATE_EVENT,
    UNKNOWN_EVENT,
    DUPLICATE_LABEL,
    CONFLICTING_LABEL,
    EXPIRED_EVENT,
    OUT_OF_RANGE,
    INVALID_RECORD,
    BAD_CONTROL,
    LATE_EVENT,
    TOO_LARGE,
    FUTURE_EVENT,
    UNKNOWN_CLASS,
    MODEL_ERROR,
)


class Event(NamedTuple):
    """One validated input event.

    ``fields`` is the decoded JSON object itself (validated, never copied); ``read_at`` is the
    wall-clock time (epoch seconds) at which the dataflow read the record, for latency metrics;
    ``partition`` is the Kafka partition it came from (event-time watermarks are per partition);
    ``seq`` is its position in a replay's merged, time-ordered input (-1 when live), which the model
    step uses to process a replay in exactly that order whatever the batching (see
    :mod:`connectors.replay`). Like a :class:`Label`, it keeps its raw bytes, record key and
    source coordinates, so a step downstream that cannot use it (a late event, say)
    dead-letters it losslessly.
    """

    event_id: str
    key: str
    ts: int
    fields: dict[str, Any]
    read_at: float = 0.0
    partition: int | None = None
    seq: int = -1
    raw: bytes | None = None
    topic: str | None = None
    offset: int | None = None
    record_key: bytes | None = None


class Label(NamedTuple):
    """The ground truth for one event, known at time ``ts`` (epoch ms).

    The raw bytes and source coordinates travel with it so that a label which cannot be learned
    (duplicate, conflicting, for an unknown or expired event) is dead-lettered losslessly.
    """

    event_id: str
    key: str
    ts: int
    value: Any  # a boolean, a class (string or integer) or a number: the target's
    read_at: float = 0.0
    raw: bytes | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    seq: int = -1


class FeaturedEvent(NamedTuple):
    """An event with the feature vector computed as of its own event time.

    ``via`` names the feature-step shard that produced it ("" straight from the source): the
    next feature step keeps one watermark per (source partition, ``via``) path, since records
    reach it in order along each path but interleaved across paths. ``request`` is set for a
    request: its features are computed as of its time without adding it to the state, and the
    model step answers it instead of serving it.
    """

    event: Event
    features: dict[str, float]
    via: str = ""
    #: Set for a request (:mod:`undertow.requests`): scored, answered, never added to any state.
    request: Any = None


class Prediction(NamedTuple):
    """A served prediction, as written to the predictions topic.

    By target (:mod:`undertow.targets`): binary has ``score`` (``P(True)``) and the boolean
    ``predicted``; multi-class has ``proba`` (class -> probability) and the class ``predicted``
    (``score`` is None); regression has the number ``predicted`` (``score`` and ``proba`` None).
    """

    event_id: str
    key: str
    score: float | None
    predicted: Any
    model: str
    model_version: int
    labels_learned: int
    event_ts: int
    processed_at: float
    read_at: float = 0.0
    #: True for the champion's prediction (the one acted on); False for a challenger's shadow one.
    served: bool = True
    proba: dict[Any, float] | None = None

    def wire(self) -> dict[str, Any]:
        """The fields of the wire form (``read_at`` is internal and not written)."""
        d: dict[str, Any] = {"event_id": self.event_id, "key": self.key}
        if self.proba is not None:
            d["predicted"] = self.predicted
            d["proba"] = self.proba
        elif self.score is not None:
            d["score"] = self.score
            d["predicted"] = self.predicted
        else:
            d["predicted"] = self.predicted
        d.update(model=self.model, model_version=self.model_version,
                 labels_learned=self.labels_learned, event_ts=self.event_ts,
                 processed_at=self.processed_at, served=self.served)
        return d

    def to_json(self) -> bytes:
        """The wire form: one JSON object; a multi-class ``proba``'s classes become its keys."""
        return orjson.dumps(self.wire(), option=orjson.OPT_NON_STR_KEYS)


class Outcome(NamedTuple):
    """One learned label, with what one model served for its event: what quality is made of."""

    model: str
    version: int
    event_id: str
    event_ts: int
    label_ts: int
    label: Any
    #: P(True) (binary), the probability served for the true class (multi-class), the
    #: prediction (regression).
    score: float
    predicted: Any


class ModelSummary(NamedTuple):
    """One model's state at the end of a bounded input (a backtest), for reports."""

    model: str
    version: int
    champion: bool
    #: Join counts of the model step: events, labels, learned, duplicate_events,
    #: pending_expired {reason: n}, early_labels, early_expired, label_dead_letters {reason: n}.
    counts: dict[str, Any]
    #: Rolling accuracy, log_loss and roc_auc of this model's served scores at the end.
    quality: dict[str, float]
    #: (event time ms, stream "error" | "score", detector, direction) of each drift detection.
    drift: list[tuple[int, str, str, str]]
    #: feature -> (PSI, KS) as last computed.
    feature_drift: dict[str, tuple[float, float]]
    pending: int
    labels_learned: int


class Control(NamedTuple):
    """A command for the model step, read from the control topic.

    ``swap`` puts the model of ``checkpoint`` into slot ``model`` (a new slot becomes a
    challenger); ``rollback`` restores the slot's previous model; ``promote`` makes ``model`` the
    champion; ``remove`` drops a challenger. ``loaded`` is the model object (and its version)
    read from the checkpoint by the operator layer, which does the file I/O.
    """

    command: str
    model: str
    checkpoint: str | None = None
    raw: bytes | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    loaded: Any = None


class DeadLetter(NamedTuple):
    """A record the dataflow could not use, with everything needed to replay or inspect it.

    Built by the named constructors, so every dead letter carries its record's raw bytes, key and
    coordinates: :meth:`of_bytes` at the edge (a record that did not decode),
    :meth:`of_event` / :meth:`of_label` for a decoded record a later step cannot use.
    """

    reason: str
    detail: str
    raw: bytes | None
    key: bytes | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    step: str = ""
    seq: int = -1  # position in a replay's merged input (-1 live): a gap the model step skips

    @classmethod
    def of_bytes(cls, reason: str, detail: str, raw: bytes | None, *, key: bytes | None = None,
                 topic: str | None = None, partition: int | None = None,
                 offset: int | None = None, step: str = "", seq: int = -1) -> DeadLetter:
        """A record that could not be decoded or validated: its bytes as they came."""
        return cls(reason, detail[:1000], raw, key, topic, partition, offset, step, seq)

    @classmethod
    def of_event(cls, ev: Event, reason: str, detail: str, step: str) -> DeadLetter:
        """A decoded event a later step cannot use (late, say): its original bytes."""
        return cls(reason, detail[:1000], ev.raw, ev.record_key, ev.topic, ev.partition,
                   ev.offset, step, ev.seq)

    @classmethod
    def of_label(cls, lb: Label, reason: str, detail: str, step: str) -> DeadLetter:
        """A decoded label the model step cannot learn (unknown, expired, duplicate...),
        keyed by its entity."""
        return cls(reason, detail[:1000], lb.raw, lb.key.encode("utf-8", "backslashreplace"),
                   lb.topic, lb.partition, lb.offset, step, lb.seq)

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers that carry the error next to the untouched raw bytes."""
        return [
            ("undertow.error.reason", self.reason.encode()),
            ("undertow.error.detail", self.detail.encode("utf-8", "backslashreplace")),
            ("undertow.error.step", self.step.encode()),
            ("undertow.error.topic", (self.topic or "").encode("utf-8", "backslashreplace")),
            ("undertow.error.partition", str(self.partition).encode()),
            ("undertow.error.offset", str(self.offset).encode()),
        ]


#: The types a stream file can give a field.
FIELD_TYPES = ("string", "number", "integer", "boolean", "category")


class FieldRule(NamedTuple):
    """One declared event field: its type and the rules its values keep.

    ``string``: a non-empty string; ``number``: a finite int or float (not a boolean);
    ``integer``: an int (not a boolean); ``boolean``; ``category``: a string among ``values``.
    ``min`` / ``max`` bound numbers and integers (inclusive).
    """

    name: str
    type: str
    min: float | None = None
    max: float | None = None
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class EventSchema:
    """Names of an event stream's id, key and time fields, and the rules of its other fields.

    ``id_field`` and ``key_field`` are required non-empty strings, ``ts_field`` an integer
    epoch-ms time; every field in ``fields`` is required and must keep its rule.
    """

    id_field: str = "event_id"
    key_field: str = "card_id"
    ts_field: str = "ts"
    fields: tuple[FieldRule, ...] = ()
    _checks: tuple[tuple[str, int, Any, Any, frozenset[str] | None], ...] = field(
        init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        checks = tuple(
            (r.name, FIELD_TYPES.index(r.type), r.min, r.max,
             frozenset(r.values) if r.type == "category" else None)
            for r in self.fields if r.name not in (self.id_field, self.key_field, self.ts_field)
        )
        object.__setattr__(self, "_checks", checks)

    def rule(self, name: str) -> FieldRule | None:
        """The declared rule of ``name`` (the id and key are strings, the time an integer)."""
        if name in (self.id_field, self.key_field):
            return FieldRule(name, "string")
        if name == self.ts_field:
            return FieldRule(name, "integer", 0, MAX_TS_MS)
        return next((r for r in self.fields if r.name == name), None)


#: The targets a label can have (:mod:`undertow.targets`).
TARGETS = ("binary", "multiclass", "regression")


@dataclass(frozen=True)
class LabelSchema:
    """Names of a label stream's fields and its target: ``value_field`` holds the truth."""

    id_field: str = "event_id"
    key_field: str = "card_id"
    ts_field: str = "ts"
    value_field: str = "is_fraud"
    target: str = "binary"
    #: Multi-class: the classes, when listed (another value is a dead letter, unknown_class);
    #: empty: learned as they come.
    classes: tuple[Any, ...] = ()


class _Invalid(Exception):
    """Internal: carries a reason code out of the validators (never escapes this module)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _loads(raw: bytes | None) -> dict[str, Any]:
    if not raw:
        raise _Invalid(BAD_JSON, "empty payload")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as ex:
        # orjson is strict JSON; the stdlib also accepts NaN/Infinity literals, so a payload that
        # only fails on those is reported precisely as not_finite rather than as bad_json.
        try:
            obj = json.loads(raw)
            # The stdlib also accepts what orjson rightly refuses: lone surrogates, which no
            # later step could encode or hash. Only text that is valid UTF-8 throughout passes.
            json.dumps(obj, ensure_ascii=False).encode()
        except (ValueError, UnicodeError, RecursionError):
            raise _Invalid(BAD_JSON, str(ex)) from None
    if not isinstance(obj, dict):
        raise _Invalid(NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def json_object(raw: bytes | None) -> dict[str, Any] | tuple[str, str]:
    """The JSON object ``raw`` holds, or (reason, detail) why it holds none, as for an event.

    >>> json_object(b'{"a": 1}'), json_object(b'[1]')
    ({'a': 1}, ('not_object', 'expected a JSON object, got list'))
    """
    try:
        return _loads(raw)
    except _Invalid as ex:
        return ex.reason, ex.detail


def _get(obj: dict[str, Any], name: str) -> Any:
    try:
        return obj[name]
    except KeyError:
        raise _Invalid(MISSING_FIELD, f"field {name!r} is missing") from None


def _string(obj: dict[str, Any], name: str) -> str:
    v = _get(obj, name)
    if type(v) is not str:
        raise _Invalid(WRONG_TYPE, f"field {name!r} must be a string, got {type(v).__name__}")
    if not v:
        raise _Invalid(EMPTY_FIELD, f"field {name!r} is empty")
    return v


def _epoch_ms(obj: dict[str, Any], name: str) -> int:
    v = _get(obj, name)
    if type(v) is not int:
        raise _Invalid(
            WRONG_TYPE, f"field {name!r} must be an integer epoch-ms time, got {type(v).__name__}"
        )
    if not 0 <= v <= MAX_TS_MS:
        raise _Invalid(
            OUT_OF_RANGE, f"field {name!r} must be an epoch-ms time in [0, {MAX_TS_MS}], got {v}"
        )
    return v


def _number(obj: dict[str, Any], name: str) -> float:
    v = _get(obj, name)
    t = type(v)
    if t is not float and t is not int:
        raise _Invalid(WRONG_TYPE, f"field {name!r} must be a number, got {t.__name__}")
    try:
        finite = math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite:
        raise _Invalid(NOT_FINITE, f"field {name!r} is not finite: {repr(v)[:40]}"
                       if t is float else f"field {name!r} is not finite: too large")
    return v


_STRING, _NUMBER, _INTEGER, _BOOLEAN, _CATEGORY = range(len(FIELD_TYPES))


def _bounded(name: str, v: Any, lo: Any, hi: Any) -> None:
    if lo is not None and v < lo:
        raise _Invalid(BELOW_MIN, f"field {name!r} must be >= {lo:g}, got {v!r}")
    if hi is not None and v > hi:
        raise _Invalid(ABOVE_MAX, f"field {name!r} must be <= {hi:g}, got {v!r}")


def _check_fields(obj: dict[str, Any], schema: EventSchema) -> None:
    # Each rule's common case is checked inline; anything else goes the long way, which raises
    # the precise reason (or, for an integer, checks it fits a float).
    get = obj.get
    for name, kind, lo, hi, values in schema._checks:
        if kind == _NUMBER:
            v = get(name)
            if type(v) is not float or v - v != 0.0:  # not a finite float (inf - inf is NaN)
                v = _number(obj, name)
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                _bounded(name, v, lo, hi)
        elif kind == _STRING:
            v = get(name)
            if type(v) is not str or not v:
                _string(obj, name)
        elif kind == _CATEGORY:
            v = get(name)
            if type(v) is str and v in values:  # type: ignore[operator]
                continue
            v = _get(obj, name)
            if type(v) is not str:
                raise _Invalid(WRONG_TYPE, f"field {name!r} must be a string, got "
                                           f"{type(v).__name__}")
            raise _Invalid(UNKNOWN_CATEGORY, f"field {name!r} has unknown value {v[:100]!r}")
        elif kind == _INTEGER:
            v = _get(obj, name)
            if type(v) is not int:
                raise _Invalid(WRONG_TYPE, f"field {name!r} must be an integer, got "
                                           f"{type(v).__name__}")
            _bounded(name, _number(obj, name), lo, hi)  # and within a float's range
        else:
            v = _get(obj, name)
            if type(v) is not bool:
                raise _Invalid(WRONG_TYPE, f"field {name!r} must be a boolean, got "
                                           f"{type(v).__name__}")


def _id_key_ts(obj: dict[str, Any], id_field: str, key_field: str, ts_field: str
               ) -> tuple[str, str, int]:
    """The id, key and time of a record; the common case inline, else the checks that raise."""
    get = obj.get
    event_id = get(id_field)
    if type(event_id) is not str or not event_id:
        event_id = _string(obj, id_field)
    key = get(key_field)
    if type(key) is not str or not key:
        key = _string(obj, key_field)
    ts = get(ts_field)
    if type(ts) is not int or not 0 <= ts <= MAX_TS_MS:
        ts = _epoch_ms(obj, ts_field)
    return event_id, key, ts


def decode_event(
    raw: bytes | None,
    schema: EventSchema,
    *,
    read_at: float = 0.0,
    key: bytes | None = None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    step: str = "",
    seq: int = -1,
) -> Event | DeadLetter:
    """Decode and validate one event; a bad record becomes a :class:`DeadLetter` value."""
    try:
        obj = _loads(raw)
    except _Invalid as ex:
        return DeadLetter(ex.reason, ex.detail, raw, key, topic, partition, offset, step, seq)
    return event_of(obj, schema, read_at=read_at, raw=raw, key=key, topic=topic,
                    partition=partition, offset=offset, step=step, seq=seq)


def event_of(
    obj: Any,
    schema: EventSchema,
    *,
    read_at: float = 0.0,
    raw: bytes | None = None,
    key: bytes | None = None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    step: str = "",
    seq: int = -1,
) -> Event | DeadLetter:
    """Validate one decoded JSON value as an event of ``schema`` (``raw``: the bytes it came in,
    kept for a dead letter); a bad one becomes a :class:`DeadLetter` value."""
    try:
        if not isinstance(obj, dict):
            raise _Invalid(NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
        event_id, event_key, ts = _id_key_ts(obj, schema.id_field, schema.key_field,
                                             schema.ts_field)
        _check_fields(obj, schema)
        return Event(event_id, event_key, ts, obj, read_at, partition, seq, raw, topic, offset,
                     key)
    except _Invalid as ex:
        return DeadLetter(ex.reason, ex.detail, raw, key, topic, partition, offset, step, seq)


def decode_label(
    raw: bytes | None,
    schema: LabelSchema = LabelSchema(),
    *,
    read_at: float = 0.0,
    key: bytes | None = None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    step: str = "",
    seq: int = -1,
) -> Label | DeadLetter:
    """Decode and validate one label (id, key, time and the value of its target).

    >>> decode_label(b'{"event_id":"e1","card_id":"c1","is_fraud":true,"ts":5}').value
    True
    >>> decode_label(b'{"event_id":"e1","card_id":"c1","is_fraud":1,"ts":5}').reason
    'wrong_type'
    >>> iris = LabelSchema(key_field="k", value_field="species", target="multiclass",
    ...                    classes=("setosa", "versicolor", "virginica"))
    >>> decode_label(b'{"event_id":"e1","k":"f1","species":"setosa","ts":5}', iris).value
    'setosa'
    >>> decode_label(b'{"event_id":"e1","k":"f1","species":"rose","ts":5}', iris).reason
    'unknown_class'
    >>> approval = LabelSchema(key_field="k", value_field="y", target="regression")
    >>> decode_label(b'{"event_id":"e1","k":"a","y":41.5,"ts":5}', approval).value
    41.5
    """
    try:
        obj = _loads(raw)
        event_id, label_key, ts = _id_key_ts(obj, schema.id_field, schema.key_field,
                                             schema.ts_field)
        value = _label_value(obj, schema)
        return Label(event_id, label_key, ts, value, read_at, raw, topic, partition, offset, seq)
    except _Invalid as ex:
        return DeadLetter(ex.reason, ex.detail, raw, key, topic, partition, offset, step, seq)


def _label_value(obj: dict[str, Any], schema: LabelSchema) -> Any:
    name = schema.value_field
    if schema.target == "regression":
        return _number(obj, name)
    value = _get(obj, name)
    t = type(value)
    if schema.target == "binary":
        if t is not bool:
            raise _Invalid(WRONG_TYPE, f"field {name!r} must be a boolean, got {t.__name__}")
        return value
    if t is not str and t is not int:
        raise _Invalid(WRONG_TYPE, f"field {name!r} must be a class (a string or an integer), "
                                   f"got {t.__name__}")
    if t is str and not value:
        raise _Invalid(EMPTY_FIELD, f"field {name!r} is empty")
    if schema.classes and value not in schema.classes:
        raise _Invalid(UNKNOWN_CLASS, f"field {name!r} has unknown class {str(value)[:100]!r}")
    return value


CONTROL_COMMANDS = ("swap", "rollback", "promote", "remove")


def decode_control(
    raw: bytes | None,
    *,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    step: str = "",
) -> Control | DeadLetter:
    """Decode one control-topic command: ``{"command": ..., "model": ..., "checkpoint": ...}``.

    >>> decode_control(b'{"command":"rollback","model":"fraud"}').command
    'rollback'
    >>> decode_control(b'{"command":"swap","model":"fraud"}').detail
    "command 'swap' needs a 'checkpoint' path"
    """
    try:
        obj = _loads(raw)
        command = _string(obj, "command")
        if command not in CONTROL_COMMANDS:
            raise _Invalid(BAD_CONTROL, f"unknown command {command!r}; one of {CONTROL_COMMANDS}")
        model = _string(obj, "model")
        checkpoint = obj.get("checkpoint")
        if command == "swap":
            if type(checkpoint) is not str or not checkpoint:
                raise _Invalid(BAD_CONTROL, "command 'swap' needs a 'checkpoint' path")
        elif checkpoint is not None:
            raise _Invalid(BAD_CONTROL, f"command {command!r} takes no 'checkpoint'")
        return Control(command, model, checkpoint, raw, topic, partition, offset)
    except _Invalid as ex:
        return DeadLetter(BAD_CONTROL if ex.reason != BAD_JSON else BAD_JSON, ex.detail, raw, None,
                          topic, partition, offset, step)
