"""benchmarks/latency.py, small: its percentiles, and one short paced run of the live dataflow
in which every event written in the measured phase is found again by its id among the
predictions (the stamps' latencies are of all of them, none missing or counted twice)."""

from __future__ import annotations

import argparse

import pytest

from benchmarks import latency


def test_histogram_percentiles_are_of_the_phase_only() -> None:
    inf = float("inf")
    before = {0.01: 10.0, 0.1: 10.0, 1.0: 10.0, inf: 10.0}
    after = {0.01: 60.0, 0.1: 110.0, 1.0: 110.0, inf: 110.0}  # 50 under 10 ms, 50 in 10-100
    got = latency.histogram_ms(before, after)
    assert got == {"p50": 10.0, "p99": 98.2, "p99.9": 99.8, "max": 100.0}
    assert latency.histogram_ms(after, after)["max"] is None
    over = {**after, inf: 111.0}  # one observation above the largest finite bound
    assert latency.histogram_ms(before, over)["max"] == ">1000"


def test_latency_ms_is_exact() -> None:
    values = [i / 1000 for i in range(1, 1001)]  # 1..1000 ms
    assert latency.latency_ms(values) == {"p50": 500.5, "p99": 990.0, "p99.9": 999.0,
                                          "max": 1000.0}


def test_one_paced_run_finds_every_event() -> None:
    args = argparse.Namespace(seconds=4.0, warmup_seconds=3.0, producer_seconds=2.0,
                              partitions=3)
    row = latency.paced(args, 150.0, {})
    stamps = row["stamps"]
    assert stamps["events"] == row["events"] > 300  # ~600 at 150/s for 4 s
    assert stamps["predicted"] == stamps["events"]
    e2e = stamps["produced_written"]
    assert 0 < e2e["p50"] <= e2e["p99"] <= e2e["p99.9"] <= e2e["max"]
    assert row["producer_only"]["events"] == pytest.approx(300, abs=5)  # 150/s for 2 s
    assert row["broker_cpu_pct"] > 0 and row["flow_cpu_pct"] > 0
    assert row["histogram"]["p50"] is not None
    assert row["produce_round_trip"]["p50"] is not None
