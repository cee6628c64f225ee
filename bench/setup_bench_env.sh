#!/usr/bin/env bash
# Create a separate venv holding a peer library for a comparison benchmark:
#   bench/setup_bench_env.sh            -> bench/.venv-saelens  (SAELens, for bench_train_vs_saelens.py)
#   bench/setup_bench_env.sh sparsify   -> bench/.venv-sparsify (EleutherAI sparsify, for bench_topk_vs_sparsify.py)
# Peers are never runtime dependencies of the project; they live only here.
# torch goes in first (pinned to the project's version) so the peer does not pull a CUDA build.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
case "${1:-saelens}" in
  saelens) venv="$here/.venv-saelens"; reqs="$here/requirements-bench.txt" ;;
  sparsify) venv="$here/.venv-sparsify"; reqs="$here/requirements-bench-sparsify.txt" ;;
  *) echo "error: unknown bench env '$1' (saelens | sparsify)" >&2; exit 2 ;;
esac
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q "torch==2.13.0"
"$venv/bin/pip" install -q -r "$reqs"
echo "bench venv ready: $venv"
