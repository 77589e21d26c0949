"""The card-fraud scenario: its event schema and its features.

Per event, as of its own event time: ``amount``, the channel one-hot, per card the count / sum /
mean of ``amount`` over the last 10 minutes and hour and the seconds since the card's previous
event, the amount over the card's hourly mean, and per merchant the event count over 10 minutes.
Amount-valued and time-gap features are served as ``log1p`` of their value (:data:`LOG_FEATURES`).

>>> from undertow.schema import Event
>>> base_features(Event("e1", "c1", 0, {"amount": 30.0, "channel": "online"})).features
{'amount': 30.0, 'channel_pos': 0.0, 'channel_online': 1.0, 'channel_atm': 0.0}
"""

from __future__ import annotations

from math import log1p

from undertow.features import RollingFeatures
from undertow.schema import FRAUD_EVENTS, Event, FeaturedEvent

SCHEMA = FRAUD_EVENTS
MINUTE_MS = 60_000
CARD_WINDOWS = {"10m": 10 * MINUTE_MS, "1h": 60 * MINUTE_MS}
MERCHANT_WINDOWS = {"10m": 10 * MINUTE_MS}
CHANNELS = ("pos", "online", "atm")


def base_features(ev: Event) -> FeaturedEvent:
    """The event's own fields as features."""
    ch = ev.fields["channel"]
    return FeaturedEvent(
        ev,
        {
            "amount": float(ev.fields["amount"]),
            "channel_pos": 1.0 if ch == "pos" else 0.0,
            "channel_online": 1.0 if ch == "online" else 0.0,
            "channel_atm": 1.0 if ch == "atm" else 0.0,
        },
    )


def merchant_state(allowed_lateness_ms: int) -> RollingFeatures:
    return RollingFeatures(
        "merchant",
        windows=MERCHANT_WINDOWS,
        aggregates=("count",),
        since_previous=False,
        allowed_lateness_ms=allowed_lateness_ms,
    )


def card_state(allowed_lateness_ms: int) -> RollingFeatures:
    return RollingFeatures(
        "card", windows=CARD_WINDOWS, allowed_lateness_ms=allowed_lateness_ms
    )


#: Heavy-tailed features served as ``log1p`` of their value: a linear model on raw amounts is
#: dominated by a few large ones (ROC AUC after the drift 0.75 raw vs 0.89 with logs, seed 7).
LOG_FEATURES = (
    "amount", "card_sum_10m", "card_mean_10m", "card_sum_1h", "card_mean_1h",
    "amount_to_card_mean_1h", "card_secs_since_prev",
)


def derive_features(f: dict[str, float]) -> None:
    """Add the amount over the card's hourly mean (1.0 when that mean is 0), then log1p the
    heavy-tailed features in place."""
    mean = f["card_mean_1h"]
    f["amount_to_card_mean_1h"] = f["amount"] / mean if mean else 1.0
    for name in LOG_FEATURES:
        f[name] = log1p(f[name])
