"""`backend.evaluation.compare`: Hungarian matching of decoders, the comparison table, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from backend.cli import main
from backend.common.layout import dict_dir
from backend.dictionaries import ReluL1SAE, load_dictionary, save_dictionary
from backend.dictionaries.saelens_io import saelens_cfg
from backend.evaluation.compare import (
    compare_dictionaries,
    load_matches,
    match_decoders,
    matched_fraction,
)
from tests.fake_run import make_synthetic_run


def _unit(n, d, seed):
    W = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return W / W.norm(dim=1, keepdim=True)


def test_matching_recovers_a_known_permutation():
    W = _unit(64, 16, 0)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    m = match_decoders(W, W[perm])  # feature_b j is feature_a perm[j]
    assert len(m) == 64
    assert np.allclose(m["cos"], 1.0, atol=1e-5)
    assert (perm.numpy()[m["feature_b"].to_numpy()] == m["feature_a"].to_numpy()).all()
    assert matched_fraction(m) == 1.0


def test_matching_is_one_to_one_where_greedy_is_not():
    # two features of A are both closest to b0; the assignment must give one of them b1
    A = torch.tensor([[1.0, 0.0], [0.9, 0.436]])
    B = torch.tensor([[0.95, 0.312], [0.0, 1.0]])
    m = match_decoders(A, B)
    assert sorted(m["feature_b"].tolist()) == [0, 1]
    assert sorted(zip(m["feature_a"].tolist(), m["feature_b"].tolist())) == [(0, 0), (1, 1)]


def test_random_decoders_rarely_match():
    m = match_decoders(_unit(128, 32, 2), _unit(128, 32, 3))
    assert matched_fraction(m) < 0.05  # random 32-d directions: cosines ~ N(0, 1/32)


def _save_relu(run, name, W_dec):
    d = ReluL1SAE({"d_in": W_dec.shape[1], "d_sae": W_dec.shape[0]})
    with torch.no_grad():
        d.W_dec.copy_(W_dec)
        d.W_enc.copy_(W_dec.T)
    save_dictionary(d, dict_dir(run, name), saelens_cfg(d, hook="blocks.1.hook_resid_post", model="synthetic"))
    (dict_dir(run, name) / "metrics.json").write_text(json.dumps({"l0": 3.0, "explained_variance": 0.9,
                                                                  "dead_fraction": 0.0, "ce_loss_score": None}))


@pytest.fixture()
def run_with_three(tmp_path):
    run = make_synthetic_run(tmp_path, n_seqs=16, ctx_len=16, d_in=16)
    W = _unit(48, 16, 0)
    _save_relu(run, "a", W)
    _save_relu(run, "a-permuted", W[torch.randperm(48, generator=torch.Generator().manual_seed(5))])
    _save_relu(run, "random", _unit(48, 16, 9))
    return run


def test_compare_writes_summary_and_pairs(run_with_three):
    run = run_with_three
    s = compare_dictionaries(run, "a,a-permuted,random", time_tokens=256, progress=False)
    pairs = {(p["a"], p["b"]): p for p in s["pairs"]}
    assert pairs[("a", "a-permuted")]["frac_above"] == 1.0
    assert pairs[("a", "random")]["frac_above"] < 0.2
    rows = {r["dictionary"]: r for r in s["dictionaries"]}
    assert rows["a"]["encode_flops_per_token"] == load_dictionary(dict_dir(run, "a")).flops_per_token()["encode"]
    assert rows["a"]["encode_us_per_token"] > 0
    assert rows["a"]["explained_variance"] == 0.9
    assert json.loads((run / "comparisons" / "summary.json").read_text())["pairs"] == s["pairs"]
    # the stored matching reads back in either orientation
    ab, ba = load_matches(run, "a", "a-permuted"), load_matches(run, "a-permuted", "a")
    assert len(ab) == 48 and set(zip(ab.feature_a, ab.feature_b)) == set(zip(ba.feature_b, ba.feature_a))


def test_compare_cli(run_with_three, capsys):
    assert main(["compare", "--run", str(run_with_three), "--dicts", "a,random", "--time-tokens", "128"]) == 0
    out = capsys.readouterr().out
    assert "frac_cos>0.7" in out and "encode_us_per_token" in out


@pytest.mark.parametrize("dicts, msg", [("a,nope", "no dictionary 'nope'"), ("a", "at least two"), ("a,a", "at least two")])
def test_compare_cli_errors(run_with_three, capsys, dicts, msg):
    assert main(["compare", "--run", str(run_with_three), "--dicts", dicts]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and err.count("\n") == 1
