#!/usr/bin/env bash
# The demo: embedded Kafka, generated workload with delayed labels and a drift, the fraud
# dataflow under `python -m bytewax.run`, progress while it runs, a summary at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
