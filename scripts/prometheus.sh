#!/usr/bin/env bash
# Watch a running undertow dataflow (e.g. `bash scripts/demo.sh` in another terminal) with a real
# Prometheus: scrapes 127.0.0.1:3030 (and :3031, ... one port per process, see
# dashboards/prometheus.yml) every second and evaluates dashboards/alerts.yml.
#
#   bash scripts/prometheus.sh                         # serves on http://127.0.0.1:9090
#   bash scripts/prometheus.sh --port 0                # any free port
#   bash scripts/prometheus.sh --targets 127.0.0.1:3030,127.0.0.1:3031
#
# Installs Debian's prometheus package first if it is missing (needs root). Ctrl-C stops it;
# its data lives in a temporary directory that is removed then.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/python -m harness.prometheus --ensure-installed
repo="$(pwd)"
cat <<INFO
Grafana (not included): load the dashboards in dashboards/grafana/ either by
  * provisioning: start Grafana with
      GF_PATHS_PROVISIONING=$repo/dashboards/provisioning \\
      UNDERTOW_DASHBOARDS_DIR=$repo/dashboards/grafana  grafana-server ...
    (data source "undertow-prometheus" at http://127.0.0.1:9090, dashboards in folder "undertow"), or
  * import: Dashboards > New > Import, upload each dashboards/grafana/*.json and pick a
    Prometheus data source pointing at the URL printed below.
INFO
exec .venv/bin/python -m harness.prometheus --config dashboards/prometheus.yml "$@"
