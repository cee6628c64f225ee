"""bench/gpu_check.sh --dry-run: the GPU session's one command, rehearsed on CPU at tiny sizes (ours only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_dry_run_writes_every_bench_and_the_summary(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), WHEELS=str(tmp_path / "no_wheels"), PEERS=str(tmp_path / "peers"),
               NO_PEERS="1", PYTHON=sys.executable)
    p = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = tmp_path / "out"
    names = {"matmul_peak", "topk_vs_sparsify_400k", "train_vs_saelens_400k", "topk_ours_f32select_400k",
             "topk_vs_sparsify_4m", "train_vs_saelens_4m"}
    assert {f.stem for f in out.glob("*.json")} == names
    assert (out / "gpu_check.log").read_text().count("=== ") >= 2 * len(names)
    for name in names - {"matmul_peak"}:
        r = json.loads((out / f"{name}.json").read_text())
        assert r["device"].startswith("CPU") and r["params"]["device"] == "cpu"
        assert r["ours"]["tokens_per_s"] > 0 and 0 < r["ours"]["fvu"] < 1.5
        assert "sparsify" not in r and "saelens" not in r  # NO_PEERS: ours only
    assert json.loads((out / "topk_ours_f32select_400k.json").read_text())["ours"]["select_dtype"] == "float32"
    mm = json.loads((out / "matmul_peak.json").read_text())
    assert all(row["ok"] for row in mm["rows"]) and len(mm["rows"]) == 10
    assert "peer sparsify does not import" in p.stdout + p.stderr
    assert "topk_vs_sparsify_4m" in p.stdout.split("=== summary")[1]
