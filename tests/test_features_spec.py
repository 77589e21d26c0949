"""The feature declarations (undertow/features/spec.py): loading, the fields each feature reads,
and errors that name the section and the feature."""

from __future__ import annotations

import re

import pytest

from undertow.errors import SpecError, StreamError
from undertow.features import FieldUse, load_spec, spec_from_dict


def uses(section: str, feature: str, *pairs: str) -> list[FieldUse]:
    """``uses("rolling", "f", "card_id:key", "amount:number")``."""
    return [FieldUse(section, feature, *p.split(":")) for p in pairs]


def test_the_fraud_spec_reads_these_fields():
    card, merchant, amount = "card_id:key", "merchant_id:key", "amount:number"
    assert load_spec("streams/fraud.toml").field_uses() == [
        *uses("rolling", "card_count_10m", card),
        *uses("rolling", "card_sum_10m", card, amount),
        *uses("rolling", "card_mean_10m", card, amount),
        *uses("rolling", "card_count_1h", card),
        *uses("rolling", "card_sum_1h", card, amount),
        *uses("rolling", "card_mean_1h", card, amount),
        *uses("rolling", "card_secs_since_prev", card),  # since_prev reads no field
        *uses("rolling", "amount_to_card_mean_1h", card, amount),
        *uses("rolling", "merchant_count_10m", merchant),
        *uses("windowed", "merchant_amount_sum_1h", merchant, amount),
        *uses("passthrough", "amount", amount),
        *uses("onehot", "channel", "channel:category"),
    ]


def test_the_clicks_spec_reads_these_fields():
    user, dwell, price = "user_id:key", "dwell_s:number", "price:number"
    assert load_spec("streams/clicks.toml").field_uses() == [
        *uses("rolling", "user_clicks_5m", user),
        *uses("rolling", "user_dwell_mean_10m", user, dwell),
        *uses("rolling", "user_dwell_std_10m", user, dwell),
        *uses("rolling", "user_dwell_ewm_2m", user, dwell),
        *uses("rolling", "user_price_max_30m", user, price),
        *uses("rolling", "user_price_min_30m", user, price),
        *uses("rolling", "user_pages_distinct_30m", user, "page:value"),  # any hashable value
        *uses("rolling", "user_prev_price", user, price),  # last: a number
        *uses("rolling", "user_secs_since_prev", user),
        *uses("rolling", "user_dwell_ratio_30m", user, dwell),
        *uses("rolling", "user_page_views_30m", user, "page:key"),  # a two-field key
        *uses("rolling", "user_page_dwell_sum_30m", user, "page:key", dwell),
        *uses("windowed", "page_clicks_5m_by_1m", "page:key"),
        *uses("windowed", "page_dwell_mean_5m_by_1m", "page:key", dwell),
        *uses("windowed", "user_pages_distinct_10m", user, "page:value"),
        *uses("passthrough", "dwell_s", dwell),
        *uses("passthrough", "price", price),
        *uses("onehot", "page", "page:category"),
        *uses("onehot", "device", "device:category"),
    ]


ROLLING = {"name": "f", "key": "k", "agg": "sum", "window": "1m", "field": "x"}


def rolling_with(change: dict) -> dict:
    """A spec whose second rolling entry is ``ROLLING`` changed (None: that key removed)."""
    entry = {k: v for k, v in {**ROLLING, **change}.items() if v is not None}
    return {"name": "s", "rolling": [{**ROLLING, "name": "e"}, entry]}


def raises(message: str):
    return pytest.raises(SpecError, match="^" + re.escape(message))


@pytest.mark.parametrize(("change", "message"), [
    ({"agg": "median"}, "[[rolling]] 'f': unknown rolling agg 'median'; one of ('count', "),
    ({"window": "ten minutes"}, "[[rolling]] 'f': window: 'ten minutes' is not a duration"),
    ({"window": "0s"}, "[[rolling]] 'f': window: duration must be > 0, got '0s'"),
    ({"field": None}, "[[rolling]] 'f': agg 'sum' needs a field"),
    ({"agg": "count"}, "[[rolling]] 'f': agg 'count' reads no field (got field 'x')"),
    ({"agg": "ewm"}, "[[rolling]] 'f': agg 'ewm' needs half_life > 0"),
    ({"colour": "red"}, "[[rolling]] 'f': unknown settings ['colour']"),
    ({"transform": "sqrt"}, "[[rolling]] 'f': unknown transform 'sqrt'"),
    ({"transform": 3}, "[[rolling]] 'f': transform must be a string, got 3"),
    ({"key": []}, "[[rolling]] 'f': key must be a field name or a list of them"),
    ({"key": ["k", 4]}, "[[rolling]] 'f': key must be a field name or a list of them"),
    ({"field": 7}, "[[rolling]] 'f': field must be a string, got 7"),
    ({"default": "none"}, "[[rolling]] 'f': default: must be a number, got 'none'"),
    ({"agg": None}, "[[rolling]] #2: missing 'agg'"),
    ({"name": None}, "[[rolling]] #2: missing 'name'"),
    ({"name": 12}, "[[rolling]] #2: name must be a non-empty string, got 12"),
])
def test_a_bad_rolling_feature_is_named_by_section_and_feature(change, message):
    spec_from_dict(rolling_with({}))
    with raises(message):
        spec_from_dict(rolling_with(change))


@pytest.mark.parametrize(("doc", "message"), [
    ({"windowed": [{"name": "w", "key": "k", "agg": "count", "size": "1m", "hop": "2m"}]},
     "[[windowed]] 'w': need 0 < hop <= size, size a multiple of hop"),
    ({"windowed": [{"name": "w", "key": "k", "agg": "ewm", "size": "1m", "field": "x"}]},
     "[[windowed]] 'w': unknown windowed agg 'ewm'; one of ('count', "),
    ({"windowed": [{"name": "w", "key": "k", "agg": "distinct", "size": "1m", "field": "x",
                    "distinct_bound": 0}]},
     "[[windowed]] 'w': distinct_bound must be > 0"),
    ({"windowed": [{"name": "w", "key": "k", "agg": "sum", "field": "x"}]},
     "[[windowed]] #1: missing 'size'"),
    ({"passthrough": [{"name": "a", "transform": "exp"}]},
     "[[passthrough]] 'a': unknown transform 'exp'"),
    ({"passthrough": [{"name": "a"}, {"name": "a"}]},
     "[[passthrough]] 'a': feature name 'a' used twice (first in [[passthrough]] 'a')"),
    ({"rolling": [{**ROLLING, "name": "channel_pos"}],
      "onehot": [{"field": "channel", "values": ["pos"]}]},
     "[[onehot]] 'channel': feature name 'channel_pos' used twice (first in [[rolling]] "
     "'channel_pos')"),
    ({"onehot": [{"field": "channel", "values": "pos"}]},
     "[[onehot]] 'channel': values must be a non-empty list of strings or integers, got 'pos'"),
    ({"onehot": [{"field": "channel", "values": ["pos"], "prefx": "c"}]},
     "[[onehot]] 'channel': unknown settings ['prefx']"),
    ({"onehot": [{"values": ["pos"]}]}, "[[onehot]] #1: missing 'field'"),
    ({"rolling": {"name": "f"}},
     "[[rolling]]: must be an array of tables ([[rolling]] entries), got dict"),
    ({"allowed_lateness": "soon"}, "allowed_lateness: 'soon' is not a duration"),
])
def test_every_section_names_its_entry(doc, message):
    with raises(message):
        spec_from_dict({"name": "s", **doc})


def test_the_name_is_required():
    with raises("missing 'name'"):
        spec_from_dict({"rolling": [ROLLING]})


def test_a_whole_stream_document_is_accepted_and_its_other_keys_ignored():
    features = {"name": "pay", "allowed_lateness": "1m", "rolling": [ROLLING],
                "onehot": [{"field": "channel", "values": ["web", "pos"]}]}
    stream = {**features, "events": {"key": "k", "fields": {"x": "number"}},
              "labels": {"value": "y"}, "models": [{"name": "lr", "model": "logreg"}],
              "ensemble": {"kind": "vote"}, "requests": {"topic": "q"},
              "anything": {"else": 1}, "description": "a table or a value, either way"}
    assert spec_from_dict(stream) == spec_from_dict(features)
    assert spec_from_dict(stream).allowed_lateness_ms == 60_000


def test_load_spec_names_the_file(tmp_path):
    p = tmp_path / "my.toml"
    p.write_text('name = "s"\n[[rolling]]\nname = "f"\nkey = "k"\nagg = "summ"\nwindow = "1m"\n'
                 'field = "x"\n')
    with raises(f"{p}: [[rolling]] 'f': unknown rolling agg 'summ'"):
        load_spec(p)
    p.write_text("name = \n")
    with raises(f"{p}: "):
        load_spec(p)
    # One exception base: a command catches the stream file's errors and this alike.
    assert issubclass(SpecError, StreamError) and issubclass(SpecError, ValueError)
