"""Exact percentiles of the benchmarks' latency samples (one definition for all of them)."""

from __future__ import annotations

import statistics


def percentiles_ms(latencies_s: list[float]) -> tuple[float | None, float | None]:
    """Exact p50 and p99 in milliseconds (``statistics.quantiles``, inclusive method).

    >>> percentiles_ms([0.001, 0.002, 0.003])
    (2.0, 2.98)
    """
    if not latencies_s:
        return None, None
    if len(latencies_s) == 1:
        return latencies_s[0] * 1000, latencies_s[0] * 1000
    q = statistics.quantiles(latencies_s, n=100, method="inclusive")
    return q[49] * 1000, q[98] * 1000
