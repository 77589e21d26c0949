#!/usr/bin/env bash
# The test suite (unit, doctests, dataflow tests, embedded-Kafka integration tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q "$@"
