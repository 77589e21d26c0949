"""Declarative features over event time: a spec, and the state that computes it exactly.

Three modules, one idea each: :mod:`~undertow.features.spec` (the declarations, their checks and
loading), :mod:`~undertow.features.aggregates` (the aggregation math) and
:mod:`~undertow.features.state` (the per-entity state, in event time). The public names are
re-exported here: ``from undertow.features import FeatureSpec, SpecState, load_spec``.

A :class:`FeatureSpec` lists, for one event stream:

* **pass-through** fields (the event's own numbers) and **one-hot** categorical fields;
* **rolling** features, read *as of each event*: for the entity ``key`` (one field or a tuple of
  fields) the aggregate of ``field`` over the records with ``ts`` in ``(t - D, t]`` that have
  arrived, the event itself included;
* **windowed** features: tumbling (``hop == size``) or hopping windows ``[start, start + size)``
  per entity, whose aggregates are emitted once, when the window closes, as
  :class:`WindowAggregate` records (to a features topic, for dashboards and other consumers).

Aggregations (``agg``):

=============  ================================================================================
``count``      records in the window
``sum``        sum of ``field``
``mean``       mean of ``field``
``var``        sample variance of ``field`` (n - 1 in the denominator; 0.0 below two records)
``std``        its square root
``min``        least ``field``
``max``        greatest ``field``
``last``       rolling: ``field`` of the entity's previous record in the window (the event itself
               excluded, else it would be its own value), ``default`` if none; windowed: the
               value of the record with the latest ``ts`` (the later arrival on a tie)
``since_prev`` rolling only: seconds since the entity's previous record, capped at the window
               (the value for a first record too), so it is exact from bounded state
``distinct``   distinct values of ``field``. Rolling windows keep their records, so this is exact.
               Windowed aggregates keep no records: exact up to ``distinct_bound`` values, then a
               HyperLogLog estimate (datasketch, precision 12: about 1.6 % standard error)
``ewm``        rolling only: the time-decayed mean of ``field`` over the window, each record
               weighted by ``2 ** (-(t - ts) / half_life)``; exact from the window's records
``ratio``      rolling only: ``field`` of the event over the window mean of ``field`` (1.0 when
               that mean is 0)
=============  ================================================================================

``count`` and ``since_prev`` read no field (giving one is an error). ``transform = "log1p"``
serves ``log1p`` of a value. Features are served in the order: rolling (in spec order),
pass-through, one-hot. :meth:`FeatureSpec.field_uses` lists every field the features read, and
what kind of value each use needs (the stream file checks them against its declared fields).

**Time.** Each feature step keeps an event-time *watermark*
(:class:`~undertow.watermark.Watermark`): the least, over the source partitions it has seen, of
the newest ``ts`` of each (a partition that has fallen more than ``idle_ms`` behind the newest one
stops holding it back, so an idle partition cannot stop windows from closing or state from being
evicted). A record with ``ts``
older than ``watermark - allowed_lateness`` is **late**: it changes no window, is not served, and
goes to the late side stream (the dead-letter topic, reason ``late_event``) and a counter. (The
one exception is a record behind the watermark whose own partition or path is not behind by that
much: the first records of a path that appears after the others, such as a worker that started
later, or the records of a partition lagging more than ``idle_ms`` behind the others. It is
served; windows already closed are not reopened for it, which is counted.) Within the lateness,
an out-of-order record updates every window it belongs to, and is served as of its own time.
Values already served are never revised: a record that arrives after an event was served is not
in that event's values, whatever its ``ts``.

**State** has an end: the *eviction horizon* is ``watermark - allowed_lateness - longest window``
of the key group; records at or before it are in no window a non-late record can read, and are
evicted; an entity with no records left is dropped; a closed window is dropped once emitted. At
the end of a bounded input every open window is emitted. So a rolling value is over the records
of its entity in ``(t - D, t]`` that arrived before it **and are newer than the eviction horizon
when it arrives** (for a record within the lateness of the watermark this is every record in its
window). A record at or behind the horizon itself, which is not late only on a path that is new
or more than ``idle_ms`` behind the others (a partition lagging that far, say, during a catch-up),
is served over itself alone (``count`` 1, ``last`` its default, ``since_prev`` the window), is not
kept, and misses every window (all are closed); it is counted in ``GroupState.behind_horizon``.
Reading the partitions aligned by event time keeps a catch-up from lagging that far.

No wall clock is read here: a replay's values depend on the data and its order only.
"""

from undertow.errors import SpecError
from undertow.features.spec import (
    FEATURE_SECTIONS,
    ROLLING_AGGS,
    TRANSFORMS,
    WINDOWED_AGGS,
    FeatureSpec,
    FieldUse,
    KeyGroup,
    OneHot,
    Passthrough,
    Rolling,
    Windowed,
    duration_ms,
    load_spec,
    spec_from_dict,
    validate,
)
from undertow.features.state import (
    GroupState,
    History,
    SpecState,
    WindowAggregate,
    base_features,
    entity_of,
    finish,
    spec_names,
)

__all__ = [
    "FEATURE_SECTIONS", "ROLLING_AGGS", "TRANSFORMS", "WINDOWED_AGGS", "FeatureSpec", "FieldUse",
    "GroupState", "History", "KeyGroup", "OneHot", "Passthrough", "Rolling", "SpecError",
    "SpecState", "WindowAggregate", "Windowed", "base_features", "duration_ms", "entity_of",
    "finish", "load_spec", "spec_from_dict", "spec_names", "validate",
]
