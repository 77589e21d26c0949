"""Feature-stage benchmark: the fraud spec alone, against the model step, in the same run.

Run from the repository root (a plain script, not a test; pytest never collects it)::

    .venv/bin/python benchmarks/features.py --events 1000000 --cards 100000

On the deterministic workload (``WorkloadConfig(seed, n_events, n_cards)``):

* **features, plain loop**: :class:`undertow.features.SpecState` over every event in one
  process (the pure logic: as the reference loop computes them);
* **features, dataflow**: the :func:`operators.features.spec_features` operator in a Bytewax
  dataflow (``run_main``, one worker, 32 shards), decoded events in, featured events out;
* **features, rolling only**: the same without the windowed (dashboard) aggregates, i.e. only
  what the model is served;
* **memory**: what the state holds after the run, measured with ``tracemalloc``;
* **model step**: ``predict_proba_one`` then ``learn_one`` of the River model on the feature
  vectors the stage produced (a sample of ``--model-sample`` of them), i.e. what the model step
  spends per event on the model itself.

It prints events/s and µs/event of each, the feature stage's memory (resident set growth while
the state is built, and the state's own record and entity counts), and the ratio of the feature
stage's cost per event to the model step's. Machines are shared and noisy: quote ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bytewax.operators as op  # noqa: E402
from bytewax.dataflow import Dataflow  # noqa: E402
from bytewax.outputs import DynamicSink, StatelessSinkPartition  # noqa: E402
from bytewax.testing import TestingSource, run_main  # noqa: E402

from harness.workload import WorkloadConfig, generate  # noqa: E402
from operators.features import spec_features  # noqa: E402
from undertow.features import SpecState, load_spec  # noqa: E402
from undertow.models import make_model  # noqa: E402
from undertow.reference import FRAUD_SPEC  # noqa: E402
from undertow.schema import Event  # noqa: E402


class _Count(StatelessSinkPartition):
    def __init__(self, box: list) -> None:
        self.box = box

    def write_batch(self, items: list) -> None:
        self.box[0] += len(items)
        if len(self.box) < 2 + 1000:  # keep a few vectors for the model step
            self.box.extend(fe.features for fe in items[:10])


class CountSink(DynamicSink):
    def __init__(self, box: list) -> None:
        self.box = box

    def build(self, step_id, worker_index, worker_count):
        return _Count(self.box)


def timed_loop(spec: Any, events: list[Event]) -> tuple[SpecState, float]:
    """Every event through one in-process spec state; the state and the seconds it took."""
    state = SpecState(spec)
    update = state.update
    t = time.perf_counter()
    for ev in events:
        update(ev.fields, ev.ts)
    return state, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--cards", type=int, default=100_000)
    ap.add_argument("--merchants", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--model", default="logreg")
    ap.add_argument("--model-sample", type=int, default=100_000)
    a = ap.parse_args()
    spec = load_spec(FRAUD_SPEC)
    t = time.perf_counter()
    w = generate(WorkloadConfig(seed=a.seed, n_events=a.events, n_cards=a.cards,
                                n_merchants=a.merchants))
    events = [Event(e["event_id"], e["card_id"], e["ts"], e) for e in w.events]
    print(f"workload: {a.events:,} events, {a.cards:,} cards, {a.merchants:,} merchants "
          f"({time.perf_counter() - t:.1f} s to generate)")
    del w
    gc.collect()

    # 1. The plain loop.
    state, loop_s = timed_loop(spec, events)
    kept = sum(g.records for g in state.groups)
    ents = sum(len(g) for g in state.groups)
    windows = sum(g.open_windows for g in state.groups)
    print(f"features, plain loop: {a.events / loop_s:,.0f} events/s "
          f"({loop_s / a.events * 1e6:.2f} µs/event); state at the end: {ents:,} entities, "
          f"{kept:,} records, {windows:,} open windows")
    del state
    gc.collect()

    # 1b. The same without the windowed (dashboard) features: what the model is served.
    state, roll_s = timed_loop(dataclasses.replace(spec, windowed=()), events)
    print(f"features, plain loop, rolling features only: {a.events / roll_s:,.0f} events/s "
          f"({roll_s / a.events * 1e6:.2f} µs/event)")
    del state

    # 1c. The state's memory: everything allocated while it is built and still held after.
    gc.collect()
    tracemalloc.start()
    state = SpecState(spec)
    for ev in events:
        state.update(ev.fields, ev.ts)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"features state memory (tracemalloc): {held / 2**20:,.1f} MB held at the end, "
          f"{peak / 2**20:,.1f} MB peak")
    del state
    gc.collect()
    sample = SpecState(spec)
    vectors = [sample.update(ev.fields, ev.ts) for ev in events[:a.model_sample]]

    # 2. The dataflow operator, one worker.
    box = [0]
    flow = Dataflow("features_bench")
    feats = spec_features("features", op.input("in", flow, TestingSource(events, 1000)),
                          spec=spec, shards=32)
    op.output("out", feats.featured, CountSink(box))
    t = time.perf_counter()
    run_main(flow)
    flow_s = time.perf_counter() - t
    assert box[0] == a.events, box[0]
    print(f"features, dataflow:   {a.events / flow_s:,.0f} events/s "
          f"({flow_s / a.events * 1e6:.2f} µs/event)")

    # 3. The model step's model work on the same vectors.
    model = make_model(a.model)
    t = time.perf_counter()
    for i, x in enumerate(vectors):
        model.predict_proba_one(x)
        model.learn_one(x, i % 31 == 0)
    model_s = time.perf_counter() - t
    per_model = model_s / len(vectors) * 1e6
    print(f"model step ({a.model}): {len(vectors) / model_s:,.0f} events/s "
          f"({per_model:.2f} µs/event: predict_proba_one + learn_one)")
    print(f"feature stage / model, per event: plain loop "
          f"{loop_s / a.events * 1e6 / per_model:.2f} (rolling only "
          f"{roll_s / a.events * 1e6 / per_model:.2f}), dataflow "
          f"{flow_s / a.events * 1e6 / per_model:.2f}")


if __name__ == "__main__":
    main()
