"""Synthetic amortisation-gap benchmark: the MCC metric, recovery of planted codes, the report logic, the CLI."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from backend.synth.grid import SynthConfig
from backend.synth.methods import run_method
from backend.synth.plots import gap_grid, synth_figures
from backend.synth.problems import RESULT_COLUMNS, cs_bound, make_problem, mcc
from backend.synth.report import compare, summary_markdown
from tests.test_cli_errors import run_cli


def test_mcc_of_a_permutation_with_sign_flips_and_scales_is_one():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((300, 8)) * (rng.random((300, 8)) < 0.3)  # sparse codes [S, 8]
    perm = rng.permutation(8)
    signs = np.array([1, -1, 2.5, -0.3, 1, 1, -7, 0.1])
    est = z[:, perm] * signs + 3.0  # permuted, flipped, rescaled, shifted
    assert mcc(z, est) == pytest.approx(1.0, abs=1e-9)
    # extra estimated columns are ignored, a missing one counts as 0
    assert mcc(z, np.concatenate([est, rng.standard_normal((300, 4))], 1)) == pytest.approx(1.0, abs=1e-9)
    est[:, 0] = 5.0  # a constant (dead) latent correlates with nothing
    assert mcc(z, est) == pytest.approx(7 / 8, abs=1e-9)


def test_mcc_of_independent_noise_is_low():
    p = make_problem(16, 8, 3, samples=1024, seed=0)
    noise = torch.randn(512, 16, generator=torch.Generator().manual_seed(1))
    assert mcc(p.z_test, noise) < 0.15
    assert mcc(p.z_test, p.z_test) == pytest.approx(1.0)


def test_problem_has_exactly_k_sources_and_unit_atoms():
    p = make_problem(16, 8, 3, samples=64, noise=0.0, seed=3)
    assert ((p.z_train != 0).sum(1) == 3).all() and (p.z_train >= 0).all()
    assert torch.allclose(p.D.norm(dim=1), torch.ones(16))
    assert torch.allclose(p.x_train, p.z_train @ p.D, atol=1e-6)
    s = make_problem(16, 8, 3, samples=64, seed=3, signed=True)
    assert (s.z_train < 0).any()


def test_sparse_coding_recovers_planted_codes_where_it_must():
    # M=12 >= K ln(N/K) = 4.2: recoverable; with the true dictionary FISTA must find the codes
    p = make_problem(16, 12, 2, samples=1024, noise=0.001, seed=0)
    res = run_method("sc_fista", "known_dict", p, {})
    assert mcc(p.z_test, res.codes) > 0.95
    # learning the dictionary too (MOD + FISTA) gets close from every initialisation, exact from some
    found = []
    for init in (0, 1, 2):
        torch.manual_seed(init)
        res = run_method("sc_fista", "unknown", p, {})
        found.append((mcc(p.D.T, res.D.T), mcc(p.z_test, res.codes)))
    assert min(d for d, _ in found) > 0.93 and min(c for _, c in found) > 0.9
    assert max(c for _, c in found) > 0.99
    # far below the bound (M=3, K=6 > M) the same inference cannot
    hard = make_problem(16, 3, 6, samples=1024, noise=0.001, seed=0)
    assert mcc(hard.z_test, run_method("sc_fista", "known_dict", hard, {}).codes) < 0.8


def fake_results() -> pd.DataFrame:
    rows = []
    for m in (4, 8, 12):
        for k in (1, 3):
            for seed in (0, 1):
                for method, mc in (("sae", 0.6), ("sc_fista", 0.9), ("mlp", 0.605), ("ito_gp", 0.5)):
                    rows.append(dict(setting="unknown", n=16, m=m, k=k, seed=seed, method=method,
                                     mcc_latent=mc + 0.01 * seed, mcc_dict=0.8, nmse=0.1, l0=3.0, train_flops=10 ** 6,
                                     infer_flops_per_sample=100, seconds=0.1))
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def test_answers_follow_the_numbers():
    df = fake_results()
    assert compare(df, "sc_fista", "unknown").verdict == "beats"
    assert compare(df, "mlp", "unknown").verdict == "matches"
    assert compare(df, "ito_gp", "unknown").verdict == "loses to"
    c = compare(df, "sc_fista", "unknown")
    # recoverable cells only: (4,3) has 4 < 3 ln(16/3) = 5.02
    assert c.cells == 5 and c.mean_diff == pytest.approx(0.3)
    text = summary_markdown(df, SynthConfig(ms=[4, 8, 12], ks=[1, 3], seeds=[0, 1]))
    assert "`sc_fista` beats the SAE" in text and "`ito_gp` loses to the SAE" in text
    assert "0.6" in text and "+0.30" in text


def test_figures_are_pure_and_draw_the_bound():
    df = fake_results()
    figs = synth_figures(df)
    assert set(figs) == {"mcc_vs_flops", "mcc_gap_unknown"}
    heat = figs["mcc_gap_unknown"]
    names = [t.name for t in heat.data]
    assert names == ["sc_fista", "mlp", "ito_gp", "M = K ln(N/K)"]
    assert [t.visible for t in heat.data] == [True, False, False, True]  # sc_fista shown first
    line = heat.data[-1]
    assert line.y[0] == pytest.approx(line.x[0] * math.log(16 / line.x[0]))
    g = gap_grid(df, "sc_fista")
    assert list(g.index) == [4, 8, 12] and list(g.columns) == [1, 3] and np.allclose(g.to_numpy(), 0.3)
    assert cs_bound(16, 3) == pytest.approx(3 * math.log(16 / 3))


def test_cli_quick_writes_results(tmp_path):
    out = tmp_path / "synth"
    res = run_cli("synth", "--quick", "--out", out)
    assert res.returncode == 0, res.stderr
    df = pd.read_parquet(out / "results.parquet")
    assert list(df.columns) == RESULT_COLUMNS
    assert set(df.setting) == {"known_codes", "known_dict", "unknown"}
    assert df.mcc_latent.between(0, 1).all() and (df.train_flops >= 0).all() and (df.infer_flops_per_sample > 0).all()
    assert (out / "summary.md").read_text().startswith("# Synthetic amortisation-gap benchmark")
    html = (out / "figures" / "mcc_gap_unknown.html").read_text()
    assert 'src="plotly.min.js"' in html and (out / "figures" / "plotly.min.js").stat().st_size > 1_000_000


@pytest.mark.parametrize("args,needle", [
    (["--m", "4,x"], "--m must be comma-separated integers"),
    (["--k", "40"], "K must be between 1 and N=16"),
    (["--methods", "sae,nope"], "unknown method(s) nope"),
    (["--grid-settings", "both"], "unknown setting 'both'"),
    (["--ref", "8"], "--ref must be M,K"),
])
def test_cli_bad_args_one_line_error(tmp_path, capsys, args, needle):
    from backend.cli import main

    assert main(["synth", *args, "--out", str(tmp_path / "s")]) == 2  # in-process: the subprocess path is tested above
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "s").exists()
