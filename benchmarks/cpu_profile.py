"""CPU per event of the dataflow without Kafka, against another checkout and the plain loop.

Run from the repository root (a plain script, not a test; pytest never collects it)::

    .venv/bin/python benchmarks/cpu_profile.py [--events 20000] [--model logreg] [--rounds 3]
                                               [--before /tmp/before] [--profile [N]]

Each measurement is a fresh subprocess that imports one checkout (this repository, or the one
``--before`` names, say ``git worktree add /tmp/before HEAD``), builds
:func:`benchmarks.e2e.no_kafka_flow` on the deterministic workload and reads
``time.process_time()`` around ``run_main``: CPU seconds, not wall time, because the machine is
shared. The plain River loop (:func:`undertow.reference.run_reference`) is measured the same way
in the same subprocess. Each subprocess runs both ``--repeat`` times and keeps the least CPU
time of each; checkouts are run alternately, ``--rounds`` subprocesses each, and the median is
printed (and the least: load only ever adds CPU time), so a noisy neighbour hits both alike.

Every subprocess also fingerprints its outputs: each prediction's fields (``processed_at`` and
``read_at``, wall-clock readings, left out), and from a second run with every sink captured,
each dead letter and closed window. Differing fingerprints between checkouts are reported and
make the exit status 1: an optimisation must not change a single float.

``--stage features`` / ``--stage decode`` time one stage alone (the feature steps on decoded
events; the decode steps of events and labels), the least of all runs: a smaller effect shows
through the noise there.

``--profile N`` runs this checkout once more under ``cProfile`` and prints the top N functions
by own time (cProfile inflates code made of many small calls).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _digest(rows: list[Any]) -> str:
    return hashlib.sha256(repr(rows).encode()).hexdigest()[:16]


def stage_cpu(events: int, repeat: int, stage: str) -> float:
    """The least CPU seconds of one stage alone on the workload: ``decode`` (the events' and
    labels' decode steps) or ``features`` (the feature steps on decoded events)."""
    import time

    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main

    from benchmarks.e2e import BATCH, FRAUD, kafka_records
    from connectors.settings import load_settings
    from harness.workload import WorkloadConfig, generate
    from operators.decode import decode_events, decode_labels
    from operators.features import spec_features
    from undertow.schema import decode_event

    w = generate(WorkloadConfig(seed=1, n_events=events))
    settings = load_settings({})
    evs, lbs = kafka_records(w, settings)
    decoded = [decode_event(r.value, FRAUD.events, partition=r.partition) for r in evs]
    best = float("inf")
    for _ in range(repeat):
        flow = Dataflow("stage")
        sink: list[Any] = []
        if stage == "decode":
            for name, raw, dec in (("events", evs, decode_events), ("labels", lbs, decode_labels)):
                schema = FRAUD.events if name == "events" else FRAUD.labels
                out = dec(f"decode_{name}", op.input(name, flow, TestingSource(raw, BATCH)),
                          schema=schema)
                op.output(f"{name}_oks", out.oks, TestingSink(sink))
                op.output(f"{name}_errs", out.errs, TestingSink(sink))
        else:
            out = spec_features("features", op.input("in", flow, TestingSource(decoded, BATCH)),
                                spec=FRAUD.features, shards=settings.feature_shards)
            for name in ("featured", "windows", "late"):
                op.output(name, getattr(out, name), TestingSink(sink))
        t0 = time.process_time()
        run_main(flow)
        best = min(best, time.process_time() - t0)
    return best


def child(events: int, model: str, profile: int, repeat: int, stage: str) -> dict[str, Any]:
    """In the subprocess: measure the checkout whose root is first on ``sys.path``."""
    import time

    if stage != "flow":
        return {"stage_cpu_s": stage_cpu(events, repeat, stage)}

    from bytewax.testing import TestingSink, TestingSource, run_main

    from benchmarks.e2e import BATCH, FRAUD, kafka_records, no_kafka_flow
    from connectors.settings import load_settings
    from dataflows.stream import build_flow
    from harness.workload import WorkloadConfig, generate
    from undertow.models import make_model
    from undertow.reference import run_reference

    w = generate(WorkloadConfig(seed=1, n_events=events))
    flow_s = ref_s = float("inf")
    for _ in range(1 if profile else repeat):
        preds: list[Any] = []
        flow = no_kafka_flow(w, model, preds, [])
        t0 = time.process_time()
        if profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.runcall(run_main, flow)
            pstats.Stats(prof).sort_stats("tottime").print_stats(profile)
        else:
            run_main(flow)
        flow_s = min(flow_s, time.process_time() - t0)
        t0 = time.process_time()
        run_reference(w.events, w.labels, make_model(model))
        ref_s = min(ref_s, time.process_time() - t0)
    fields = [p._replace(processed_at=0.0, read_at=0.0) for p in preds]

    # The same flow with every output captured: dead letters and closed windows too.
    settings = load_settings({}, model=model)
    evs, lbs = kafka_records(w, settings)
    got: dict[str, list[Any]] = {"predictions": [], "deadletter": [], "features": []}
    run_main(build_flow(settings, FRAUD, sources={"events": TestingSource(evs, BATCH),
                                                  "labels": TestingSource(lbs, BATCH)},
                        sinks={k: TestingSink(v) for k, v in got.items()}))
    return {
        "events": len(w.events), "predictions": len(preds), "flow_cpu_s": flow_s,
        "reference_cpu_s": ref_s,
        "predictions_digest": _digest(fields),
        "key_fields_digest": _digest([(p.event_id, p.score, p.predicted, p.labels_learned)
                                      for p in preds]),
        "second_run_predictions_digest": _digest(
            [p._replace(processed_at=0.0, read_at=0.0) for p in got["predictions"]]),
        "dead_letters": len(got["deadletter"]), "dead_letters_digest": _digest(got["deadletter"]),
        "windows": len(got["features"]), "windows_digest": _digest(got["features"]),
    }


def measure(root: Path, events: int, model: str, profile: int = 0, repeat: int = 1,
            stage: str = "flow") -> dict[str, Any]:
    """One subprocess on checkout ``root``; its JSON result (a profile goes to stdout)."""
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--events", str(events),
           "--model", model, "--profile", str(profile), "--repeat", str(repeat), "--stage", stage]
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{root}: exit status {out.returncode}\n{out.stderr[-3000:]}")
    *shown, last = out.stdout.rstrip("\n").split("\n")
    if shown:
        print("\n".join(shown))
    return json.loads(last)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--model", default="logreg")
    ap.add_argument("--rounds", type=int, default=3, help="subprocesses of each checkout")
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs in each subprocess: the least CPU time counts")
    ap.add_argument("--before", type=Path, default=None, help="another checkout to compare")
    ap.add_argument("--profile", type=int, nargs="?", const=30, default=0, metavar="N")
    ap.add_argument("--stage", choices=("flow", "features", "decode"), default="flow",
                    help="measure one stage alone (no fingerprints): the feature steps on "
                         "decoded events, or the decode steps")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        sys.path.insert(0, os.getcwd())
        print(json.dumps(child(args.events, args.model, args.profile, args.repeat, args.stage)))
        return 0

    roots = {"after": ROOT}
    if args.before is not None:
        roots = {"before": args.before.resolve(), **roots}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in roots}
    for _ in range(args.rounds):
        for name, root in roots.items():
            runs[name].append(measure(root, args.events, args.model, repeat=args.repeat,
                                      stage=args.stage))
    n = args.events
    if args.stage != "flow":
        least = {name: min(r["stage_cpu_s"] for r in rs) * 1e6 / n for name, rs in runs.items()}
        for name, rs in runs.items():
            each = ", ".join(f"{r['stage_cpu_s'] * 1e6 / n:.2f}" for r in rs)
            print(f"  {name:6} {roots[name]}: {args.stage} {least[name]:6.2f} us/event CPU "
                  f"(least; subprocesses {each})")
        if "before" in least:
            print(f"  after / before: {least['after'] / least['before']:.3f} (least)")
        return 0
    print(f"{n} events, model {args.model}, {args.rounds} subprocesses x {args.repeat} runs "
          f"each, CPU us/event (time.process_time; least per subprocess, median of those):")
    medians = {}
    for name, rs in runs.items():
        flow = statistics.median(r["flow_cpu_s"] for r in rs) * 1e6 / n
        ref = statistics.median(r["reference_cpu_s"] for r in rs) * 1e6 / n
        least = min(r["flow_cpu_s"] for r in rs) * 1e6 / n
        least_ref = min(r["reference_cpu_s"] for r in rs) * 1e6 / n
        medians[name] = (flow, least)
        each = ", ".join(f"{r['flow_cpu_s'] * 1e6 / n:.1f}" for r in rs)
        print(f"  {name:6} {roots[name]}: dataflow {flow:6.1f} (least {least:6.1f})  "
              f"reference {ref:5.1f} (least {least_ref:5.1f})  ratio {flow / ref:.2f}x "
              f"(least {least / least_ref:.2f}x); dataflow runs {each}")
    if "before" in medians:
        (b, bl), (a, al) = medians["before"], medians["after"]
        print(f"  after / before: {a / b:.3f} (medians), {al / bl:.3f} (least)")
    status = 0
    keys = [k for k in runs["after"][0] if k.endswith("digest") or k in
            ("predictions", "dead_letters", "windows")]
    for k in keys:
        seen = {name: {r[k] for r in rs} for name, rs in runs.items()}
        values = set().union(*seen.values())
        same = len(values) == 1
        status |= not same
        print(f"  {k:32} {'identical' if same else 'DIFFERENT'}: "
              f"{', '.join(f'{name} {sorted(map(str, v))}' for name, v in seen.items())}")
    if args.profile:
        measure(ROOT, n, args.model, args.profile)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
