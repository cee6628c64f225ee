#!/usr/bin/env bash
# Create bench/.venv-saelens: a separate venv holding SAELens for bench_train_vs_saelens.py.
# SAELens is never a runtime dependency of the project; it lives only here.
# torch goes in first (pinned to the project's version) so sae-lens does not pull a CUDA build.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-saelens"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q "torch==2.13.0"
"$venv/bin/pip" install -q -r "$here/requirements-bench.txt"
echo "bench venv ready: $venv"
