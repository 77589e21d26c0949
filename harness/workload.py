"""Synthetic card-transaction workload: events, delayed labels and concept drift.

This module is pure logic: it imports neither Bytewax nor Kafka, uses only
private ``random.Random`` instances seeded from the config and never reads the
wall clock, so the same :class:`WorkloadConfig` always yields byte-identical
records.

Generative process
------------------
* Every card has a usual amount scale (lognormal), a legitimate transaction
  rate (lognormal weight on a global Poisson process) and its own channel mix.
  Legitimate transactions follow that card's behaviour.
* Merchants have Zipf-like popularity.
* Fraud comes in *episodes* on a compromised card, started by a Poisson-like
  process whose hazard is nudged so the positive rate stays close to
  ``fraud_rate`` on both sides of the drift.

  - Before the drift: bursts of 4-10 transactions about 12 s apart, 70 %
    online, 80 % of them at ~6x the card's usual amount, half of them at a few
    otherwise quiet "risky" merchants.
  - After the drift: longer, faster bursts (4-12 transactions, ~8 s apart) of
    *small* amounts (20/40 at ATMs, under 10 at points of sale), at ordinary
    merchants.

* Noise: legitimate "sprees" (short bursts at normal amounts) on both sides of
  the drift, 20 % (before) or 15 % (after) of fraud transactions at normal
  amounts. After the drift legitimate high-amount online sprees (~6 % of
  events) appear, so the behaviour that meant fraud before the drift becomes
  legitimate: a model trained before the drift ranks them above the new fraud.
* Per card, legitimate transactions arrive every ~200 s on average at the
  default settings (1000 cards, 200 ms global gap), so a 10-minute window
  normally holds a handful of events and a 1-hour window the card's habits.

Labels arrive ``delay`` after their event, with ``delay`` lognormal around
``delay_median_ms`` clipped to ``[delay_min_ms, delay_max_ms]``; only a
``label_coverage`` fraction of events is ever labelled.

Records
-------
Event: ``{"event_id", "card_id", "merchant_id", "amount", "channel", "ts"}``;
label: ``{"event_id", "card_id", "is_fraud", "ts"}`` where a label's ``ts`` is
the time the label becomes known (event ``ts`` + delay). Times are epoch ms.

>>> w = generate(WorkloadConfig(seed=1, n_events=2_000))
>>> len(w.events), w.events[0]["event_id"], w.drift_index
(2000, 'e000000000', 1000)
>>> w.drift_ts == w.events[1000]["ts"]
True
>>> sorted(w.events[0])
['amount', 'card_id', 'channel', 'event_id', 'merchant_id', 'ts']
>>> generate(WorkloadConfig(seed=1, n_events=2_000)).events == w.events
True
"""

from __future__ import annotations

import heapq
import json
import math
import random
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Literal

__all__ = [
    "CHANNELS",
    "DEFAULT_START_MS",
    "EVENT_FIELDS",
    "LABEL_FIELDS",
    "MALFORMED_REASONS",
    "RecordStream",
    "Workload",
    "WorkloadConfig",
    "WorkloadStats",
    "drift_index",
    "drift_ts",
    "generate",
    "iter_records",
    "malformed_records",
]

#: 2026-01-01T00:00:00Z in epoch milliseconds.
DEFAULT_START_MS = 1_767_225_600_000

CHANNELS: tuple[str, str, str] = ("pos", "online", "atm")
EVENT_FIELDS: tuple[str, ...] = ("event_id", "card_id", "merchant_id", "amount", "channel", "ts")
LABEL_FIELDS: tuple[str, ...] = ("event_id", "card_id", "is_fraud", "ts")

#: Reason codes of :func:`malformed_records`, as the event validator must report them.
MALFORMED_REASONS: tuple[str, ...] = (
    "bad_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "not_finite",
    "below_min",
    "unknown_category",
)

RecordKind = Literal["event", "label"]

_POS, _ONLINE, _ATM = 0, 1, 2
_LEGIT, _FRAUD, _SPLURGE = 0, 1, 2


@dataclass(frozen=True)
class WorkloadConfig:
    """Everything that determines a workload; equal configs give equal output."""

    seed: int
    n_events: int
    n_cards: int = 1000
    n_merchants: int = 200
    start_ms: int = DEFAULT_START_MS
    #: Mean gap between consecutive events of the whole stream (all cards).
    mean_interarrival_ms: float = 200.0
    #: Target share of fraudulent events, on each side of the drift.
    fraud_rate: float = 0.03
    #: Fraction of the stream (by event index) where the fraud pattern changes; None = never.
    drift_at: float | None = 0.5
    delay_min_ms: int = 1_000
    delay_median_ms: int = 120_000
    delay_max_ms: int = 7_200_000
    #: Shape (sigma of the underlying normal) of the lognormal label delay.
    delay_sigma: float = 1.5
    #: Fraction of events that ever get a label.
    label_coverage: float = 1.0

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.n_events < 0:
            problems.append("n_events must be >= 0")
        if self.n_cards < 1:
            problems.append("n_cards must be >= 1")
        if self.n_merchants < 1:
            problems.append("n_merchants must be >= 1")
        if not self.mean_interarrival_ms > 0:
            problems.append("mean_interarrival_ms must be > 0")
        if not 0.0 <= self.fraud_rate <= 0.3:
            problems.append("fraud_rate must be within [0, 0.3]")
        if self.drift_at is not None and not 0.0 <= self.drift_at <= 1.0:
            problems.append("drift_at must be None or within [0, 1]")
        if not 1 <= self.delay_min_ms <= self.delay_median_ms <= self.delay_max_ms:
            problems.append("need 1 <= delay_min_ms <= delay_median_ms <= delay_max_ms")
        if not self.delay_sigma >= 0:
            problems.append("delay_sigma must be >= 0")
        if not 0.0 <= self.label_coverage <= 1.0:
            problems.append("label_coverage must be within [0, 1]")
        if problems:
            raise ValueError("invalid WorkloadConfig: " + "; ".join(problems))


@dataclass(frozen=True)
class WorkloadStats:
    """Summary of a generated workload (ground truth, independent of label coverage)."""

    n_events: int
    n_labels: int
    n_fraud: int
    n_positive_labels: int
    positives_rate: float
    #: Share of fraud among events with index < drift_index (None if there are none).
    positives_rate_before_drift: float | None
    #: Share of fraud among events with index >= drift_index (None if there are none).
    positives_rate_after_drift: float | None
    first_ts: int | None
    last_ts: int | None


@dataclass(frozen=True)
class Workload:
    """A fully materialised workload; see :func:`generate`."""

    config: WorkloadConfig
    #: Events in event-time order (ts non-decreasing, index == event_id number).
    events: list[dict[str, Any]]
    #: Labels in label-time order (ts, then event_id).
    labels: list[dict[str, Any]]
    #: Ground truth for every event, parallel to ``events`` (labelled or not).
    fraud: list[bool]
    #: Index of the first event generated under the post-drift regime, or None.
    drift_index: int | None
    #: ``ts`` of the event at ``drift_index``, or None when there is no drift.
    drift_ts: int | None
    stats: WorkloadStats = field(repr=False)


def drift_index(config: WorkloadConfig) -> int | None:
    """Index of the first post-drift event, or None if the stream never drifts.

    >>> drift_index(WorkloadConfig(seed=0, n_events=10, drift_at=0.25))
    2
    >>> drift_index(WorkloadConfig(seed=0, n_events=10, drift_at=None)) is None
    True
    """
    if config.drift_at is None:
        return None
    index = int(config.drift_at * config.n_events)
    return index if index < config.n_events else None


def drift_ts(config: WorkloadConfig, events: list[dict[str, Any]]) -> int | None:
    """Event time at which the drift happens, given the events of ``config``."""
    index = drift_index(config)
    return None if index is None else int(events[index]["ts"])


# --------------------------------------------------------------------------- regimes


@dataclass(frozen=True)
class _Regime:
    post: bool
    fraud_len: tuple[int, int]
    fraud_gap_ms: float
    #: Legitimate bursts at the card's usual amounts (share of events).
    spree_frac: float
    spree_len: tuple[int, int]
    spree_gap_ms: float
    #: Legitimate high-amount online bursts (share of events): fraud-like before the drift.
    splurge_frac: float
    splurge_len: tuple[int, int]
    splurge_gap_ms: float


_PRE = _Regime(
    post=False,
    fraud_len=(4, 10),
    fraud_gap_ms=12_000.0,
    spree_frac=0.03,
    spree_len=(3, 6),
    spree_gap_ms=45_000.0,
    splurge_frac=0.0,
    splurge_len=(3, 7),
    splurge_gap_ms=30_000.0,
)
_POST = _Regime(
    post=True,
    fraud_len=(4, 12),
    fraud_gap_ms=8_000.0,
    spree_frac=0.03,
    spree_len=(3, 6),
    spree_gap_ms=45_000.0,
    splurge_frac=0.06,
    splurge_len=(3, 7),
    splurge_gap_ms=30_000.0,
)


def _mean_len(bounds: tuple[int, int]) -> float:
    return (bounds[0] + bounds[1]) / 2.0


@dataclass(frozen=True)
class _RegimeRates:
    """Per-base-arrival probabilities that produce the regime's event shares."""

    base_mean_ms: float
    p_fraud: float
    p_spree: float
    p_splurge: float
    fraud_mean_len: float

    @classmethod
    def of(cls, regime: _Regime, config: WorkloadConfig) -> _RegimeRates:
        f = config.fraud_rate
        lf = _mean_len(regime.fraud_len)
        ls = _mean_len(regime.spree_len)
        lh = _mean_len(regime.splurge_len)
        # Share of events that are the first event of something (a "base arrival").
        base = 1.0 - f * (lf - 1) / lf
        base -= regime.spree_frac * (ls - 1) / ls + regime.splurge_frac * (lh - 1) / lh
        return cls(
            base_mean_ms=config.mean_interarrival_ms / base,
            p_fraud=f / lf / base,
            p_spree=regime.spree_frac / ls / base,
            p_splurge=regime.splurge_frac / lh / base,
            fraud_mean_len=lf,
        )


# ------------------------------------------------------------------------ generator

# A scheduled event: (t_ms, seq, card, merchant, amount, channel, is_fraud).
_Pending = tuple[float, int, int, int, float, int, bool]


class _World:
    """Cards and merchants, drawn once per seed."""

    def __init__(self, config: WorkloadConfig) -> None:
        rng = random.Random(f"undertow.workload:{config.seed}:world")
        n_cards, n_merchants = config.n_cards, config.n_merchants
        self.card_ids = [f"c{i:06d}" for i in range(n_cards)]
        self.merchant_ids = [f"m{i:05d}" for i in range(n_merchants)]
        self.scale = [rng.lognormvariate(math.log(35.0), 0.6) for _ in range(n_cards)]
        self.p_online = [rng.uniform(0.05, 0.5) for _ in range(n_cards)]
        self.p_atm = [rng.uniform(0.03, 0.12) for _ in range(n_cards)]
        rate = [rng.lognormvariate(0.0, 0.5) for _ in range(n_cards)]
        self.card_cum = list(accumulate(rate))
        # Zipf-like popularity over a random permutation of merchant ids.
        order = list(range(n_merchants))
        rng.shuffle(order)
        popularity = [0.0] * n_merchants
        for rank, m in enumerate(order):
            popularity[m] = 1.0 / (rank + 1) ** 0.8
        self.merchant_cum = list(accumulate(popularity))
        # A few quiet merchants where pre-drift fraudsters like to shop.
        quiet = order[n_merchants // 2 :] or order
        self.risky = rng.sample(quiet, min(len(quiet), max(1, n_merchants // 40)))


def _atm_amount(amount: float) -> float:
    return float(max(20, 10 * round(amount / 10.0)))


def _event_stream(
    config: WorkloadConfig,
) -> Iterator[tuple[dict[str, Any], bool, dict[str, Any] | None]]:
    """Yield ``(event, is_fraud, label_or_None)`` in event-time order."""
    world = _World(config)
    rng = random.Random(f"undertow.workload:{config.seed}:events")
    lrng = random.Random(f"undertow.workload:{config.seed}:labels")

    n_events = config.n_events
    start_ms = config.start_ms
    fraud_rate = config.fraud_rate
    d_index = drift_index(config)
    switch_at = n_events if d_index is None else d_index
    rates_pre, rates_post = _RegimeRates.of(_PRE, config), _RegimeRates.of(_POST, config)

    card_ids, merchant_ids = world.card_ids, world.merchant_ids
    scale, p_online, p_atm = world.scale, world.p_online, world.p_atm
    card_cum, merchant_cum, risky = world.card_cum, world.merchant_cum, world.risky
    card_total, merchant_total = card_cum[-1], merchant_cum[-1]
    n_cards, last_card, last_merchant = config.n_cards, config.n_cards - 1, config.n_merchants - 1

    delay_min, delay_max = config.delay_min_ms, config.delay_max_ms
    delay_median, delay_sigma = float(config.delay_median_ms), config.delay_sigma
    coverage = config.label_coverage

    random_ = rng.random
    expovariate = rng.expovariate
    lognorm = rng.lognormvariate
    uniform = rng.uniform
    randint = rng.randint
    lrandom, llognorm = lrng.random, lrng.lognormvariate

    def weighted_card() -> int:
        return min(bisect_right(card_cum, random_() * card_total), last_card)

    def popular_merchant() -> int:
        return min(bisect_right(merchant_cum, random_() * merchant_total), last_merchant)

    def legit_channel(card: int) -> int:
        u = random_()
        if u < p_atm[card]:
            return _ATM
        if u < p_atm[card] + p_online[card]:
            return _ONLINE
        return _POS

    def legit_txn(card: int) -> tuple[int, float, int]:
        channel = legit_channel(card)
        amount = scale[card] * lognorm(0.0, 0.45)
        if channel == _ATM:
            amount = _atm_amount(amount)
        return popular_merchant(), amount, channel

    def fraud_txn(card: int, post: bool) -> tuple[int, float, int]:
        u = random_()
        if not post:
            channel = _ONLINE if u < 0.7 else (_POS if u < 0.9 else _ATM)
            if random_() < 0.8:
                amount = scale[card] * lognorm(math.log(6.0), 0.5)
            else:
                amount = scale[card] * lognorm(0.0, 0.45)
            merchant = risky[randint(0, len(risky) - 1)] if random_() < 0.5 else popular_merchant()
        else:
            channel = _ATM if u < 0.45 else (_POS if u < 0.9 else _ONLINE)
            if random_() < 0.85:
                amount = uniform(0.5, 9.99) if channel != _ATM else float(20 * randint(1, 2))
            else:
                amount = scale[card] * lognorm(0.0, 0.45)
            merchant = popular_merchant()
        if channel == _ATM:
            amount = _atm_amount(amount) if amount > 20 else 20.0
        return merchant, amount, channel

    def txn(kind: int, card: int, post: bool) -> tuple[int, float, int]:
        if kind == _LEGIT:
            return legit_txn(card)
        if kind == _FRAUD:
            return fraud_txn(card, post)
        # _SPLURGE: a legitimate high-amount online purchase (post-drift only).
        return popular_merchant(), scale[card] * lognorm(math.log(5.0), 0.5), _ONLINE

    pending: list[_Pending] = []
    push, pop = heapq.heappush, heapq.heappop
    seq = 0
    fraud_committed = 0  # fraud events emitted or scheduled
    t_arrival = expovariate(1.0 / rates_pre.base_mean_ms) if n_events else 0.0

    for index in range(n_events):
        if pending and pending[0][0] <= t_arrival:
            t, _, card, merchant, amount, channel, is_fraud = pop(pending)
        else:
            t = t_arrival
            post = index >= switch_at
            rates = rates_post if post else rates_pre
            regime = _POST if post else _PRE
            t_arrival = t + expovariate(1.0 / rates.base_mean_ms)
            # Fraud hazard, nudged towards the target share (mean-reverting).
            deficit = fraud_rate * (index + 1) - fraud_committed
            nudge = max(-30.0, min(30.0, deficit / rates.fraud_mean_len))
            p_fraud = min(0.9, rates.p_fraud * math.exp(nudge))
            u = random_()
            length, gap, kind, is_fraud = 1, 0.0, _LEGIT, False
            if u < p_fraud:
                card = randint(0, n_cards - 1)
                length, gap = randint(*regime.fraud_len), regime.fraud_gap_ms
                kind, is_fraud = _FRAUD, True
                fraud_committed += length
            else:
                card = weighted_card()
                u -= p_fraud
                if u < rates.p_spree:
                    length, gap = randint(*regime.spree_len), regime.spree_gap_ms
                elif u < rates.p_spree + rates.p_splurge:
                    length, gap = randint(*regime.splurge_len), regime.splurge_gap_ms
                    kind = _SPLURGE
            merchant, amount, channel = txn(kind, card, post)
            t_next = t
            for _ in range(length - 1):
                t_next += expovariate(1.0 / gap)
                m2, a2, c2 = txn(kind, card, post)
                seq += 1
                push(pending, (t_next, seq, card, m2, a2, c2, is_fraud))

        ts = start_ms + int(t)
        event_id = f"e{index:09d}"
        card_id = card_ids[card]
        event = {
            "event_id": event_id,
            "card_id": card_id,
            "merchant_id": merchant_ids[merchant],
            "amount": round(max(amount, 0.01), 2),
            "channel": CHANNELS[channel],
            "ts": ts,
        }
        # Label draws happen for every event so coverage never shifts the delays.
        labelled = lrandom() < coverage
        delay = int(delay_median * llognorm(0.0, delay_sigma))
        delay = delay_min if delay < delay_min else (delay_max if delay > delay_max else delay)
        label = (
            {"event_id": event_id, "card_id": card_id, "is_fraud": is_fraud, "ts": ts + delay}
            if labelled
            else None
        )
        yield event, is_fraud, label


# -------------------------------------------------------------------------- public API


def generate(config: WorkloadConfig) -> Workload:
    """Materialise the whole workload in memory (fine up to a few 100k events)."""
    events: list[dict[str, Any]] = []
    fraud: list[bool] = []
    labels: list[dict[str, Any]] = []
    for event, is_fraud, label in _event_stream(config):
        events.append(event)
        fraud.append(is_fraud)
        if label is not None:
            labels.append(label)
    labels.sort(key=lambda rec: (rec["ts"], rec["event_id"]))

    d_index = drift_index(config)
    split = len(events) if d_index is None else d_index
    n_fraud = sum(fraud)
    before = sum(fraud[:split])

    def rate(count: int, total: int) -> float | None:
        return count / total if total else None

    stats = WorkloadStats(
        n_events=len(events),
        n_labels=len(labels),
        n_fraud=n_fraud,
        n_positive_labels=sum(1 for rec in labels if rec["is_fraud"]),
        positives_rate=n_fraud / len(events) if events else 0.0,
        positives_rate_before_drift=rate(before, split),
        positives_rate_after_drift=rate(n_fraud - before, len(events) - split),
        first_ts=events[0]["ts"] if events else None,
        last_ts=events[-1]["ts"] if events else None,
    )
    return Workload(
        config=config,
        events=events,
        labels=labels,
        fraud=fraud,
        drift_index=d_index,
        drift_ts=None if d_index is None else events[d_index]["ts"],
        stats=stats,
    )


class RecordStream:
    """Events and labels merged in time order, generated lazily in bounded memory.

    Iterating yields ``("event", event)`` at the event's ts and ``("label", label)``
    at the label's ts; at equal ts labels come first, labels tie-break on
    event_id. Only the labels not yet due are held in memory. Counters are
    updated as the stream is consumed; ``drift_ts`` is known once the stream
    has reached the drift.

    >>> stream = RecordStream(WorkloadConfig(seed=3, n_events=500))
    >>> kinds = [kind for kind, _ in stream]
    >>> kinds.count("event"), kinds.count("label"), stream.n_events, stream.n_labels
    (500, 500, 500, 500)
    >>> stream.drift_ts == generate(WorkloadConfig(seed=3, n_events=500)).drift_ts
    True
    """

    def __init__(self, config: WorkloadConfig) -> None:
        self.config = config
        self.drift_index: int | None = drift_index(config)
        self.drift_ts: int | None = None
        self.n_events = 0
        self.n_labels = 0
        self.n_fraud = 0
        self.n_positive_labels = 0

    def __iter__(self) -> Iterator[tuple[RecordKind, dict[str, Any]]]:
        heap: list[tuple[int, str, dict[str, Any]]] = []
        push, pop = heapq.heappush, heapq.heappop
        d_index = -1 if self.drift_index is None else self.drift_index
        for event, is_fraud, label in _event_stream(self.config):
            ts = event["ts"]
            while heap and heap[0][0] <= ts:
                rec = pop(heap)[2]
                self.n_labels += 1
                self.n_positive_labels += rec["is_fraud"]
                yield "label", rec
            if self.n_events == d_index:
                self.drift_ts = ts
            self.n_events += 1
            self.n_fraud += is_fraud
            yield "event", event
            # A label is always strictly later than its event (delay_min_ms >= 1).
            if label is not None:
                push(heap, (label["ts"], label["event_id"], label))
        while heap:
            rec = pop(heap)[2]
            self.n_labels += 1
            self.n_positive_labels += rec["is_fraud"]
            yield "label", rec


def iter_records(config: WorkloadConfig) -> Iterator[tuple[RecordKind, dict[str, Any]]]:
    """Stream ``("event"|"label", record)`` in merged time order (labels first at ties).

    Same records as :func:`generate`, without materialising them.

    >>> [kind for kind, _ in iter_records(WorkloadConfig(seed=0, n_events=3, label_coverage=0))]
    ['event', 'event', 'event']
    """
    return iter(RecordStream(config))


# ----------------------------------------------------------------------- dead letters

_MALFORMED_KINDS: tuple[tuple[str, str], ...] = (
    ("truncated_json", "bad_json"),
    ("garbage_text", "bad_json"),
    ("empty_bytes", "bad_json"),
    ("array", "not_object"),
    ("scalar", "not_object"),
    ("missing_field", "missing_field"),
    ("amount_as_string", "wrong_type"),
    ("ts_as_float_string", "wrong_type"),
    ("nan_amount", "not_finite"),
    ("negative_amount", "below_min"),
    ("unknown_channel", "unknown_category"),
)


_GARBAGE: tuple[bytes, ...] = (
    b"not json at all",
    b"{'event_id': 'single-quoted'}",
    b"\xff\xfe\x00garbage",
    b"{]",
    b'{"event_id": "e1",}',
)


def _dumps(obj: Any) -> bytes:
    # Stdlib json so that NaN / Infinity are written as the (non-standard) literals.
    return json.dumps(obj, separators=(",", ":"), allow_nan=True).encode()


def malformed_records(seed: int, n: int) -> list[tuple[bytes, str]]:
    """``n`` deterministic bad event payloads, each with the validator's reason code.

    Every payload has exactly one defect. Kinds cycle through shuffled rounds,
    so any ``n >= 11`` covers every kind. No payload contains a newline, so
    they can also be written as JSONL lines.

    >>> sorted({reason for _, reason in malformed_records(0, 11)}) == sorted(MALFORMED_REASONS)
    True
    """
    rng = random.Random(f"undertow.workload:{seed}:malformed")
    out: list[tuple[bytes, str]] = []
    order: list[tuple[str, str]] = []
    while len(out) < n:
        if not order:
            order = list(_MALFORMED_KINDS)
            rng.shuffle(order)
        kind, reason = order.pop()
        base: dict[str, Any] = {
            "event_id": f"bad{rng.randrange(10**9):09d}",
            "card_id": f"c{rng.randrange(10**6):06d}",
            "merchant_id": f"m{rng.randrange(10**5):05d}",
            "amount": round(rng.uniform(1.0, 500.0), 2),
            "channel": rng.choice(CHANNELS),
            "ts": DEFAULT_START_MS + rng.randrange(86_400_000),
        }
        payload: bytes
        if kind == "truncated_json":
            whole = _dumps(base)
            payload = whole[: rng.randrange(1, len(whole) - 1)]
        elif kind == "garbage_text":
            payload = rng.choice(_GARBAGE)
        elif kind == "empty_bytes":
            payload = b""
        elif kind == "array":
            payload = _dumps([base[name] for name in EVENT_FIELDS])
        elif kind == "scalar":
            payload = rng.choice([b"42", b'"event"', b"null", b"true", b"3.5"])
        elif kind == "missing_field":
            del base[rng.choice(EVENT_FIELDS)]
            payload = _dumps(base)
        elif kind == "amount_as_string":
            base["amount"] = f"{base['amount']:.2f}"
            payload = _dumps(base)
        elif kind == "ts_as_float_string":
            base["ts"] = f"{base['ts']}.0"
            payload = _dumps(base)
        elif kind == "nan_amount":
            base["amount"] = rng.choice([math.nan, math.nan, math.inf])
            payload = _dumps(base)
        elif kind == "negative_amount":
            base["amount"] = -round(rng.uniform(0.01, 500.0), 2)
            payload = _dumps(base)
        else:  # unknown_channel
            base["channel"] = rng.choice(["mail", "phone", "POS", "crypto", "wire"])
            payload = _dumps(base)
        out.append((payload, reason))
    return out
