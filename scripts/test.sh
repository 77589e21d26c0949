#!/usr/bin/env bash
# The test suite (unit, doctests, dataflow tests, embedded-Kafka integration tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# tests/test_observability.py runs a real Prometheus: Debian's package, installed once (as root).
.venv/bin/python -m harness.prometheus --ensure-installed
# tests/test_backtest.py renders the HTML report in headless Chromium: Debian's package, likewise.
.venv/bin/python -m harness.chromium --ensure-installed
exec .venv/bin/python -m pytest -q "$@"
