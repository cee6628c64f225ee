#!/usr/bin/env bash
# One command on a fresh machine: venv + dependencies, then the explorer app on 127.0.0.1:8501 at once, while the
# demo store builds in the background (default corpus, activation cache, then each dictionary kind, topk first, each
# with its labels; the Overview shows the progress, and each dictionary is browsable the moment it is analysed).
# The build logs to data/demo.build/build.log; a second ./run.sh attaches to the running build instead of starting
# another, and a killed build resumes where it stopped.
#   ./run.sh          the app, building the demo store if it is not complete
#   ./run.sh --demo   the app in demo mode: read-only, the guided tour first (also: the URL flag ?demo=1)
set -euo pipefail
cd "$(dirname "$0")"
DEMO_MODE=0
for arg in "$@"; do
  case "$arg" in
    --demo) DEMO_MODE=1 ;;
    *) echo "usage: ./run.sh [--demo]" >&2; exit 2 ;;
  esac
done
scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m backend demo --background
URL="http://${HOST:-127.0.0.1}:${PORT:-8501}"
if python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/_stcore/health', timeout=2)" "$URL" 2>/dev/null; then
  echo "the explorer is already being served at $URL (the build above runs on its own)"
  exit 0
fi
[ "$DEMO_MODE" = 1 ] && export FEATURE_EXPLORER_DEMO_MODE=1
echo "explorer: $URL"
exec streamlit run explorer/app.py --server.address "${HOST:-127.0.0.1}" --server.port "${PORT:-8501}" \
  --server.headless true --browser.gatherUsageStats false
