#!/usr/bin/env bash
# The test command: venv + dev dependencies, Chromium for the browser test, the default corpus,
# ruff and import-linter (architecture contracts in pyproject.toml), then the whole pytest suite (unit tests on a tiny random model, integration on the real one).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh dev
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
[ -f tests/browser_setup.sh ] && bash tests/browser_setup.sh
python -m backend.corpus.default_corpus
python -m backend tasks fetch   # the bigbench 0.0.1 sdist (pip) -> generated BIG-bench task files in data/tasks/
# architecture and style, checked by tools (pyproject.toml): stage layers, no cycles, no private imports
ruff check backend explorer tests bench
lint-imports
python -m pytest "$@"
