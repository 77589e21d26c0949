"""The one-command speed benchmark: undertow beside its ceiling and two peers, on one broker.

Run from the repository root (a plain script, not a test; pytest never collects it)::

    .venv/bin/python benchmarks/speed.py [--events 100000] [--models logreg,hat] [--partitions 3]
        [--reps 3] [--processes 1,2] [--undertow-env K=V ...] [--two-process-env K=V ...]
        [--seed 1] [--json out.json] [--memory]

One :class:`~harness.kafka.EmbeddedKafka` broker gets the deterministic workload
(``WorkloadConfig(seed, n_events=N)``: events keyed by ``card_id`` and their delayed labels, on
``--partitions`` partitions of an ``events`` and a ``labels`` topic), written once, before any
clock starts. Then every repetition runs each row once per model, on the same records:

1. **plain River loop** (the ceiling): :func:`undertow.reference.run_reference` over the
   pre-decoded records; events/s = N / its seconds. It runs in a fresh child process of its own
   (it builds the same workload from the seed first, not timed), as fresh as the other rows'
   (in this process, which holds everything else, the same loop ran 10-40 % slower), before and
   after the other rows; the faster of the two is the repetition's ceiling (as ``e2e.py``).
2. **confluent-kafka loop**: :mod:`benchmarks.peers.kafka_loop`, a hand-written poll loop.
3. **naive Bytewax**: :mod:`benchmarks.peers.naive_bytewax`, Bytewax's own Kafka connectors and
   ``stateful_map`` per card, per merchant and one global model key.
4. **undertow, 1 process** / **2 processes**: ``python -m bytewax.run dataflows.stream:flow``
   on ``streams/fraud.toml`` with ``UNDERTOW_TAIL=false``, one process, or two joined by
   Bytewax's ``-i/-a``. ``--undertow-env`` adds settings to both, ``--two-process-env`` to the
   two-process run only: by default ``UNDERTOW_MODEL_MODE=replicated`` (docs/scaling.md; give
   ``--two-process-env UNDERTOW_MODEL_MODE=exact`` for the one-key model step on two
   processes). Each undertow run has a model-updates topic of its own.

Rows 2-4 are child processes, each writing to a predictions topic of its own (created before it
starts, deleted after it is read back); a run that leaves anything but exactly one prediction per
event (checked by event id) is an error: exit status 1.

**Definitions, the same for every child-process row.** Each prediction carries ``read_at`` (epoch
s, when its event's batch was read); its Kafka timestamp is when it was produced (CreateTime, ms).
undertow's wire form omits ``read_at`` (``Prediction.wire``), so its processes are started by a
launcher (``STAMPED_RUN``) that adds it to the JSON, registers the ``done_at`` hook below and
runs ``bytewax.run``'s own main, unchanged otherwise (the peers write ``read_at`` themselves).
Then:

* **events/s** = N / (``done_at`` - first ``read_at``): from the first record read to when
  the last process's work was done. Every child prints ``{"done_at": <epoch s>}`` from an
  ``atexit`` hook (:func:`benchmarks.peers.stamp_done_at_exit`; undertow's by the launcher), that
  is once its program has returned: its input read to the end, every label learned, its sinks
  flushed. So Python start-up, imports and connecting are excluded for all rows alike, and so is
  the interpreter's teardown (0.3-0.8 s at 20k events); the labels read after the last event are
  learned inside the window, as in the ceiling's (a loop that reads the events ahead of the
  labels would otherwise look faster than the plain loop). The JSON also has the rate to the last
  prediction's produce time;
* **latency** = produce time - ``read_at``, per prediction; p50/p99 exact over all N
  (``benchmarks.stats.percentiles_ms``), at the timestamps' 1 ms resolution. The ceiling's
  latency is its per-event compute time (features + score), as in ``benchmarks/e2e.py``;
* **CPU s / 1k events**: utime + stime (``/proc/PID/stat``, sampled every 0.1 s and interpolated)
  of the row's process(es) and of the broker over that same window, per 1,000 events; the
  ceiling's own is its process's CPU time while it runs;
* **peak RSS**: the highest ``VmHWM`` sampled (every 0.1 s until the process exits), summed over
  a row's processes; not shown for the ceiling, whose process holds the whole decoded workload
  (its ``ru_maxrss`` is in the JSON).

Every number is a median over ``--reps``; ratios are to the same repetition's ceiling.

``--memory`` also measures state sizes, each in a fresh child process, as the resident set it
adds (VmRSS after ``gc.collect()``, before and after: what the machine pays, the allocator's
slack included; ``tracemalloc`` slowed the fill 15-fold): a
:class:`~undertow.label_join.LabelJoin` holding ``--memory-n`` (1M) pending predictions, each
with the fraud stream's 13 features and one score, as ``OnlineLearner.on_event`` serves them
(per pending prediction); and the fraud feature state (:class:`~undertow.features.SpecState`,
and its card group alone) after 1M distinct cards with one event each, then after 1M events over
100k cards, which separates the cost of a card from the cost of a record it holds.

Machines are shared and noisy: quote ratios, not absolute rates.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from benchmarks.e2e import environment, load_broker  # noqa: E402
from benchmarks.peers import PeerConfig  # noqa: E402
from benchmarks.soak import cpu_s  # noqa: E402
from benchmarks.state import DAY_MS, rss_mb, vector  # noqa: E402
from benchmarks.stats import percentiles_ms  # noqa: E402
from connectors.settings import load_settings  # noqa: E402
from harness.dataflow import bytewax_run  # noqa: E402
from harness.kafka import EmbeddedKafka, free_port, read_topic  # noqa: E402
from harness.process import ChildProcess, run  # noqa: E402
from harness.workload import Workload, WorkloadConfig, generate  # noqa: E402
from undertow.features import GroupState, SpecState, load_spec  # noqa: E402
from undertow.label_join import LabelJoin  # noqa: E402
from undertow.models import MODELS  # noqa: E402
from undertow.reference import FRAUD_SPEC  # noqa: E402

ROWS = ("plain loop", "confluent-kafka loop", "naive Bytewax", "undertow, 1 process",
        "undertow, 2 processes")

#: Runs ``python -m bytewax.run ARGS`` with ``read_at`` added to each prediction's JSON, and
#: prints when it was done, as the peers do.
STAMPED_RUN = """\
import runpy, sys
from benchmarks.peers import stamp_done_at_exit
from undertow.schema import Prediction
stamp_done_at_exit()
_wire = Prediction.wire
Prediction.wire = lambda self: {**_wire(self), "read_at": self.read_at}
sys.argv = ["bytewax.run", *sys.argv[1:]]
runpy.run_module("bytewax.run", run_name="__main__", alter_sys=True)
"""

#: The plain loop, in a child: ``python -c CEILING_RUN SEED N MODEL``.
CEILING_RUN = """\
import json, resource, sys, time
from harness.workload import WorkloadConfig, generate
from undertow.models import make_model
from undertow.reference import run_reference
w = generate(WorkloadConfig(seed=int(sys.argv[1]), n_events=int(sys.argv[2])))
c0 = time.process_time()
r = run_reference(w.events, w.labels, make_model(sys.argv[3]))
print(json.dumps({"seconds": r.seconds, "learned": r.learned, "latencies_s": r.latencies_s,
                  "cpu_s": time.process_time() - c0,
                  "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""

SAMPLE_S = 0.1

DONE = re.compile(r'\{"done_at":([0-9.e+]+)\}')
LEARNED = re.compile(r'labels learned\s+(\d+)|"learned":(\d+)')


# ----------------------------------------------------------------------------- processes


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set (``VmHWM``) of a live process, None once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Sampler:
    """CPU seconds (utime + stime) and peak RSS of some processes, every ``SAMPLE_S`` on a
    thread. An exited child not yet reaped (a zombie) still reports its final CPU time."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.cpu: dict[int, list[tuple[float, float]]] = {p: [] for p in pids}
        self.hwm: dict[int, float] = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        for pid, series in self.cpu.items():
            try:
                series.append((time.time(), cpu_s(pid)))
            except (OSError, IndexError, ValueError):
                continue
            mb = vm_hwm_mb(pid)
            if mb is not None and mb > self.hwm[pid]:
                self.hwm[pid] = mb

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def cpu_between(self, pid: int, t0: float, t1: float) -> float:
        """CPU seconds of ``pid`` from wall time ``t0`` to ``t1`` (linear between samples)."""
        return _interp(self.cpu[pid], t1) - _interp(self.cpu[pid], t0)


def _interp(series: list[tuple[float, float]], t: float) -> float:
    if not series:
        return 0.0
    if t <= series[0][0]:
        return series[0][1]
    for (ta, va), (tb, vb) in zip(series, series[1:], strict=False):
        if t <= tb:
            return va + (vb - va) * (t - ta) / max(tb - ta, 1e-9)
    return series[-1][1]


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """Our environment without any undertow, Bytewax or peer setting, plus ``extra``."""
    return {**{k: v for k, v in os.environ.items()
               if not k.startswith(("UNDERTOW_", "BYTEWAX_", "PEER_"))}, **extra}


def wait_all(children: list[ChildProcess], timeout: float) -> float:
    """Wait until every child has exited (polled every 10 ms, not reaped); when the last did.
    Raises RuntimeError if one exits with a status other than 0 or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    exited: dict[int, float] = {}
    while len(exited) < len(children):
        for i, c in enumerate(children):
            if i not in exited and not c.running:
                exited[i] = time.time()
                if c.returncode != 0:
                    raise RuntimeError(f"{c.name} exited with status {c.returncode}:\n"
                                       f"{c.log_tail()}")
        if time.monotonic() > deadline:
            late = [c.name for i, c in enumerate(children) if i not in exited]
            raise RuntimeError(f"{late} still running after {timeout:.0f} s:\n"
                               + "\n".join(c.log_tail() for c in children))
        time.sleep(0.01)
    return max(exited.values())


def run_children(kafka: EmbeddedKafka, n: int, topic: str, children: list[ChildProcess],
                 expected_ids: set[str], timeout: float) -> dict[str, Any]:
    """Start ``children``, wait until all have exited, read ``topic`` back; the row's numbers.
    Raises RuntimeError unless each exited 0 and ``topic`` holds one prediction per event."""
    try:
        for c in children:
            c.start()
        with Sampler([*(c.pid for c in children), kafka.pid]) as sampler:
            t_exit = wait_all(children, timeout)
        logs = [c.log_tail(4000) for c in children]
    finally:
        for c in children:
            c.stop()
    msgs = read_topic(kafka.bootstrap_servers, topic, timeout=120.0)
    read_at, written, ids = [], [], set()
    for m in msgs:
        p = orjson.loads(m.value())
        if "read_at" not in p:
            raise RuntimeError(f"a prediction on {topic!r} has no read_at (the launcher adds it "
                               f"to undertow's Prediction.wire): {p}")
        read_at.append(p["read_at"])
        written.append(m.timestamp()[1] / 1000.0)
        ids.add(p["event_id"])
    if len(msgs) != n or ids != expected_ids:
        raise RuntimeError(f"{len(msgs)} predictions ({len(ids)} distinct event ids, "
                           f"{len(expected_ids - ids)} events without one) for {n} events on "
                           f"{topic!r}; last log lines:\n" + "\n".join(logs))
    done = [float(m.group(1)) for log in logs for m in DONE.finditer(log)]
    if len(done) != len(children):
        raise RuntimeError(f"{len(done)} 'done_at' stamps from {len(children)} processes:\n"
                           + "\n".join(logs))
    t0, t_last, t1 = min(read_at), max(written), max(done)
    p50, p99 = percentiles_ms([w - r for w, r in zip(written, read_at, strict=True)])
    pids = [c.pid for c in children]
    cpu = sum(sampler.cpu_between(p, t0, t1) for p in pids)
    broker = sampler.cpu_between(kafka.pid, t0, t1)
    return {
        "events": n, "learned": learned(logs), "seconds": t1 - t0,
        "events_per_s": n / (t1 - t0), "p50_ms": p50, "p99_ms": p99,
        "cpu_s_per_1k": 1000 * cpu / n, "broker_cpu_s_per_1k": 1000 * broker / n,
        "peak_rss_mb": sum(sampler.hwm[p] for p in pids),
        "peak_rss_mb_each": [sampler.hwm[p] for p in pids], "predictions": len(msgs),
        # per process (replicated mode: the trainer's process is the busier one)
        "cpu_s_per_1k_each": [1000 * sampler.cpu_between(p, t0, t1) / n for p in pids],
        "events_per_s_to_last_prediction": n / (t_last - t0),
        "done_after_last_prediction_s": t1 - t_last, "exit_after_done_s": t_exit - t1,
        "process_cpu_s_whole_run": sum(sampler.cpu[p][-1][1] for p in pids),
        "log_tails": [lt[-600:] for lt in logs],
    }


def learned(logs: list[str]) -> int | None:
    """Labels learned, as the run's output says (undertow's end-of-run summary of each process,
    the confluent-kafka loop's JSON line); None if it does not say."""
    found = [int(m.group(1) or m.group(2)) for log in logs for m in LEARNED.finditer(log)]
    return sum(found) if found else None


# ----------------------------------------------------------------------------------- rows


class Bench:
    """One broker with the workload on it; each method runs one row once and returns its
    numbers."""

    def __init__(self, kafka: EmbeddedKafka, w: Workload, args: argparse.Namespace) -> None:
        self.kafka = kafka
        self.w = w
        self.args = args
        self.n = len(w.events)
        self.ids = {e["event_id"] for e in w.events}
        self.timeout = 120.0 + self.n / 200.0

    def fresh_topics(self, *names: str) -> list[str]:
        suffix = uuid.uuid4().hex[:8]
        topics = [f"{name}-{suffix}" for name in names]
        self.kafka.create_topics(topics, partitions=1)
        return topics

    def drop_topics(self, topics: list[str]) -> None:
        """Free the broker's memory (it keeps every record in memory)."""
        for future in self.kafka.admin().delete_topics(topics).values():
            future.result(timeout=30)

    def ceiling(self, model: str) -> dict[str, Any]:
        """The plain loop in a fresh child (as fresh as the other rows' processes), which
        builds the same workload from the seed and reports on one JSON line."""
        argv = [sys.executable, "-c", CEILING_RUN, str(self.w.config.seed), str(self.n), model]
        b0 = cpu_s(self.kafka.pid)
        done = run(argv, timeout=self.timeout, env=child_env({}), cwd=ROOT, name="ceiling")
        broker = cpu_s(self.kafka.pid) - b0
        if done.returncode != 0:
            raise RuntimeError(f"the plain loop exited {done.returncode}: {done.stderr[-2000:]!r}")
        r = json.loads(done.stdout.decode().strip().splitlines()[-1])
        p50, p99 = percentiles_ms(r["latencies_s"])
        return {"events": self.n, "learned": r["learned"], "seconds": r["seconds"],
                "events_per_s": self.n / r["seconds"], "p50_ms": p50, "p99_ms": p99,
                "cpu_s_per_1k": 1000 * r["cpu_s"] / self.n,
                "broker_cpu_s_per_1k": 1000 * broker / self.n, "peak_rss_mb": None,
                "process_peak_rss_mb": r["max_rss_kb"] / 1024}

    def peer(self, model: str, argv: list[str], name: str) -> dict[str, Any]:
        (topic,) = self.fresh_topics("predictions")
        cfg = PeerConfig(self.kafka.bootstrap_servers, "events", "labels", topic, model)
        child = ChildProcess(argv, env=child_env(cfg.env()), cwd=ROOT, name=name)
        try:
            return run_children(self.kafka, self.n, topic, [child], self.ids, self.timeout)
        finally:
            self.drop_topics([topic])

    def kafka_loop(self, model: str) -> dict[str, Any]:
        return self.peer(model, [sys.executable, "-m", "benchmarks.peers.kafka_loop"],
                         "kafka_loop")

    def naive_bytewax(self, model: str) -> dict[str, Any]:
        return self.peer(model, bytewax_run("benchmarks.peers.naive_bytewax:flow"),
                         "naive_bytewax")

    def undertow(self, model: str, processes: int) -> dict[str, Any]:
        predictions, deadletter, updates = self.fresh_topics("predictions", "deadletter",
                                                             "model-updates")
        env = child_env({
            "UNDERTOW_STREAM": "streams/fraud.toml",
            "UNDERTOW_KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "UNDERTOW_TAIL": "false", "UNDERTOW_MODEL": model,
            "UNDERTOW_EVENTS_TOPIC": "events", "UNDERTOW_LABELS_TOPIC": "labels",
            "UNDERTOW_PREDICTIONS_TOPIC": predictions, "UNDERTOW_DEADLETTER_TOPIC": deadletter,
            "UNDERTOW_MODEL_UPDATES_TOPIC": updates,
            **self.args.undertow_env, **(self.args.two_process_env if processes > 1 else {}),
        })
        args: list[list[str]] = [[]]
        if processes > 1:
            addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
            args = [["-i", str(i), "-a", addresses] for i in range(processes)]
        children = [ChildProcess([sys.executable, "-c", STAMPED_RUN, "dataflows.stream:flow",
                                  *a], env=env, cwd=ROOT, name=f"undertow {i}")
                    for i, a in enumerate(args)]
        try:
            return run_children(self.kafka, self.n, predictions, children, self.ids,
                                self.timeout)
        finally:
            self.drop_topics([predictions, deadletter, updates])


def repetition(bench: Bench, model: str, processes: list[int]) -> dict[str, dict[str, Any]]:
    """Every row once for ``model``: the ceiling before and after, the faster counts."""
    before = bench.ceiling(model)
    out = {"confluent-kafka loop": bench.kafka_loop(model),
           "naive Bytewax": bench.naive_bytewax(model)}
    for p in processes:
        out[f"undertow, {p} process" + ("es" if p > 1 else "")] = bench.undertow(model, p)
    after = bench.ceiling(model)
    best = max(before, after, key=lambda r: r["events_per_s"])
    rows = {"plain loop": {**best, "before_events_per_s": before["events_per_s"],
                           "after_events_per_s": after["events_per_s"]}, **out}
    for r in rows.values():
        r["ratio"] = r["events_per_s"] / best["events_per_s"]
    return rows


# ---------------------------------------------------------------------------------- report


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("ratio", "events_per_s", "p50_ms", "p99_ms", "cpu_s_per_1k", "broker_cpu_s_per_1k",
            "peak_rss_mb")
    return {k: (None if any(r.get(k) is None for r in runs)
                else statistics.median(r[k] for r in runs)) for k in keys}


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}" if v < 10 else f"{v:.0f}"


def print_table(medians: dict[str, dict[str, dict[str, Any]]], models: list[str],
                reps: int) -> None:
    head = ["row"]
    for m in models:
        head += [f"{m}: ratio", "events/s", "p50/p99 ms", "CPU s/1k (proc, broker)",
                 "peak RSS MB"]
    print(f"\nmedians of {reps} repetition(s); ratio = events/s / the same repetition's "
          f"plain loop\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in ROWS:
        if row not in medians[models[0]]:
            continue
        cells = [row]
        for m in models:
            r = medians[m][row]
            cells += [f"{r['ratio']:.2f}x", f"{r['events_per_s']:,.0f}",
                      f"{_ms(r['p50_ms'])} / {_ms(r['p99_ms'])}",
                      f"{_f(r['cpu_s_per_1k'], '.3f')}, {_f(r['broker_cpu_s_per_1k'], '.3f')}",
                      _f(r["peak_rss_mb"], ",.0f")]
        print("| " + " | ".join(cells) + " |")
    print("\nplain loop: latency = per-event compute (features + score), CPU = its process's; "
          "others: latency = read -> produced, CPU over first read -> done; RSS = peak VmHWM")


# ---------------------------------------------------------------------------------- memory


def pending_join(n: int) -> LabelJoin:
    """A label join holding ``n`` served predictions (the fraud features, one score)."""
    rng = random.Random(1)
    join = LabelJoin(label_ttl_ms=DAY_MS, early_label_ttl_ms=0, max_pending=n + 1)
    due: list[Any] = []
    for i in range(n):  # one event a ms: none expires within the one-day TTL
        join.advance(0, i, due)
        join.serve(f"e{i:09d}", f"c{i % 100_000:07d}", vector(rng), {"fraud": rng.random()}, i,
                   due)
    return join


CHANNELS = ("pos", "online", "atm")


def feature_state(n_events: int, n_cards: int, card_group_only: bool) -> Any:
    """The fraud feature state after ``n_events`` events (one a ms: all within every window,
    nothing evicted) over ``n_cards`` cards and 200 merchants."""
    spec = load_spec(FRAUD_SPEC)
    state: Any = SpecState(spec)
    if card_group_only:
        card = next(g for g in spec.groups() if g.key == ("card_id",))
        state = GroupState(card, allowed_lateness_ms=spec.allowed_lateness_ms,
                           idle_ms=spec.idle_ms)
    start = 1_767_225_600_000
    for i in range(n_events):
        rec = {"event_id": f"e{i:09d}", "card_id": f"c{i % n_cards:07d}",
               "merchant_id": f"m{i % 200:05d}", "amount": float(i % 997) + 0.5,
               "channel": CHANNELS[i % 3], "ts": start + i}
        if card_group_only:
            state.update(rec, rec["ts"], None, [])
        else:
            state.update(rec, rec["ts"])
    return state


def memory_child(what: str, n: int, cards: int) -> dict[str, Any]:
    """In a fresh process: the resident set the state ``what`` adds ("join", "spec" or "card")
    over ``n`` records and ``cards`` cards (VmRSS after ``gc.collect()``, before and after)."""
    gc.collect()
    base = rss_mb()
    t0 = time.perf_counter()
    state: Any = (pending_join(n) if what == "join"
                  else feature_state(n, cards, card_group_only=what == "card"))
    seconds = time.perf_counter() - t0
    gc.collect()
    held = (len(state.pending) if what == "join" else len(state) if what == "card"
            else len(state.groups[0]))
    return {"what": what, "records": n, "entities": held, "seconds": seconds,
            "bytes": (rss_mb() - base) * 1024 * 1024}


def measure_memory(n: int) -> dict[str, Any]:
    """Each state in a child process of its own (see :func:`memory_child`)."""
    print(f"\nmemory (resident set added, VmRSS after gc.collect(), each state in a fresh "
          f"process), {n:,} pending predictions / cards:", flush=True)
    out: dict[str, Any] = {"method": "VmRSS delta in a fresh process", "n": n, "runs": []}

    def child(what: str, cards: int) -> dict[str, Any]:
        argv = [sys.executable, __file__, "--memory-child", what, str(n), str(cards)]
        done = run(argv, timeout=1800, env=child_env({}), cwd=ROOT, name=f"memory {what}")
        if done.returncode != 0:
            raise RuntimeError(f"memory {what} exited {done.returncode}: "
                               f"{done.stderr.decode()[-2000:]}")
        r: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
        if r["entities"] != (n if what == "join" else cards):
            raise RuntimeError(f"memory {what}: {r['entities']} held, not {cards}: {r}")
        out["runs"].append(r)
        return r

    r = child("join", n)
    out["pending_prediction_bytes"] = r["bytes"] / n
    print(f"  label join, {n:,} pending predictions (13 features + 1 score each): "
          f"{r['bytes'] / 1e6:,.0f} MB, {r['bytes'] / n:,.0f} B per pending prediction",
          flush=True)
    few = max(1, n // 10)
    for part, name in (("spec", "whole fraud spec"), ("card", "card group alone")):
        t1 = child(part, n)["bytes"]
        t2 = child(part, few)["bytes"]
        # t1 = n (a + r): one record per card; t2 = few a + n r: an entity's cost a, a record's r.
        rec = (t2 - few * t1 / n) / (n - few) if n > few else float("nan")
        ent = t1 / n - rec
        out[part] = {"distinct_cards_bytes": t1, "repeated_cards_bytes": t2,
                     "bytes_per_entity": ent, "bytes_per_record": rec}
        print(f"  features, {name}: {n:,} events over {n:,} cards {t1 / 1e6:,.0f} MB "
              f"({t1 / n:,.0f} B per card); over {few:,} cards {t2 / 1e6:,.0f} MB "
              f"({t2 / few:,.0f} B per card); => {ent:,.0f} B per card + {rec:,.0f} B per "
              f"record it holds", flush=True)
    return out


# ------------------------------------------------------------------------------------ main


def parse_env(pairs: list[str], flag: str, ap: argparse.ArgumentParser) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            ap.error(f"{flag}: expected NAME=VALUE, got {pair!r}")
        out[name] = value
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/speed.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--models", default="logreg,hat", help="comma-separated model aliases")
    ap.add_argument("--partitions", type=int, default=3, help="of the events and labels topics")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--processes", default="1,2", help="undertow rows: processes of each")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--undertow-env", action="append", default=[], metavar="K=V",
                    help="a setting of both undertow runs (repeatable)")
    ap.add_argument("--two-process-env", action="append", default=[], metavar="K=V",
                    help="a setting of the multi-process undertow runs only (repeatable)")
    ap.add_argument("--json", type=Path, help="write every run and median here")
    ap.add_argument("--memory", action="store_true", help="also measure state sizes")
    ap.add_argument("--memory-n", type=int, default=1_000_000,
                    help="pending predictions and cards of --memory")
    ap.add_argument("--memory-child", nargs=3, metavar=("WHAT", "N", "CARDS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        what, n_records, cards = args.memory_child
        print(json.dumps(memory_child(what, int(n_records), int(cards))))
        return 0
    models = [m for m in args.models.split(",") if m]
    processes = sorted({int(p) for p in args.processes.split(",") if p})
    if any(m not in MODELS for m in models) or not models:
        ap.error(f"--models: choose from {', '.join(MODELS)}")
    if args.events < 1 or args.partitions < 1 or args.reps < 1 or not set(processes) <= {1, 2}:
        ap.error("--events, --partitions, --reps must be >= 1; --processes from 1,2")
    args.undertow_env = parse_env(args.undertow_env, "--undertow-env", ap)
    args.two_process_env = {"UNDERTOW_MODEL_MODE": "replicated",
                            **parse_env(args.two_process_env, "--two-process-env", ap)}

    env = environment()
    w = generate(WorkloadConfig(seed=args.seed, n_events=args.events))
    print(f"undertow speed benchmark: {len(w.events)} events, {len(w.labels)} labels, seed "
          f"{args.seed}, models {','.join(models)}, {args.partitions} partitions, {args.reps} "
          f"rep(s); nproc {env['nproc']}, Python {env['python']}, bytewax {env['bytewax']}, "
          f"river {env['river']}", flush=True)
    if args.undertow_env or args.two_process_env:
        print(f"undertow env {args.undertow_env}; two-process env {args.two_process_env}")
    runs: dict[str, list[dict[str, dict[str, Any]]]] = {m: [] for m in models}
    try:
        with EmbeddedKafka() as kafka:
            kafka.create_topics(["events", "labels"], partitions=args.partitions)
            t0 = time.perf_counter()
            load_broker(kafka.bootstrap_servers, w.config,
                        load_settings({}, kafka_bootstrap_servers=kafka.bootstrap_servers))
            print(f"embedded Kafka pid {kafka.pid}: loaded in {time.perf_counter() - t0:.1f} s "
                  f"(not timed)", flush=True)
            bench = Bench(kafka, w, args)
            for rep in range(args.reps):
                for m in models:
                    rows = repetition(bench, m, processes)
                    runs[m].append(rows)
                    print(f"rep {rep + 1} {m}: " + "; ".join(
                        f"{name} {r['events_per_s']:,.0f}/s ({r['ratio']:.2f}x, learned "
                        f"{_f(r.get('learned'), 'd')})" for name, r in rows.items()), flush=True)
    except RuntimeError as ex:
        print(f"ERROR: {ex}", file=sys.stderr)
        return 1
    medians = {m: {row: median_row([rows[row] for rows in runs[m]]) for row in runs[m][0]}
               for m in models}
    print_table(medians, models, args.reps)
    scale: dict[str, float] = {}
    if {1, 2} <= set(processes):
        for m in models:
            scale[m] = statistics.median(
                rows["undertow, 2 processes"]["events_per_s"]
                / rows["undertow, 1 process"]["events_per_s"] for rows in runs[m])
        print("\n2 processes / 1 process (events/s, median of the per-repetition ratios): "
              + ", ".join(f"{m} {v:.2f}x" for m, v in scale.items()))
        each = {m: [statistics.median(sorted(rows["undertow, 2 processes"]["cpu_s_per_1k_each"],
                                             reverse=True)[i] for rows in runs[m])
                    for i in range(2)] for m in models}
        print("2 processes: CPU s per 1k events of the stream, busier process / the other "
              "(replicated mode: the busier runs the trainer): "
              + ", ".join(f"{m} {a:.3f} / {b:.3f}" for m, (a, b) in each.items()))
    memory = measure_memory(args.memory_n) if args.memory else None
    if args.json is not None:
        args.json.write_text(json.dumps({
            "events": len(w.events), "labels": len(w.labels), "seed": args.seed,
            "models": models, "partitions": args.partitions, "reps": args.reps,
            "undertow_env": args.undertow_env, "two_process_env": args.two_process_env,
            "environment": env, "runs": runs, "medians": medians,
            "two_over_one_process": scale, "memory": memory,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
