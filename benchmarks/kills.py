"""Predictions after SIGKILLs: duplicates and missing events per delivery mode.

Run from the repository root (a plain script, not a test; pytest never collects it)::

    .venv/bin/python benchmarks/kills.py [--events 20000] [--kills 5] [--seed 7]
                                         [--snapshot 1] [--modes at_least_once,exactly_once]

For each mode it runs :func:`tests.test_delivery.kill_and_count` on a fresh set of topics of one
:class:`~harness.kafka.EmbeddedKafka` broker (events, labels and predictions with 3 partitions):
a backlog of ``--events`` events and their labels, the real fraud dataflow
(``python -m bytewax.run dataflows.fraud:flow -r DIR -s SNAPSHOT -b 0``), SIGKILLed ``--kills``
times after a random number of predictions (the first time once its sink has a snapshot),
restarted on the same recovery directory, the last run to the end of the backlog. It prints one
line per mode: events without a prediction, duplicates (in all and per kill), labels learned
(from the final snapshot of the model step), and the recovery directory's size after each run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.kafka import EmbeddedKafka  # noqa: E402
from tests.test_delivery import kill_and_count  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--snapshot", type=int, default=1, help="bytewax.run -s, seconds")
    ap.add_argument("--modes", default="at_least_once,exactly_once")
    args = ap.parse_args(argv)
    with EmbeddedKafka() as kafka, tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            suffix = uuid.uuid4().hex[:8]
            names = {n: f"{n}-kills-{suffix}" for n in ("events", "labels", "predictions",
                                                        "deadletter")}
            kafka.create_topics([names["events"], names["labels"], names["predictions"]],
                                partitions=3)
            kafka.create_topics([names["deadletter"]], partitions=1)
            work = Path(tmp) / mode
            work.mkdir()
            r = kill_and_count(kafka, names, work, delivery=mode, kills=args.kills,
                               n_events=args.events, seed=args.seed, snapshot_s=args.snapshot)
            mb = ", ".join(f"{b / 1e6:.1f}" for b in r.recovery_bytes)
            print(f"{mode}: -s {args.snapshot}, {r.events} events, {args.kills} kills at "
                  f"{r.on_topic_at_kill} predictions on the topic; missing {r.missing}; "
                  f"duplicates {r.duplicates} ({100 * r.duplicates / r.events:.1f} %), per kill "
                  f"{r.duplicates_per_kill}; labels learned {r.labels_learned_state} of "
                  f"{r.labels}; dead letters {len(r.dead_letters)}; wrong partition "
                  f"{r.wrong_partition}; recovery MB after each run [{mb}]; {r.seconds:.0f} s",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
