#!/usr/bin/env bash
# One command on a fresh machine: venv + dependencies, the default corpus and demo store if
# missing (every dictionary kind: about 30-40 minutes on 2 CPU cores, once), then the explorer app on 127.0.0.1:8501.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m backend demo
if [ -f explorer/app.py ]; then
  exec streamlit run explorer/app.py --server.address "${HOST:-127.0.0.1}" --server.port "${PORT:-8501}" \
    --server.headless true --browser.gatherUsageStats false
else
  echo "demo store built in data/demo; the explorer app is not in this checkout yet"
fi
