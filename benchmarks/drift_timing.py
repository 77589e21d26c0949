"""When does ADWIN on the served error detect the generator's drift? (plain River loop)

    .venv/bin/python benchmarks/drift_timing.py [--events 60000] [--seeds 1 7 3]

Serves the fraud workload with the plain in-memory loop (``undertow.reference``), feeds the
served absolute errors in label-time order to :class:`undertow.drift.ConceptDrift`, and prints
each ADWIN detection's direction and its label time relative to the drift point, in minutes.
The drift alert relies on ``up`` detections coming only after the drift.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.workload import WorkloadConfig, generate  # noqa: E402
from undertow.drift import ConceptDrift  # noqa: E402
from undertow.models import make_model  # noqa: E402
from undertow.reference import run_reference  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 7, 3])
    args = ap.parse_args()
    for seed in args.seeds:
        w = generate(WorkloadConfig(seed=seed, n_events=args.events))
        served = run_reference(w.events, w.labels, make_model("logreg")).scores
        cd = ConceptDrift()
        for lb in sorted(w.labels, key=lambda x: x["ts"]):
            cd.update(abs(float(lb["is_fraud"]) - served[lb["event_id"]]), lb["ts"])
        found = [f"{d} {(ts - w.drift_ts) / 60000:+.1f} min" for ts, det, d in cd.history
                 if det == "adwin"]
        print(f"seed {seed}: " + ", ".join(found))


if __name__ == "__main__":
    main()
