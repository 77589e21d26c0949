"""Tests for the synthetic workload (harness.workload) and its CLI (harness.generate)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import linear_model, preprocessing

from harness.generate import JsonlSink, MemorySink, malformed_positions, run
from harness.workload import (
    CHANNELS,
    DEFAULT_START_MS,
    EVENT_FIELDS,
    LABEL_FIELDS,
    MALFORMED_REASONS,
    RecordStream,
    Workload,
    WorkloadConfig,
    drift_index,
    drift_ts,
    generate,
    iter_records,
    malformed_records,
)

ROOT = Path(__file__).resolve().parents[1]


@cache
def _workload(seed: int, n_events: int, **kwargs: Any) -> Workload:
    return generate(WorkloadConfig(seed=seed, n_events=n_events, **kwargs))


# ------------------------------------------------------------------------ basics


def test_default_start_is_2026_01_01_utc() -> None:
    from datetime import UTC, datetime

    assert DEFAULT_START_MS == int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)


def test_same_config_gives_byte_identical_output() -> None:
    config = WorkloadConfig(seed=11, n_events=5_000, label_coverage=0.8)
    a, b = generate(config), generate(config)
    assert orjson.dumps(a.events) == orjson.dumps(b.events)
    assert orjson.dumps(a.labels) == orjson.dumps(b.labels)
    assert a.fraud == b.fraud and a.drift_ts == b.drift_ts and a.stats == b.stats


def test_different_seeds_differ() -> None:
    a, b = _workload(1, 5_000), _workload(2, 5_000)
    assert a.events != b.events
    assert [e["amount"] for e in a.events] != [e["amount"] for e in b.events]


def test_event_and_label_schema() -> None:
    w = _workload(3, 20_000)
    ids = set()
    for e in w.events:
        assert tuple(e) == EVENT_FIELDS
        assert all(isinstance(e[k], str) for k in ("event_id", "card_id", "merchant_id"))
        amount = e["amount"]
        assert type(amount) is float and amount >= 0 and round(amount, 2) == amount
        assert e["channel"] in CHANNELS
        assert type(e["ts"]) is int and e["ts"] >= DEFAULT_START_MS
        ids.add(e["event_id"])
    assert len(ids) == len(w.events)
    assert w.events[123]["event_id"] == "e000000123"
    assert {e["card_id"] for e in w.events} <= {f"c{i:06d}" for i in range(1000)}
    assert {e["merchant_id"] for e in w.events} <= {f"m{i:05d}" for i in range(200)}
    assert {e["channel"] for e in w.events} == set(CHANNELS)
    for rec in w.labels:
        assert tuple(rec) == LABEL_FIELDS
        assert type(rec["is_fraud"]) is bool and type(rec["ts"]) is int


def test_events_spread_over_time_at_the_configured_rate() -> None:
    w = _workload(3, 20_000)
    span = w.events[-1]["ts"] - w.events[0]["ts"]
    assert span / len(w.events) == pytest.approx(200.0, rel=0.1)


def test_events_in_event_time_order_and_labels_in_label_time_order() -> None:
    w = _workload(4, 20_000)
    ts = [e["ts"] for e in w.events]
    assert ts == sorted(ts)
    keys = [(rec["ts"], rec["event_id"]) for rec in w.labels]
    assert keys == sorted(keys)


def test_label_time_is_event_time_plus_bounded_delay() -> None:
    config = WorkloadConfig(seed=5, n_events=20_000)
    w = generate(config)
    by_id = {e["event_id"]: e for e in w.events}
    delays = []
    for rec in w.labels:
        event = by_id[rec["event_id"]]
        assert rec["card_id"] == event["card_id"]
        assert rec["is_fraud"] == w.fraud[int(event["event_id"][1:])]
        delay = rec["ts"] - event["ts"]
        assert config.delay_min_ms <= delay <= config.delay_max_ms
        delays.append(delay)
    delays.sort()
    median = delays[len(delays) // 2]
    assert median == pytest.approx(config.delay_median_ms, rel=0.1)
    # Seconds to hours: both clips are reached but rarely.
    assert delays[0] == config.delay_min_ms and delays[-1] == config.delay_max_ms
    assert sum(d == config.delay_max_ms for d in delays) < 0.01 * len(delays)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_positives_rate_overall_and_on_both_sides_of_the_drift(seed: int) -> None:
    w = _workload(seed, 20_000)
    s = w.stats
    assert 0.02 <= s.positives_rate <= 0.05
    assert s.positives_rate_before_drift is not None and s.positives_rate_after_drift is not None
    assert 0.02 <= s.positives_rate_before_drift <= 0.05
    assert 0.02 <= s.positives_rate_after_drift <= 0.05
    # The same numbers from the labels themselves (coverage is 1).
    assert s.n_labels == s.n_events == 20_000
    ts = w.drift_ts
    assert ts is not None
    positives = sum(rec["is_fraud"] for rec in w.labels)
    assert positives == s.n_fraud == s.n_positive_labels
    before = [w.fraud[i] for i, e in enumerate(w.events) if e["ts"] < ts]
    assert 0.02 <= sum(before) / len(before) <= 0.05


def test_fraud_rate_is_configurable() -> None:
    w = generate(WorkloadConfig(seed=0, n_events=20_000, fraud_rate=0.045))
    assert w.stats.positives_rate == pytest.approx(0.045, rel=0.1)
    none = generate(WorkloadConfig(seed=0, n_events=2_000, fraud_rate=0.0))
    assert not any(none.fraud)


def test_label_coverage() -> None:
    full = _workload(6, 20_000)
    part = _workload(6, 20_000, label_coverage=0.6)
    assert part.events == full.events and part.fraud == full.fraud
    assert len(part.labels) / len(part.events) == pytest.approx(0.6, abs=0.02)
    # Coverage only drops labels; the kept ones are unchanged.
    full_by_id = {rec["event_id"]: rec for rec in full.labels}
    assert all(full_by_id[rec["event_id"]] == rec for rec in part.labels)
    assert _workload(6, 2_000, label_coverage=0.0).labels == []


def test_drift_position() -> None:
    config = WorkloadConfig(seed=7, n_events=10_000, drift_at=0.3)
    w = generate(config)
    assert w.drift_index == drift_index(config) == 3_000
    assert w.drift_ts == drift_ts(config, w.events) == w.events[3_000]["ts"]
    never = generate(WorkloadConfig(seed=7, n_events=1_000, drift_at=None))
    assert never.drift_index is None and never.drift_ts is None
    assert never.stats.positives_rate_after_drift is None
    assert drift_index(WorkloadConfig(seed=7, n_events=1_000, drift_at=1.0)) is None
    assert drift_index(WorkloadConfig(seed=7, n_events=1_000, drift_at=0.0)) == 0
    # Before the drift no event of the post-drift regime exists (and the stream is identical).
    drifting = generate(WorkloadConfig(seed=7, n_events=1_000, drift_at=0.3))
    assert never.events[:300] == drifting.events[:300]


def test_drift_changes_the_fraud_pattern() -> None:
    w = _workload(0, 20_000)
    d = w.drift_index
    assert d is not None

    def profile(lo: int, hi: int, fraud: bool) -> tuple[float, float]:
        rows = [e for e, f in zip(w.events[lo:hi], w.fraud[lo:hi], strict=True) if f == fraud]
        amounts = sorted(e["amount"] for e in rows)
        online = sum(e["channel"] == "online" for e in rows) / len(rows)
        return amounts[len(amounts) // 2], online

    pre_fraud, post_fraud = profile(0, d, True), profile(d + 500, len(w.events), True)
    pre_legit = profile(0, d, False)
    assert pre_fraud[0] > 3 * pre_legit[0] and pre_fraud[1] > 0.5  # high-amount, online
    assert post_fraud[0] <= 20.0 < pre_legit[0] and post_fraud[1] < 0.2  # small, ATM/POS


def test_empty_and_tiny_workloads() -> None:
    empty = generate(WorkloadConfig(seed=0, n_events=0))
    assert empty.events == [] and empty.labels == [] and empty.drift_ts is None
    assert list(iter_records(WorkloadConfig(seed=0, n_events=0))) == []
    one = generate(WorkloadConfig(seed=0, n_events=1, n_cards=1, n_merchants=1))
    assert len(one.events) == 1 and len(one.labels) == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"n_events": -1},
        {"n_cards": 0},
        {"n_merchants": 0},
        {"mean_interarrival_ms": 0},
        {"fraud_rate": 0.9},
        {"drift_at": 1.5},
        {"delay_min_ms": 0},
        {"delay_median_ms": 500},
        {"delay_max_ms": 60_000},
        {"label_coverage": 1.2},
    ],
)
def test_invalid_config_is_rejected(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="invalid WorkloadConfig"):
        WorkloadConfig(**{"seed": 0, "n_events": 10, **changes})


# ----------------------------------------------------------------- merged stream


def _check_merged_order(
    config: WorkloadConfig, records: Sequence[tuple[str, dict[str, Any]]]
) -> int:
    """Assert the iter_records contract; return how many label/event ts ties were seen."""
    w = generate(config)
    assert [r for k, r in records if k == "event"] == w.events
    assert [r for k, r in records if k == "label"] == w.labels
    ties = 0
    for (k1, r1), (k2, r2) in zip(records, records[1:], strict=False):
        assert r1["ts"] <= r2["ts"]
        if r1["ts"] == r2["ts"]:
            assert not (k1 == "event" and k2 == "label"), "label must precede event at equal ts"
            if k1 == "label" and k2 == "label":
                assert r1["event_id"] < r2["event_id"]
            ties += k1 != k2
    seen: set[str] = set()
    for kind, rec in records:  # a label always comes after its own event
        if kind == "event":
            seen.add(rec["event_id"])
        else:
            assert rec["event_id"] in seen
    return ties


def test_iter_records_merges_in_time_order_with_labels_first_at_ties() -> None:
    config = WorkloadConfig(seed=8, n_events=20_000)
    records = list(iter_records(config))
    assert len(records) == 40_000
    assert _check_merged_order(config, records) > 0  # ties do happen and were checked


def test_record_stream_counters() -> None:
    config = WorkloadConfig(seed=9, n_events=5_000, label_coverage=0.5)
    stream = RecordStream(config)
    assert stream.drift_ts is None
    records = list(stream)
    w = generate(config)
    assert stream.n_events == 5_000 and stream.n_labels == len(w.labels) == len(records) - 5_000
    assert stream.n_fraud == w.stats.n_fraud
    assert stream.n_positive_labels == w.stats.n_positive_labels
    assert stream.drift_ts == w.drift_ts


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n_events=st.integers(0, 400),
    n_cards=st.integers(1, 30),
    n_merchants=st.integers(1, 10),
    drift_at=st.none() | st.floats(0.0, 1.0),
    coverage=st.floats(0.0, 1.0),
    delays=st.lists(st.integers(1, 10_000_000), min_size=3, max_size=3).map(sorted),
    interarrival=st.floats(1.0, 5_000.0),
)
def test_invariants_hold_for_any_config(
    seed: int,
    n_events: int,
    n_cards: int,
    n_merchants: int,
    drift_at: float | None,
    coverage: float,
    delays: list[int],
    interarrival: float,
) -> None:
    config = WorkloadConfig(
        seed=seed,
        n_events=n_events,
        n_cards=n_cards,
        n_merchants=n_merchants,
        drift_at=drift_at,
        label_coverage=coverage,
        delay_min_ms=delays[0],
        delay_median_ms=delays[1],
        delay_max_ms=delays[2],
        mean_interarrival_ms=interarrival,
    )
    records = list(iter_records(config))
    _check_merged_order(config, records)
    w = generate(config)
    assert len(w.events) == n_events
    by_id = {e["event_id"]: e["ts"] for e in w.events}
    for rec in w.labels:
        assert delays[0] <= rec["ts"] - by_id[rec["event_id"]] <= delays[2]


def test_streaming_is_fast_and_lazy() -> None:
    config = WorkloadConfig(seed=10, n_events=50_000)
    started = time.perf_counter()
    stream = iter_records(config)
    first = next(stream)
    assert first[0] == "event"
    assert time.perf_counter() - started < 0.5  # nothing is materialised up front
    n = 1 + sum(1 for _ in stream)
    assert n == 100_000
    assert time.perf_counter() - started < 10.0  # ~0.4 s on a laptop


# ------------------------------------------------------------------ dead letters

_REQUIRED_TYPES: dict[str, tuple[type, ...]] = {
    "event_id": (str,),
    "card_id": (str,),
    "merchant_id": (str,),
    "amount": (int, float),
    "channel": (str,),
    "ts": (int,),
}


def _reference_reason(payload: bytes) -> str | None:
    """What a correct event validator must answer (None = valid)."""
    try:
        obj = json.loads(payload)  # stdlib: accepts the NaN / Infinity literals
    except ValueError:
        return "bad_json"
    if not isinstance(obj, dict):
        return "not_object"
    if any(name not in obj for name in EVENT_FIELDS):
        return "missing_field"
    for name, types in _REQUIRED_TYPES.items():
        if isinstance(obj[name], bool) or not isinstance(obj[name], types):
            return "wrong_type"
    if not math.isfinite(obj["amount"]):
        return "not_finite"
    if obj["amount"] < 0:
        return "below_min"
    if obj["channel"] not in CHANNELS:
        return "unknown_category"
    return None


def test_malformed_records_are_deterministic_and_cover_every_reason() -> None:
    records = malformed_records(123, 40)
    assert records == malformed_records(123, 40)
    assert records != malformed_records(124, 40)
    assert len(records) == 40
    assert {reason for _, reason in records} == set(MALFORMED_REASONS)
    assert {reason for _, reason in malformed_records(0, 11)} == set(MALFORMED_REASONS)
    assert malformed_records(0, 0) == []
    assert all(isinstance(p, bytes) and b"\n" not in p for p, _ in records)
    assert (b"", "bad_json") in malformed_records(0, 200)


def test_malformed_records_are_malformed_in_the_stated_way() -> None:
    kinds_seen: set[str] = set()
    for payload, reason in malformed_records(7, 300):
        assert _reference_reason(payload) == reason, payload
        if reason == "bad_json":
            for loads in (json.loads, orjson.loads):
                with pytest.raises(ValueError):
                    loads(payload)
            kinds_seen.add("empty" if payload == b"" else "bad_json")
            continue
        obj = json.loads(payload)
        if reason == "not_object":
            assert not isinstance(obj, dict)
            continue
        assert isinstance(obj, dict)
        present = [name for name in EVENT_FIELDS if name in obj]
        if reason == "missing_field":
            assert len(present) == len(EVENT_FIELDS) - 1
            continue
        assert len(present) == len(EVENT_FIELDS)
        if reason == "wrong_type":
            assert isinstance(obj["amount"], str) or isinstance(obj["ts"], str)
            if isinstance(obj["ts"], str):
                float(obj["ts"])  # a float written as a string
                kinds_seen.add("ts_string")
            else:
                kinds_seen.add("amount_string")
        elif reason == "not_finite":
            assert isinstance(obj["amount"], float) and not math.isfinite(obj["amount"])
            with pytest.raises(ValueError):  # orjson rejects the NaN/Infinity literals
                orjson.loads(payload)
            kinds_seen.add("nan" if math.isnan(obj["amount"]) else "inf")
        elif reason == "below_min":
            assert obj["amount"] < 0
        elif reason == "unknown_category":
            assert obj["channel"] not in CHANNELS
    assert {"empty", "bad_json", "ts_string", "amount_string", "nan"} <= kinds_seen


def test_malformed_records_agree_with_the_project_validator() -> None:
    schema = pytest.importorskip("undertow.schema")
    decode, spec = getattr(schema, "decode_event", None), getattr(schema, "FRAUD_EVENTS", None)
    if decode is None or spec is None:
        pytest.skip("undertow.schema has no decode_event / FRAUD_EVENTS")
    for payload, reason in malformed_records(7, 200):
        assert getattr(decode(payload, spec), "reason", None) == reason, payload
    for event in _workload(3, 2_000).events:
        assert getattr(decode(orjson.dumps(event), spec), "reason", None) is None


def test_generated_events_pass_the_reference_validator() -> None:
    w = _workload(3, 20_000)
    assert all(_reference_reason(orjson.dumps(e)) is None for e in w.events)


# ---------------------------------------------------------------- learnability

TEN_MIN_MS, HOUR_MS = 600_000, 3_600_000


def _features(events: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The dataflow's features, by brute force (windows include the current event)."""
    per_card: dict[str, deque[tuple[int, float]]] = defaultdict(deque)
    per_merchant: dict[str, deque[int]] = defaultdict(deque)
    previous: dict[str, int] = {}
    rows = []
    for e in events:
        ts, card, amount = e["ts"], e["card_id"], e["amount"]
        window = per_card[card]
        window.append((ts, amount))
        while window[0][0] <= ts - HOUR_MS:
            window.popleft()
        hour = [a for _, a in window]
        ten = [a for t, a in window if t > ts - TEN_MIN_MS]
        merchant = per_merchant[e["merchant_id"]]
        merchant.append(ts)
        while merchant[0] <= ts - TEN_MIN_MS:
            merchant.popleft()
        prev = previous.get(card)
        previous[card] = ts
        rows.append(
            {
                "amount": amount,
                "count_10m": float(len(ten)),
                "sum_10m": sum(ten),
                "mean_10m": sum(ten) / len(ten),
                "count_1h": float(len(hour)),
                "sum_1h": sum(hour),
                "mean_1h": sum(hour) / len(hour),
                "secs_since_prev": 3600.0 if prev is None else min(3600.0, (ts - prev) / 1000),
                "merchant_count_10m": float(len(merchant)),
                **{f"channel_{c}": float(e["channel"] == c) for c in CHANNELS},
            }
        )
    return rows


def _auc(scores: Sequence[float], truth: Sequence[bool]) -> float:
    """Exact ROC AUC (Mann-Whitney, ties count half)."""
    pairs = sorted(zip(scores, truth, strict=True))
    n_pos = sum(truth)
    n_neg = len(truth) - n_pos
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        rank_sum += (i + j + 1) / 2 * sum(1 for _, y in pairs[i:j] if y)
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _model() -> Any:
    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


def _progressive(model: Any, rows: list[dict[str, float]], truth: list[bool]) -> list[float]:
    scores = []
    for x, y in zip(rows, truth, strict=True):
        scores.append(model.predict_proba_one(x).get(True, 0.0))
        model.learn_one(x, y)
    return scores


def test_fraud_is_learnable_from_windowed_features_and_the_drift_is_real() -> None:
    w = _workload(0, 40_000)
    d = w.drift_index
    assert d == 20_000
    rows, y = _features(w.events), w.fraud

    full = _model()
    auc_pre = _auc(_progressive(full, rows[:d], y[:d]), y[:d])
    amounts = [{"amount": r["amount"]} for r in rows[:d]]
    amount_only = _auc(_progressive(_model(), amounts, y[:d]), y[:d])
    # The pre-drift model, frozen, on the post-drift stream.
    frozen_post = _auc([full.predict_proba_one(x).get(True, 0.0) for x in rows[d:]], y[d:])
    # A fresh model learning progressively after the drift.
    fresh_post = _auc(_progressive(_model(), rows[d:], y[d:]), y[d:])
    print(
        f"AUC pre-drift full={auc_pre:.3f} amount-only={amount_only:.3f}; "
        f"post-drift frozen={frozen_post:.3f} fresh={fresh_post:.3f}"
    )
    assert auc_pre > 0.85
    assert amount_only < auc_pre - 0.04
    assert frozen_post < auc_pre - 0.15
    assert fresh_post > 0.8  # still learnable after the drift, just differently


# ------------------------------------------------------------------------- CLI


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "harness.generate", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_help() -> None:
    out = _cli("--help", cwd=ROOT)
    assert out.returncode == 0
    for option in (
        "--seed",
        "--events",
        "--cards",
        "--merchants",
        "--fraud-rate",
        "--drift-at",
        "--label-delay-median-s",
        "--label-delay-max-s",
        "--label-coverage",
        "--to",
        "--bootstrap-servers",
        "--events-topic",
        "--labels-topic",
        "--out-dir",
        "--rate",
        "--malformed",
        "--quiet",
    ):
        assert option in out.stdout


def test_cli_jsonl_end_to_end(tmp_path: Path) -> None:
    args = [
        "--to",
        "jsonl",
        "--seed",
        "5",
        "--events",
        "3000",
        "--cards",
        "300",
        "--label-coverage",
        "0.9",
        "--label-delay-median-s",
        "60",
        "--label-delay-max-s",
        "1800",
        "--drift-at",
        "0.4",
        "--malformed",
        "6",
        "--quiet",
    ]
    out = _cli(*args, "--out-dir", str(tmp_path / "a"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    summary = json.loads(out.stdout)
    assert len(out.stdout.strip().splitlines()) == 1

    config = WorkloadConfig(
        seed=5,
        n_events=3000,
        n_cards=300,
        label_coverage=0.9,
        delay_median_ms=60_000,
        delay_max_ms=1_800_000,
        drift_at=0.4,
    )
    w = generate(config)
    assert summary["events"] == 3000 and summary["labels"] == len(w.labels)
    assert summary["malformed"] == 6 and summary["drift_ts"] == w.drift_ts
    assert summary["positives"] == w.stats.n_positive_labels
    assert summary["delivery_errors"] == 0 and summary["seconds"] >= 0

    event_lines = (tmp_path / "a" / "events.jsonl").read_bytes().split(b"\n")
    assert event_lines[-1] == b""
    event_lines = event_lines[:-1]
    bad = malformed_records(5, 6)
    good = [line for line in event_lines if line.startswith(b'{"event_id":"e')]
    assert good == [orjson.dumps(e) for e in w.events]
    extra = [line for line in event_lines if not line.startswith(b'{"event_id":"e')]
    assert extra == [payload for payload, _ in bad]
    # The malformed payloads sit before the events at their deterministic positions.
    positions = malformed_positions(5, 3000, 6)
    index = 0
    expected: list[bytes] = []
    for i, event in enumerate(w.events + [None]):
        while index < len(positions) and positions[index] <= i:
            expected.append(bad[index][0])
            index += 1
        if event is not None:
            expected.append(orjson.dumps(event))
    assert event_lines == expected

    labels = (tmp_path / "a" / "labels.jsonl").read_bytes()
    assert labels == b"".join(orjson.dumps(rec) + b"\n" for rec in w.labels)

    again = _cli(*args, "--out-dir", str(tmp_path / "b"), cwd=tmp_path)
    assert again.returncode == 0
    for name in ("events.jsonl", "labels.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    out = _cli(
        "--to", "jsonl", "--out-dir", str(tmp_path), "--label-delay-median-s", "9000", cwd=tmp_path
    )
    assert out.returncode == 2 and "delay" in out.stderr
    assert _cli("--to", "jsonl", "--drift-at", "2", cwd=tmp_path).returncode == 2


def test_run_paces_events_and_interleaves_labels() -> None:
    config = WorkloadConfig(seed=12, n_events=300, delay_median_ms=2_000, delay_max_ms=30_000)
    sink = MemorySink()
    started = time.monotonic()
    summary = run(config, sink, n_malformed=3, rate=3_000.0)
    elapsed = time.monotonic() - started
    assert elapsed >= 299 / 3_000.0
    assert summary["events"] == 300 and summary["malformed"] == 3
    merged = [(kind, orjson.loads(v)) for kind, v, key, _ in sink.records if key is not None]
    assert merged == list(iter_records(config))
    for _kind, value, key, ts in sink.records:
        if key is not None:
            record = orjson.loads(value)
            assert key == record["card_id"].encode() and ts == record["ts"]
    kinds = [kind for kind, *_ in sink.records]
    first_label, last_event = kinds.index("label"), len(kinds) - 1 - kinds[::-1].index("event")
    assert first_label < last_event  # labels are interleaved, not appended


def test_jsonl_sink_writes_lines(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path)
    sink.event(b'{"a":1}', b"k", 1)
    sink.label(b'{"b":2}', b"k", 2)
    sink.idle()
    assert sink.close() == 0
    assert (tmp_path / "events.jsonl").read_bytes() == b'{"a":1}\n'
    assert (tmp_path / "labels.jsonl").read_bytes() == b'{"b":2}\n'
