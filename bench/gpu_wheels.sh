#!/usr/bin/env bash
# Run HERE (a machine that reaches PyPI), before a GPU session's one call: download into .whl/ (git-ignored) the
# wheels that bench/gpu_check.sh installs on the device, which cannot download anything. The call names ".whl"
# in its `carry`; the wheels and the working tree travel together under the device tool's 64 MiB.
#
#   bash bench/gpu_wheels.sh            # the peers: EleutherAI sparsify and SAELens, ~44 MiB (measured 2026-12-05)
#   bash bench/gpu_wheels.sh --duckdb   # also duckdb 2.0.0 (23 MiB): with the peers that is ~71 MiB, OVER the limit;
#                                       # no step of gpu_check.sh needs it (the demo cannot travel, see gpu_check.sh)
#   PYVER=3.11 DEST=/tmp/w bash bench/gpu_wheels.sh   # the same set for another python (a local rehearsal)
#
# What goes: the distributions the two bench workers import (measured in bench/.venv-sparsify and
# bench/.venv-saelens: sys.modules after the workers' imports, mapped to distributions) that the device image
# lacks (its list: the device README's KINDS.md), at the versions those venvs hold. huggingface-hub 2.x travels
# with transformers, tokenizers and datasets of the same venvs rather than mixing with the image's older
# transformers and hub. torch, numpy, pandas, pyarrow, scipy and the rest stay the image's. Sizes (cp312):
# common 18.6 MiB (transformers 13.1), sparsify 0.1 MiB, SAELens 25.1 MiB (wandb 19.4: sae_lens imports it
# at the top of its trainer even with logging off), duckdb 23.2 MiB.
# The download line is the device README's (--no-deps: every needed distribution is named below).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYVER="${PYVER:-3.12}"
DEST="${DEST:-.whl}"

COMMON="huggingface-hub==2.4.0 httpx2==2.17.0 httpcore2==2.17.0 transformers==5.25.0 tokenizers==0.23.3
 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 simple-parsing==0.1.9 docstring-parser==0.18.0
 truststore==0.10.5"
SPARSIFY="eai-sparsify==1.3.3 schedulefree==1.4.1 natsort==8.4.0"
SAELENS="sae-lens==6.54.12 transformer-lens==3.9.0 better-abc==0.0.3 wandb==0.31.0 pydantic==2.14.4
 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 platformdirs==4.14.9 sniffio==1.3.1
 protobuf==7.36.2 googleapis-common-protos==1.76.0 opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2
 opentelemetry-proto==1.45.2 opentelemetry-semantic-conventions==0.66b2 opentelemetry-exporter-http-transport==0.66b2
 opentelemetry-exporter-otlp-common==0.66b2 opentelemetry-exporter-otlp-proto-common==1.45.2
 opentelemetry-exporter-otlp-proto-http==1.45.2"
WANT="$COMMON $SPARSIFY $SAELENS"
[ "${1:-}" = "--duckdb" ] && WANT="$WANT duckdb==2.0.0"

mkdir -p "$DEST"
grep -qx '.whl/' .gitignore || echo "warning: .whl/ is not in .gitignore: the wheels could be committed" >&2
# shellcheck disable=SC2086  # the lists are meant to split
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64 \
  -d "$DEST" $WANT 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

wheels=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
limit=$((64 * 1024 * 1024))
echo "$(ls "$DEST"/*.whl | wc -l) wheels in $DEST: $((wheels / 1048576)) MiB; tracked files $((tree / 1048576)) MiB;" \
     "together $(((wheels + tree) / 1048576)) of 64 MiB"
if ((wheels + tree > limit)); then
  echo "error: over the device tool's 64 MiB: leave --duckdb out (or remove the largest wheels)" >&2
  exit 1
fi
