"""The stream file: the one thing a user writes for a topic, checked whole before anything runs.

A stream file (TOML) declares the event schema, the label and its target, the models, and the
features (the sections of :mod:`undertow.features`)::

    name = "payments"
    [events]
    id = "event_id"            # field names (these are the defaults)
    key = "card_id"
    time = "ts"                # integer epoch milliseconds
    [events.fields]            # the fields the features read, with their types
    merchant_id = "string"
    amount = { type = "number", min = 0 }
    channel = { type = "category", values = ["web", "pos", "app"] }
    [labels]
    id = "event_id"            # defaults: the events' id, key and time fields
    key = "card_id"
    time = "ts"
    value = "is_fraud"
    target = "binary"          # or "multiclass" (classes = [...] optional) or "regression"
    ttl = "1d"                 # how long a prediction waits for its label (the default)
    [[models]]                 # the first is the champion, the others challengers
    name = "lr"
    model = "preprocessing.StandardScaler() | linear_model.LogisticRegression()"
    [ensemble]                 # optional: the models' predictions combined into the one served
    method = "mean"            # mean | weighted | vote | stack (see undertow.ensemble)
    [requests]                 # optional: records to score and answer, never to learn from
    topic = "payments-requests"  # (UNDERTOW_REQUESTS_TOPIC overrides it; docs/requests.md)
    replies = "payments-replies" # (UNDERTOW_REPLIES_TOPIC; default "replies")
    # then the feature sections: [[rolling]], [[windowed]], [[passthrough]], [[onehot]]

:func:`load_stream` checks all of it at once and raises :class:`~undertow.errors.StreamError`
with one line naming the file, the section and the field: an unknown section, key, field type or
aggregation, a feature on an undeclared field or on a field of the wrong type, a ``log1p`` of a
value that can be negative, a duplicate name, a bad model expression. A file that passes cannot
crash a feature step: every field a feature reads is declared, so an event that lacks it or has
the wrong type is a dead letter at the decode step, before any feature sees it.

>>> s = stream_from_dict({"name": "p", "events": {"fields": {"amount": {"type": "number"}}},
...     "labels": {"value": "is_fraud"}, "models": [{"name": "lr", "model": "logreg"}],
...     "rolling": [{"name": "s", "key": "card_id", "agg": "sum", "field": "amount",
...                  "window": "1h"}]}, "p.toml")
>>> s.events.key_field, s.labels.value_field, [m.name for m in s.models], s.features.name
('card_id', 'is_fraud', ['lr'], 'p')
>>> stream_from_dict({"name": "p", "labels": {"value": "y"}, "models": [{"model": "logreg",
...     "name": "m"}], "rolling": [{"name": "s", "key": "card_id", "agg": "sum",
...     "field": "amount", "window": "1h"}]}, "p.toml")
Traceback (most recent call last):
...
undertow.errors.StreamError: p.toml: [[rolling]] 's': field 'amount' is not declared in [events.fields]
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from undertow.ensemble import DEFAULT_NAME, METHODS
from undertow.errors import ModelError, SpecError, StreamError
from undertow.features import FEATURE_SECTIONS, FeatureSpec, duration_ms, spec_from_dict
from undertow.models import check_model
from undertow.schema import FIELD_TYPES, TARGETS, EventSchema, FieldRule, LabelSchema

#: The top-level keys of a stream file; the feature sections are :mod:`undertow.features`'.
TOP_LEVEL = ("name", "description", "events", "labels", "models", "ensemble", "requests",
             "allowed_lateness", "idle", *FEATURE_SECTIONS)
#: A served prediction waits this long for its label unless ``[labels] ttl`` says otherwise.
DEFAULT_LABEL_TTL_MS = 86_400_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: Aggregations whose value has the sign of their field (a log1p of them needs min >= 0).
_SIGNED_AGGS = ("sum", "mean", "min", "max", "last", "ewm", "ratio")
#: What each kind of use accepts (see FeatureSpec.field_uses).
_USE_TYPES = {
    "key": FIELD_TYPES,
    "value": FIELD_TYPES,
    "number": ("number", "integer"),
    "category": ("category", "string"),
}


@dataclass(frozen=True)
class ModelDecl:
    """A model of the stream: its name (the ``model`` label everywhere) and River expression."""

    name: str
    model: str


@dataclass(frozen=True)
class EnsembleDecl:
    """The stream's ``[ensemble]``: its name, method, components (empty: every model), the
    weights of ``weighted`` (one per component) and the stacker expression of ``stack`` (None:
    the target's default, :data:`undertow.ensemble.DEFAULT_STACKERS`)."""

    name: str
    method: str
    models: tuple[str, ...] = ()
    weights: tuple[float, ...] | None = None
    stacker: str | None = None


@dataclass(frozen=True)
class Stream:
    """A checked stream file."""

    name: str
    events: EventSchema
    labels: LabelSchema
    models: tuple[ModelDecl, ...]
    features: FeatureSpec
    path: str = ""
    #: How long a served prediction waits for its label (event time): ``[labels] ttl``.
    label_ttl_ms: int = DEFAULT_LABEL_TTL_MS
    #: ``[ensemble]``: the models' served values combined into the one served (None: the first
    #: model is served).
    ensemble: EnsembleDecl | None = None
    #: ``[requests]``: the topic of requests to answer and the default replies topic ("": unset).
    requests_topic: str = ""
    replies_topic: str = ""

    @property
    def digest(self) -> str:
        """What a model served by this stream depends on: the schema, the target and the
        features (not the models, the name or the file's layout). Checkpoints record it."""
        doc = {"events": asdict(self.events), "labels": asdict(self.labels),
               "features": asdict(self.features)}
        doc["events"].pop("_checks", None)
        doc["features"].pop("name", None)
        blob = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS, default=_plain)
        return hashlib.sha256(blob).hexdigest()[:16]


_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def _plain(o: Any) -> Any:
    if hasattr(o, "_asdict"):
        return o._asdict()
    if isinstance(o, frozenset | set | tuple):
        return sorted(o) if isinstance(o, frozenset | set) else list(o)
    raise TypeError(type(o).__name__)


def load_stream(path: str | Path, *, features_from: str | Path | None = None) -> Stream:
    """Read and check a stream file; ``features_from`` takes the feature sections from another
    TOML file (a feature spec) instead. Raises :class:`StreamError` (one line)."""
    p = Path(path)
    doc = _read(p)
    if features_from is not None:
        extra = _read(Path(features_from))
        doc = {k: v for k, v in doc.items() if k not in (*FEATURE_SECTIONS, "allowed_lateness",
                                                         "idle")}
        doc.update({k: v for k, v in extra.items()
                    if k in (*FEATURE_SECTIONS, "allowed_lateness", "idle")})
    return stream_from_dict(doc, str(p))


def _read(p: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise StreamError(f"{p}: no such stream file") from None
    except (OSError, UnicodeDecodeError) as ex:
        raise StreamError(f"{p}: cannot read: {ex}") from None
    except tomllib.TOMLDecodeError as ex:
        raise StreamError(f"{p}: not valid TOML: {ex}") from None


def stream_from_dict(doc: dict[str, Any], where: str = "<stream>") -> Stream:
    """Check a parsed stream file whole; errors start with ``where`` (the file)."""

    def fail(section: str, msg: str) -> StreamError:
        return StreamError(f"{where}: {section} {msg}" if section else f"{where}: {msg}")

    unknown = sorted(set(doc) - set(TOP_LEVEL))
    if unknown:
        raise fail("", f"unknown section or key {unknown[0]!r}; expected one of {list(TOP_LEVEL)}")
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise fail("", f"name: must be a name of letters, digits, '_', '.', '-', got {name!r}")
    events = _events(_table(doc, "events", fail), fail)
    label_doc = dict(_table(doc, "labels", fail))
    ttl = label_doc.pop("ttl", None)
    labels = _labels(label_doc, events, fail)
    try:
        ttl_ms = DEFAULT_LABEL_TTL_MS if ttl is None else duration_ms(ttl, "ttl")
    except SpecError as ex:
        raise fail("[labels]", str(ex)) from None
    models = _models(doc.get("models"), fail)
    ensemble = _ensemble(doc.get("ensemble"), models, labels.target, fail)
    try:
        spec = spec_from_dict({**{k: v for k, v in doc.items()
                                  if k in (*FEATURE_SECTIONS, "allowed_lateness", "idle")},
                               "name": name})
    except SpecError as ex:
        raise fail("", str(ex)) from None
    _check_uses(spec, events, fail)
    requests = _table(doc, "requests", fail)
    for k, v in requests.items():
        if k not in ("topic", "replies"):
            raise fail("[requests]", f"{k}: unknown key; expected one of ['topic', 'replies']")
        if not isinstance(v, str) or not _TOPIC.match(v):
            raise fail("[requests]", f"{k}: must be a Kafka topic name, got {v!r}")
    return Stream(name, events, labels, models, spec, where, ttl_ms, ensemble,
                  requests.get("topic", ""), requests.get("replies", ""))


def _table(doc: dict[str, Any], key: str, fail: Any) -> dict[str, Any]:
    t = doc.get(key, {})
    if not isinstance(t, dict):
        raise fail(f"[{key}]", "must be a table")
    return t


def _names(t: dict[str, Any], section: str, allowed: tuple[str, ...], fail: Any,
           also: tuple[str, ...] = ()) -> None:
    extra = sorted(set(t) - set(allowed))
    if extra:
        raise fail(section, f"{extra[0]}: unknown key; expected one of {list(allowed + also)}")
    for k in allowed:
        if k in t and k != "fields" and (not isinstance(t[k], str) or not t[k]):
            raise fail(section, f"{k}: must be a field name, got {t[k]!r}")


def _events(t: dict[str, Any], fail: Any) -> EventSchema:
    _names(t, "[events]", ("id", "key", "time", "fields"), fail)
    ids = (t.get("id", "event_id"), t.get("key", "card_id"), t.get("time", "ts"))
    decl = t.get("fields", {})
    if not isinstance(decl, dict):
        raise fail("[events.fields]", "must be a table of field = type")
    rules = []
    for fname, d in decl.items():
        rule = _field_rule(fname, d, fail)
        if fname in ids:
            raise fail("[events.fields]", f"{fname}: is the events' id, key or time field, "
                                          "declared by [events] itself")
        rules.append(rule)
    return EventSchema(*ids, fields=tuple(rules))


def _field_rule(fname: str, d: Any, fail: Any) -> FieldRule:
    section = "[events.fields]"
    if isinstance(d, str):
        d = {"type": d}
    if not isinstance(d, dict):
        raise fail(section, f"{fname}: must be a type name or a table with 'type'")
    extra = sorted(set(d) - {"type", "min", "max", "values"})
    if extra:
        raise fail(section, f"{fname}: unknown key {extra[0]!r}; expected type, min, max, values")
    ftype = d.get("type")
    if ftype not in FIELD_TYPES:
        raise fail(section, f"{fname}: unknown field type {ftype!r}; one of {list(FIELD_TYPES)}")
    lo, hi = d.get("min"), d.get("max")
    for k, v in (("min", lo), ("max", hi)):
        if v is None:
            continue
        if ftype not in ("number", "integer"):
            raise fail(section, f"{fname}: {k} applies to number and integer fields only")
        if type(v) not in (int, float) or v != v or v in (float("inf"), float("-inf")):
            raise fail(section, f"{fname}: {k} must be a finite number, got {v!r}")
    if lo is not None and hi is not None and lo > hi:
        raise fail(section, f"{fname}: min {lo} is above max {hi}")
    values = d.get("values")
    if ftype == "category":
        if (not isinstance(values, list) or not values
                or not all(isinstance(v, str) and v for v in values)):
            raise fail(section, f"{fname}: a category needs values = [non-empty strings]")
        if len(set(values)) != len(values):
            raise fail(section, f"{fname}: values named twice")
    elif values is not None:
        raise fail(section, f"{fname}: values apply to category fields only")
    return FieldRule(fname, ftype, lo, hi, tuple(values or ()))


def _labels(t: dict[str, Any], events: EventSchema, fail: Any) -> LabelSchema:
    t = dict(t)
    classes = t.pop("classes", None)
    _names(t, "[labels]", ("id", "key", "time", "value", "target"), fail,
           also=("ttl", "classes"))
    if "value" not in t:
        raise fail("[labels]", "value: missing: the field that holds the label's truth")
    target = t.get("target", "binary")
    if target not in TARGETS:
        raise fail("[labels]", f"target: unknown target {target!r}; one of {list(TARGETS)}")
    if classes is not None:
        if target != "multiclass":
            raise fail("[labels]", "classes: only a multiclass target lists classes")
        if (not isinstance(classes, list) or len(classes) < 2 or not all(
                (type(c) is str and c) or type(c) is int for c in classes)):
            raise fail("[labels]", "classes: must be a list of at least two classes (non-empty "
                                   "strings or integers)")
        if len(set(classes)) != len(classes):
            raise fail("[labels]", "classes: a class is listed twice")
    return LabelSchema(t.get("id", events.id_field), t.get("key", events.key_field),
                       t.get("time", events.ts_field), t["value"], target, tuple(classes or ()))


def _models(ms: Any, fail: Any) -> tuple[ModelDecl, ...]:
    if ms is None:
        raise fail("[[models]]", "missing: at least one model (the first is the champion)")
    if not isinstance(ms, list) or not ms:
        raise fail("[[models]]", "must be an array of tables with name and model")
    out: list[ModelDecl] = []
    for i, m in enumerate(ms, 1):
        if not isinstance(m, dict):
            raise fail("[[models]]", f"#{i}: must be a table with name and model")
        extra = sorted(set(m) - {"name", "model"})
        if extra:
            raise fail("[[models]]", f"#{i}: unknown key {extra[0]!r}; expected name, model")
        mname, expr = m.get("name"), m.get("model")
        if not isinstance(mname, str) or not _NAME.match(mname):
            raise fail("[[models]]", f"#{i}: name: must be a name of letters, digits, '_', '.', "
                                     f"'-', got {mname!r}")
        if any(o.name == mname for o in out):
            raise fail("[[models]]", f"{mname!r}: name used twice")
        if not isinstance(expr, str) or not expr.strip():
            raise fail("[[models]]", f"{mname!r}: model: missing (a River expression)")
        try:
            check_model(expr)
        except ModelError as ex:
            raise fail("[[models]]", f"{mname!r}: {ex}") from None
        out.append(ModelDecl(mname, expr))
    return tuple(out)


_ENSEMBLE_KEYS = ("name", "method", "models", "weights", "stacker")


def _ensemble(t: Any, models: tuple[ModelDecl, ...], target: str,
              fail: Any) -> EnsembleDecl | None:
    if t is None:
        return None
    section = "[ensemble]"
    if not isinstance(t, dict):
        raise fail(section, "must be a table")
    extra = sorted(set(t) - set(_ENSEMBLE_KEYS))
    if extra:
        raise fail(section, f"{extra[0]}: unknown key; expected one of {list(_ENSEMBLE_KEYS)}")
    model_names = [m.name for m in models]
    name = t.get("name", DEFAULT_NAME)
    if not isinstance(name, str) or not _NAME.match(name):
        raise fail(section, f"name: must be a name of letters, digits, '_', '.', '-', got "
                            f"{name!r}")
    if name in model_names:
        raise fail(section, f"name: {name!r} is a [[models]] name; the ensemble needs its own")
    method = t.get("method")
    if method is None:
        raise fail(section, f"method: missing: one of {list(METHODS)}")
    if method not in METHODS:
        raise fail(section, f"method: unknown method {method!r}; one of {list(METHODS)}")
    if method == "vote" and target == "regression":
        raise fail(section, "method: a regression target cannot vote; use mean, weighted or "
                            "stack")
    names = t.get("models", [])
    if not isinstance(names, list) or not names and "models" in t or not all(
            isinstance(n, str) for n in names):
        raise fail(section, f"models: must be a list of [[models]] names, got {names!r}")
    for n in names:
        if n not in model_names:
            raise fail(section, f"models: {n!r} is not a [[models]] name; one of {model_names}")
        if names.count(n) > 1:
            raise fail(section, f"models: {n!r} is listed twice")
    weights = t.get("weights")
    if method == "weighted":
        n_models = len(names) if names else len(model_names)
        if weights is None:
            raise fail(section, f"weights: missing: the weighted method needs one weight per "
                                f"model ({n_models})")
        if (not isinstance(weights, list) or len(weights) != n_models or not all(
                type(w) in (int, float) and 0 < w < float("inf") for w in weights)):
            raise fail(section, f"weights: must be one number > 0 per model ({n_models}), "
                                f"got {weights!r}")
        weights = tuple(float(w) for w in weights)
    elif weights is not None:
        raise fail(section, f"weights: only the weighted method takes weights, not {method!r}")
    stacker = t.get("stacker")
    if method == "stack" and stacker is not None:
        if not isinstance(stacker, str) or not stacker.strip():
            raise fail(section, f"stacker: must be a River expression, got {stacker!r}")
        try:
            check_model(stacker)
        except ModelError as ex:
            raise fail(section, f"stacker: {ex}") from None
    elif stacker is not None:
        raise fail(section, f"stacker: only the stack method takes a stacker, not {method!r}")
    return EnsembleDecl(name, method, tuple(names), weights, stacker)


def _check_uses(spec: FeatureSpec, events: EventSchema, fail: Any) -> None:
    """Every field a feature reads is declared with a type that feature can use."""
    for use in spec.field_uses():
        section = f"[[{use.section}]] {use.feature!r}:"
        rule = events.rule(use.field)
        if rule is None:
            raise fail(section, f"field {use.field!r} is not declared in [events.fields]")
        if rule.type not in _USE_TYPES[use.kind]:
            raise fail(section, f"field {use.field!r} is declared {rule.type!r}; this feature "
                                f"needs {' or '.join(_USE_TYPES[use.kind])}")
    for o in spec.onehot:
        rule = events.rule(o.field)
        if rule is not None and rule.type == "category":
            stray = [v for v in o.values if v not in rule.values]
            if stray:
                raise fail(f"[[onehot]] {o.field!r}:", f"value {stray[0]!r} is not among the "
                                                       "field's declared values")
    signed = [(f"[[rolling]] {f.name!r}:", f.field, f.default if f.agg == "last" else 0.0)
              for f in spec.rolling if f.transform == "log1p" and f.agg in _SIGNED_AGGS]
    signed += [(f"[[passthrough]] {p.name!r}:", p.field, 0.0)
               for p in spec.passthrough if p.transform == "log1p"]
    for section, fname, default in signed:
        rule = events.rule(fname) if fname else None
        if rule is not None and (rule.min is None or rule.min < 0 or default < 0):
            raise fail(section, f"transform 'log1p' needs field {fname!r} declared with "
                                "min >= 0 (log1p of a value below -1 is undefined)")
