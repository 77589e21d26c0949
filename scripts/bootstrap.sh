#!/usr/bin/env bash
# Create .venv with the pinned dependencies, once (again only when pyproject.toml changes).
# Needs only Python 3.11 on PATH (python3.11, or python3 if that is 3.11).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=""
for cand in "${PYTHON:-}" python3.11 python3; do
  if [ -n "$cand" ] && command -v "$cand" >/dev/null 2>&1 \
     && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    PY="$cand"; break
  fi
done
if [ -z "$PY" ]; then
  echo "undertow needs Python 3.11 (python3.11 or python3 on PATH, or set PYTHON=...)" >&2
  exit 1
fi
stamp=".venv/.undertow-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $PY" >&2
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing dependencies into .venv (pinned in pyproject.toml)" >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
  echo "$want" > "$stamp"
fi
