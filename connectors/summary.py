"""What a run did, in a few lines, from its Prometheus samples; and the end of a bounded run.

One formatter, :func:`summary_lines`, turns metric samples into the summary: records read per
stream, predictions, labels learned, expiries, dead letters by reason and the champion's served
quality as the rolling gauges hold it. The demo feeds it samples scraped from ``/metrics``
(:func:`samples_of` on the parsed text); a bounded live run feeds it its own registry's
(:func:`registry_samples`). Both are the same families, so both print the same lines.

A bounded live run (``UNDERTOW_TAIL=false``) prints the summary to stderr once, when its input
has ended and every worker of the process is done. The hook is the Kafka sinks' partition
``close()``: Bytewax calls it on every worker, for every output step, only when the dataflow
completes on finite input (never on a tailing run, a Ctrl-C or a crash). Every partition is built
when the workers build the dataflow, before any can complete (completion needs all workers), so
when the last partition built in this process closes, nothing upstream of any sink can change a
count any more: :data:`END_OF_RUN` counts them and prints then. Each process of a cluster
(``-i/-a``) prints its own summary from its own registry, and says so in its first line.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import REGISTRY

__all__ = ["END_OF_RUN", "EndOfRun", "Samples", "registry_samples", "samples_of",
           "summary_lines", "total"]

#: (sample name, sorted label pairs) -> value, as scraped or collected.
Samples = Mapping[tuple[str, tuple[tuple[str, str], ...]], float]


def samples_of(families: Iterable[Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of metric families: ``registry.collect()`` or parsed ``/metrics`` text."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in families:
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def registry_samples(registry: Any = REGISTRY) -> dict[tuple[str, tuple[tuple[str, str], ...]],
                                                       float]:
    """This process's samples, as a scrape of it would read them."""
    return samples_of(registry.collect())


def total(samples: Samples, name: str, **want: str) -> float:
    """Sum of a metric's samples whose labels include ``want``."""
    return sum(v for (n, labels), v in samples.items()
               if n == name and all(dict(labels).get(k) == x for k, x in want.items()))


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """A metric's samples summed per value of one label, sorted by it."""
    out: dict[str, float] = {}
    for (n, labels), v in samples.items():
        if n == name:
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + v
    return dict(sorted(out.items()))


def _n(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:g}"


def _q(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.3f}"


def _counts(d: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {_n(v)}" for k, v in d.items())


def summary_lines(samples: Samples) -> list[str]:
    """The summary of a run, one line per subject, indented by two spaces.

    >>> s = {("undertow_records_read_total", (("stream", "events"),)): 12.0,
    ...      ("undertow_predictions_total", (("model", "m"),)): 10.0,
    ...      ("undertow_model_champion", (("model", "m"),)): 1.0,
    ...      ("undertow_model_accuracy_ratio", (("model", "m"),)): 0.9,
    ...      ("undertow_dead_letters_total", (("reason", "bad_json"), ("step", "d"))): 2.0}
    >>> print("\\n".join(summary_lines(s)))
      records read           events 12
      predictions            10 by m (champion)
      labels learned         0; held until their time 0; waiting for their event 0
      expiries               none; still pending 0
      dead letters           2: bad_json 2
      served quality         m: accuracy 0.900, log loss n/a, ROC AUC n/a (rolling)
    """
    read = by_label(samples, "undertow_records_read_total", "stream")
    preds = by_label(samples, "undertow_predictions_total", "model")
    learned = by_label(samples, "undertow_labels_learned_total", "model")
    champions = [m for m, v in by_label(samples, "undertow_model_champion", "model").items()
                 if v == 1.0]
    champion = champions[0] if champions else None

    def per_model(d: dict[str, float]) -> str:
        if champion is None:
            return _counts(d) if d else "0"
        head = f"{_n(d.get(champion, 0.0))} by {champion} (champion)"
        others = {m: v for m, v in d.items() if m != champion}
        return head + (f"; challengers: {_counts(others)}" if others else "")

    expired = {f"{r} {_n(v)}" for r, v in by_label(
        samples, "undertow_pending_expired_total", "reason").items() if v}
    expiries = [f"predictions never labelled: {', '.join(sorted(expired))}"] if expired else []
    early = total(samples, "undertow_early_labels_expired_total")
    if early:
        expiries.append(f"labels whose event never came: {_n(early)}")
    dead = {r: v for r, v in by_label(samples, "undertow_dead_letters_total", "reason").items()
            if v}
    n_dead = sum(dead.values())

    lines = [
        f"  records read           {_counts(read) if read else 'none'}",
        f"  predictions            {per_model(preds)}",
        f"  labels learned         {per_model(learned) if learned else '0'}; held until their time "
        f"{_n(total(samples, 'undertow_labels_waiting_for_time'))}; waiting for their event "
        f"{_n(total(samples, 'undertow_early_labels_waiting'))}",
        f"  expiries               {'; '.join(expiries) if expiries else 'none'}; still pending "
        f"{_n(total(samples, 'undertow_pending_predictions'))}",
        f"  dead letters           {_n(n_dead)}" + (f": {_counts(dead)}" if dead else ""),
    ]
    if champion is None:
        lines.append("  served quality         n/a (no model step ran in this process)")
    else:
        def gauge(name: str) -> float | None:
            key = (name, (("model", champion),))
            return samples[key] if key in samples else None

        lines.append(
            f"  served quality         {champion}: accuracy "
            f"{_q(gauge('undertow_model_accuracy_ratio'))}, log loss "
            f"{_q(gauge('undertow_model_log_loss'))}, ROC AUC "
            f"{_q(gauge('undertow_model_roc_auc_ratio'))} (rolling)")
    return lines


def _print_summary(workers: list[int], worker_count: int) -> None:
    local = len(workers)
    processes = max(1, worker_count // max(1, local))
    process = min(workers) // max(1, local) if workers else 0
    w = f"{local} worker" + ("s" if local != 1 else "")
    head = (f"undertow: end of input; summary of process {process} of {processes} ({w}) from "
            f"its own metrics" + ("; every process prints its own" if processes > 1 else ""))
    try:
        text = "\n".join([head, *summary_lines(registry_samples())])
    except Exception as ex:  # a summary that cannot be built must not fail a finished run
        text = f"undertow: end of input; no summary ({type(ex).__name__}: {ex})"
    print(text, file=sys.stderr, flush=True)


class EndOfRun:
    """Calls ``on_end(local worker indices, worker count)`` once, when every sink partition this
    process opened has closed (Bytewax closes them only when a dataflow completes on finite
    input). Only the first run of a process reports: the registry counts since the process
    started.
    """

    def __init__(self, on_end: Callable[[list[int], int], None] = _print_summary) -> None:
        self._on_end = on_end
        self._lock = threading.Lock()
        self._open = 0
        self._workers: set[int] = set()
        self._worker_count = 1
        self._done = False

    def opened(self, step_id: str, worker_index: int, worker_count: int) -> Callable[[], None]:
        """Register a sink partition as it is built; returns what its ``close()`` must call."""
        with self._lock:
            self._open += 1
            self._workers.add(worker_index)
            self._worker_count = worker_count
        closed = False

        def close() -> None:
            nonlocal closed
            with self._lock:
                if closed:
                    return
                closed = True
                self._open -= 1
                if self._open or self._done:
                    return
                self._done = True
                workers, count = sorted(self._workers), self._worker_count
            self._on_end(workers, count)

        return close


#: The process's end-of-run hook, used by the Kafka sinks of a bounded run.
END_OF_RUN = EndOfRun()
