"""The feature declarations: what a spec (or a stream file's feature sections) says to compute.

Four sections, each an array of tables in TOML: ``[[rolling]]`` (:class:`Rolling`),
``[[windowed]]`` (:class:`Windowed`), ``[[passthrough]]`` (:class:`Passthrough`) and
``[[onehot]]`` (:class:`OneHot`); top-level ``allowed_lateness`` and ``idle`` set the clock.
:func:`spec_from_dict` builds a :class:`FeatureSpec` from a parsed document and ignores every other
top-level key (a stream file's ``name``, ``events``, ``labels``, ``models``, ...), so a whole stream
document can be passed; :func:`load_spec` reads a TOML file. Every error is a
:class:`~undertow.errors.SpecError` whose one-line message names the section and the entry:
``[[rolling]] 'card_sum_10m': unknown rolling agg 'summ'; one of (...)``, or for a missing key
``[[rolling]] #3: missing 'agg'`` (entries counted from 1).

What each aggregation means, and the rules of time and state: :mod:`undertow.features`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

from undertow.errors import SpecError

FEATURE_SECTIONS = ("rolling", "windowed", "passthrough", "onehot")
ROLLING_AGGS = ("count", "sum", "mean", "var", "std", "min", "max", "last", "since_prev",
                "distinct", "ewm", "ratio")
WINDOWED_AGGS = ("count", "sum", "mean", "var", "std", "min", "max", "last", "distinct")
TRANSFORMS = (None, "log1p")
#: Aggregations that read ``field`` (the others, ``count`` and ``since_prev``, read none).
NEEDS_FIELD = frozenset({"sum", "mean", "var", "std", "min", "max", "last", "distinct", "ewm",
                         "ratio"})
#: The kind of a field's use (:class:`FieldUse`) by each aggregation that reads one.
_AGG_KIND = {agg: "value" if agg == "distinct" else "number" for agg in NEEDS_FIELD}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
# Per section: the required keys (in the order they are reported missing), then the optional.
_KEYS: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {
    "rolling": (("name", "key", "agg", "window"),
                frozenset({"field", "transform", "half_life", "default"})),
    "windowed": (("name", "key", "agg", "size"), frozenset({"hop", "field", "distinct_bound"})),
    "passthrough": (("name",), frozenset({"field", "transform"})),
    "onehot": (("field", "values"), frozenset({"prefix"})),
}


def duration_ms(text: str | int, what: str) -> int:
    """``"10m"`` -> 600000; also ``ms``, ``s``, ``h``, ``d``, or a number of milliseconds.

    >>> duration_ms("10m", "w"), duration_ms("1.5s", "w"), duration_ms(250, "w")
    (600000, 1500, 250)
    """
    if isinstance(text, int) and not isinstance(text, bool):
        ms = text
    else:
        m = _DURATION.match(str(text).strip())
        if not m:
            raise SpecError(f"{what}: {text!r} is not a duration like 500ms, 30s, 10m, 1h, 7d")
        ms = round(float(m.group(1)) * _UNIT_MS[m.group(2)])
    if ms <= 0:
        raise SpecError(f"{what}: duration must be > 0, got {text!r}")
    return ms


# -- declarations ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Passthrough:
    """The event's own number ``field``, served as feature ``name``."""

    name: str
    field: str
    transform: str | None = None


@dataclass(frozen=True)
class OneHot:
    """One 0/1 feature per value of a categorical ``field``: ``<prefix>_<value>``."""

    field: str
    values: tuple[str, ...]
    prefix: str | None = None

    def names(self) -> list[str]:
        p = self.prefix if self.prefix is not None else self.field
        return [f"{p}_{v}" for v in self.values]


@dataclass(frozen=True)
class Rolling:
    """An aggregate of the entity's records in ``(t - window, t]``, as of each event."""

    name: str
    key: tuple[str, ...]
    agg: str
    window_ms: int
    field: str | None = None
    transform: str | None = None
    half_life_ms: int | None = None
    default: float = 0.0


@dataclass(frozen=True)
class Windowed:
    """A tumbling (``hop == size``) or hopping window aggregate, emitted when it closes."""

    name: str
    key: tuple[str, ...]
    agg: str
    size_ms: int
    hop_ms: int
    field: str | None = None
    distinct_bound: int = 1000


class FieldUse(NamedTuple):
    """One field a feature reads: ``kind`` says what values the feature can take.

    ``"key"``: an entity key field (any scalar: it is stringified); ``"number"``: a numeric
    aggregate's or a pass-through's field; ``"value"``: a distinct count's field (any hashable
    scalar); ``"category"``: a one-hot's field.
    """

    section: str
    feature: str
    field: str
    kind: str


@dataclass(frozen=True)
class FeatureSpec:
    """The features of one event stream; checked when built (:func:`validate`)."""

    name: str
    passthrough: tuple[Passthrough, ...] = ()
    onehot: tuple[OneHot, ...] = ()
    rolling: tuple[Rolling, ...] = ()
    windowed: tuple[Windowed, ...] = ()
    allowed_lateness_ms: int = 300_000
    idle_ms: int = 3_600_000

    def __post_init__(self) -> None:
        validate(self)

    @cached_property
    def base_plan(self) -> tuple[tuple[tuple[str, str], ...],
                                 tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]]:
        """The pass-through features as (name, field), and per one-hot field its features as
        (name, value): what is read off each record, worked out once rather than per record."""
        return (tuple((p.name, p.field) for p in self.passthrough),
                tuple((o.field, tuple(zip(o.names(), o.values, strict=True)))
                      for o in self.onehot))

    def groups(self) -> list[KeyGroup]:
        """One group per entity key, in the order keys first appear in the spec."""
        keys: list[tuple[str, ...]] = []
        for f in (*self.rolling, *self.windowed):
            if f.key not in keys:
                keys.append(f.key)
        return [
            KeyGroup(self.name, k, tuple(f for f in self.rolling if f.key == k),
                     tuple(f for f in self.windowed if f.key == k))
            for k in keys
        ]

    def transforms(self) -> dict[str, str]:
        return {f.name: f.transform for f in (*self.rolling, *self.passthrough)
                if f.transform is not None}

    def field_uses(self) -> list[FieldUse]:
        """Every field a feature reads, in section order (rolling, windowed, passthrough, onehot),
        within a feature its key fields first.

        >>> spec = FeatureSpec("eg", rolling=(Rolling("s", ("card", "shop"), "sum", 60_000,
        ...                                           "amount"),),
        ...                    onehot=(OneHot("channel", ("pos", "web")),))
        >>> [tuple(u) for u in spec.field_uses()]  # doctest: +NORMALIZE_WHITESPACE
        [('rolling', 's', 'card', 'key'), ('rolling', 's', 'shop', 'key'),
         ('rolling', 's', 'amount', 'number'), ('onehot', 'channel', 'channel', 'category')]
        """
        out: list[FieldUse] = []
        for section, feats in (("rolling", self.rolling), ("windowed", self.windowed)):
            for f in feats:
                out.extend(FieldUse(section, f.name, k, "key") for k in f.key)
                if f.field is not None:
                    out.append(FieldUse(section, f.name, f.field, _AGG_KIND[f.agg]))
        out.extend(FieldUse("passthrough", p.name, p.field, "number") for p in self.passthrough)
        out.extend(FieldUse("onehot", o.field, o.field, "category") for o in self.onehot)
        return out


@dataclass
class KeyGroup:
    """The features of a spec that share one entity key: computed by one (sharded) step."""

    spec: str
    key: tuple[str, ...]
    rolling: tuple[Rolling, ...]
    windowed: tuple[Windowed, ...]
    fields: tuple[str, ...] = field(init=False)
    longest_ms: int = field(init=False)

    def __post_init__(self) -> None:
        used = [f.field for f in (*self.rolling, *self.windowed) if f.field]
        self.fields = tuple(dict.fromkeys(used))
        self.longest_ms = max([f.window_ms for f in self.rolling]
                              + [w.size_ms for w in self.windowed] + [1])


# -- checks ---------------------------------------------------------------------------------------

def validate(spec: FeatureSpec) -> None:
    """Raise :class:`SpecError` naming the section and the feature of the first fault."""
    if spec.allowed_lateness_ms < 0:
        raise SpecError(f"allowed_lateness: must be >= 0, got {spec.allowed_lateness_ms} ms")
    if spec.idle_ms <= 0:
        raise SpecError(f"idle: must be > 0, got {spec.idle_ms} ms")
    served: list[tuple[str, str, str]] = [
        *(("rolling", f.name, f.name) for f in spec.rolling),
        *(("passthrough", p.name, p.name) for p in spec.passthrough),
        *(("onehot", o.field, n) for o in spec.onehot for n in o.names()),
    ]
    _unique(served, "feature name")
    _unique([("windowed", w.name, w.name) for w in spec.windowed], "windowed feature name")
    for f in spec.rolling:
        where = f"[[rolling]] {f.name!r}"
        if f.agg not in ROLLING_AGGS:
            raise SpecError(f"{where}: unknown rolling agg {f.agg!r}; one of {ROLLING_AGGS}")
        _check_common(where, f.key, f.agg, f.field)
        if f.window_ms <= 0:
            raise SpecError(f"{where}: window must be > 0")
        if f.transform not in TRANSFORMS:
            raise SpecError(f"{where}: unknown transform {f.transform!r}; one of {TRANSFORMS}")
        if f.agg == "ewm" and (f.half_life_ms is None or f.half_life_ms <= 0):
            raise SpecError(f"{where}: agg 'ewm' needs half_life > 0")
    for w in spec.windowed:
        where = f"[[windowed]] {w.name!r}"
        if w.agg not in WINDOWED_AGGS:
            raise SpecError(f"{where}: unknown windowed agg {w.agg!r}; one of {WINDOWED_AGGS}")
        _check_common(where, w.key, w.agg, w.field)
        if w.size_ms <= 0 or w.hop_ms <= 0 or w.hop_ms > w.size_ms or w.size_ms % w.hop_ms:
            raise SpecError(f"{where}: need 0 < hop <= size, size a multiple of hop")
        if w.distinct_bound <= 0:
            raise SpecError(f"{where}: distinct_bound must be > 0")
    for p in spec.passthrough:
        where = f"[[passthrough]] {p.name!r}"
        if not isinstance(p.field, str) or not p.field:
            raise SpecError(f"{where}: field must be a field name, got {p.field!r}")
        if p.transform not in TRANSFORMS:
            raise SpecError(f"{where}: unknown transform {p.transform!r}; one of {TRANSFORMS}")
    for o in spec.onehot:
        if not o.values:
            raise SpecError(f"[[onehot]] {o.field!r}: values must be a non-empty list")


def _unique(names: list[tuple[str, str, str]], what: str) -> None:
    first: dict[str, tuple[str, str]] = {}
    for section, entry, n in names:
        if n in first:
            s0, e0 = first[n]
            raise SpecError(f"[[{section}]] {entry!r}: {what} {n!r} used twice (first in "
                            f"[[{s0}]] {e0!r})")
        first[n] = (section, entry)


def _check_common(where: str, key: tuple[str, ...], agg: str, fld: str | None) -> None:
    if not key or not all(isinstance(k, str) and k for k in key):
        raise SpecError(f"{where}: key must be a field name or a list of them")
    if fld is not None and (not isinstance(fld, str) or not fld):
        raise SpecError(f"{where}: field must be a field name, got {fld!r}")
    if agg in NEEDS_FIELD and fld is None:
        raise SpecError(f"{where}: agg {agg!r} needs a field")
    if agg not in NEEDS_FIELD and fld is not None:
        raise SpecError(f"{where}: agg {agg!r} reads no field (got field {fld!r})")


# -- loading --------------------------------------------------------------------------------------

def load_spec(path: str | Path) -> FeatureSpec:
    """A spec from a TOML file (see ``streams/*.toml``); errors name the file, the section and the
    feature."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as ex:
        raise SpecError(f"{p}: {ex}") from None
    try:
        return spec_from_dict(doc)
    except SpecError as ex:
        raise SpecError(f"{p}: {ex}") from None


def spec_from_dict(doc: dict[str, Any]) -> FeatureSpec:
    """A spec from a parsed document: its feature sections, ``name``, ``allowed_lateness`` and
    ``idle``; any other top-level key is ignored (a stream file's ``events``, ``models``, ...).

    >>> spec_from_dict({"name": "eg", "events": {"key": "card"},
    ...                 "rolling": [{"name": "n", "key": "card", "agg": "count",
    ...                              "window": "1h"}]}).rolling[0].window_ms
    3600000
    >>> spec_from_dict({"name": "eg", "rolling": [  # doctest: +ELLIPSIS
    ...     {"name": "n", "key": "card", "agg": "summ", "window": "1h", "field": "amount"}]})
    Traceback (most recent call last):
    undertow.errors.SpecError: [[rolling]] 'n': unknown rolling agg 'summ'; one of (...)
    """
    if not isinstance(doc, dict):
        raise SpecError(f"a spec is a table of sections, got {type(doc).__name__}")
    if "name" not in doc:
        raise SpecError("missing 'name'")
    name = doc["name"]
    if not isinstance(name, str) or not name:
        raise SpecError(f"name: must be a non-empty string, got {name!r}")
    rolling = [
        Rolling(d["name"], _key(d["key"], where), d["agg"],
                duration_ms(d["window"], f"{where}: window"), _opt_str(d, "field", where),
                _opt_str(d, "transform", where),
                duration_ms(d["half_life"], f"{where}: half_life") if "half_life" in d else None,
                _number(d.get("default", 0.0), f"{where}: default"))
        for where, d in _entries(doc, "rolling")
    ]
    windowed = []
    for where, d in _entries(doc, "windowed"):
        size = duration_ms(d["size"], f"{where}: size")
        windowed.append(Windowed(
            d["name"], _key(d["key"], where), d["agg"], size,
            duration_ms(d["hop"], f"{where}: hop") if "hop" in d else size,
            _opt_str(d, "field", where), _count(d.get("distinct_bound", 1000),
                                                f"{where}: distinct_bound")))
    passthrough = [
        Passthrough(d["name"], d.get("field", d["name"]), _opt_str(d, "transform", where))
        for where, d in _entries(doc, "passthrough")
    ]
    onehot = []
    for where, d in _entries(doc, "onehot"):
        values = d["values"]
        if not isinstance(values, list) or not values or not all(
                isinstance(v, str | int) and not isinstance(v, bool) for v in values):
            raise SpecError(f"{where}: values must be a non-empty list of strings or integers, "
                            f"got {values!r}")
        onehot.append(OneHot(d["field"], tuple(values), _opt_str(d, "prefix", where)))
    lateness = doc.get("allowed_lateness", "5m")
    return FeatureSpec(
        name, tuple(passthrough), tuple(onehot), tuple(rolling), tuple(windowed),
        0 if lateness in (0, "0") else duration_ms(lateness, "allowed_lateness"),
        duration_ms(doc.get("idle", "1h"), "idle"),
    )


def _entries(doc: dict[str, Any], section: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The entries of one feature section, each with the ``[[section]] 'name'`` naming it, after
    checking their keys."""
    entries = doc.get(section, [])
    if not isinstance(entries, list) or not all(isinstance(d, dict) for d in entries):
        raise SpecError(f"[[{section}]]: must be an array of tables ([[{section}]] entries), "
                        f"got {type(entries).__name__}")
    required, optional = _KEYS[section]
    ident = required[0]
    for i, d in enumerate(entries, 1):
        for k in required:
            if k not in d:
                raise SpecError(f"[[{section}]] #{i}: missing {k!r}")
        if not isinstance(d[ident], str) or not d[ident]:
            raise SpecError(f"[[{section}]] #{i}: {ident} must be a non-empty string, "
                            f"got {d[ident]!r}")
        where = f"[[{section}]] {d[ident]!r}"
        extra = sorted(set(d) - set(required) - optional)
        if extra:
            raise SpecError(f"{where}: unknown settings {extra}; expected some of "
                            f"{sorted({*required, *optional})}")
        yield where, d


def _key(v: Any, where: str) -> tuple[str, ...]:
    if isinstance(v, str):
        return (v,)
    if isinstance(v, list) and v:
        return tuple(v)
    raise SpecError(f"{where}: key must be a field name or a list of them")


def _opt_str(d: dict[str, Any], k: str, where: str) -> str | None:
    v = d.get(k)
    if v is not None and not isinstance(v, str):
        raise SpecError(f"{where}: {k} must be a string, got {v!r}")
    return v


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SpecError(f"{what}: must be a number, got {v!r}")
    return float(v)


def _count(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(f"{what}: must be an integer, got {v!r}")
    return v
