"""Every dictionary kind: shapes, FLOP formulas against hand counts, save/load, scale folding, the sparse
training gradients against dense autograd, and the whole pipeline (train -> metrics -> analyze -> feature page)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from backend.common.errors import UserError
from backend.dictionaries import KINDS, load_dictionary, save_dictionary
from backend.dictionaries.sae_ito import SaeItoDictionary
from backend.dictionaries.sparse_coding import SparseCodingDictionary

D_IN, D_SAE = 8, 24


def relu_base(seed=0, d_in=D_IN, d_sae=D_SAE):
    d = KINDS["relu-l1"]({"d_in": d_in, "d_sae": d_sae})
    d.init_weights_(b_dec=torch.randn(d_in, generator=torch.Generator().manual_seed(seed + 1)) * 0.1, enc_norm=0.5,
                    generator=torch.Generator().manual_seed(seed))
    return d


def make(kind: str, seed: int = 0, **cfg) -> torch.nn.Module:
    """A small initialised dictionary of each kind (biases perturbed, so they matter)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "sae-ito":
        base = relu_base(seed)
        d = SaeItoDictionary({"d_in": D_IN, "d_sae": D_SAE, "base_cfg": {**base.cfg, "kind": "relu-l1"},
                              "method": cfg.get("method", "gp"), "target_l0": cfg.get("target_l0", 3),
                              "pool": cfg.get("pool", 6), "n_iter": 10, "fista_l1": 0.01})
        d.base.load_state_dict(base.state_dict())
        return d.eval()
    d = KINDS[kind]({"d_in": D_IN, "d_sae": D_SAE, **cfg})
    d.init_weights_(b_dec=torch.randn(D_IN, generator=g) * 0.1, enc_norm=0.5, generator=g)
    with torch.no_grad():
        for name, p in d.named_parameters():
            if name.startswith("b_") and name != "b_dec":
                p.add_(0.05 * torch.randn(p.shape, generator=g))
            if name == "W_lat":
                p.normal_(0.0, 0.2, generator=g)
    return d.eval()


KIND_CASES = [
    ("topk", {"k": 3}),
    ("batchtopk", {"k": 3}),
    ("mlp", {"hidden": 5}),
    ("mlp", {"hidden": 5, "mlp_layers": 2, "k": 4}),
    ("sparse-coding", {"fista_l1": 0.01, "n_iter": 10, "pool": 6}),
    ("sparse-coding", {"fista_l1": 0.01, "n_iter": 10, "pool": 0, "k": 2}),
    ("sae-ito", {"method": "gp"}),
    ("sae-ito", {"method": "mp"}),
    ("sae-ito", {"method": "fista"}),
    ("sae-ito", {"method": "gp", "pool": 0}),
]
IDS = [f"{k}-{'-'.join(f'{a}{b}' for a, b in c.items())}" for k, c in KIND_CASES]


@pytest.mark.parametrize("kind,cfg", KIND_CASES, ids=IDS)
def test_shapes_round_trip_and_fold(kind, cfg, tmp_path):
    d = make(kind, **cfg)
    x = torch.randn(16, D_IN, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        f = d.encode(x)
        x_hat = d.decode(f)
    assert f.shape == (16, D_SAE) and x_hat.shape == (16, D_IN)
    assert (f >= 0).all() and (f > 0).any()
    assert torch.allclose(d.W_dec.norm(dim=1), torch.ones(D_SAE), atol=1e-5)
    assert torch.allclose(d(x), x_hat)
    fl = d.flops_per_token()
    assert set(fl) == {"encode", "decode"} and fl["encode"] > 0 and fl["decode"] > 0

    # save/load: same class, same cfg, same codes
    save_dictionary(d, tmp_path / "d")
    cfg_json = json.loads((tmp_path / "d" / "cfg.json").read_text())
    assert cfg_json["kind"] == kind
    if kind in ("mlp", "sparse-coding", "sae-ito"):
        assert cfg_json["architecture"] not in ("standard", "topk", "jumprelu", "gated")
    e = load_dictionary(tmp_path / "d")
    assert type(e) is type(d)
    with torch.no_grad():
        assert torch.allclose(e.encode(x), f, atol=1e-5)

    # a dictionary "trained" on s * x works on raw x after fold_scale_(s): codes and x_hat scale by 1/s
    s = 3.0
    with torch.no_grad():
        f_s = d.encode(s * x)
        d.fold_scale_(s)
        assert torch.allclose(d.encode(x), f_s / s, atol=1e-4)
        assert torch.allclose(d.decode(d.encode(x)), d.decode(f_s / s), atol=1e-4)


def test_batchtopk_saves_as_jumprelu_with_its_threshold(tmp_path):
    d = make("batchtopk", k=3)
    with torch.no_grad():
        d.threshold.fill_(0.2)
    save_dictionary(d, tmp_path / "b")
    cfg = json.loads((tmp_path / "b" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["k"] == 3
    # without our `kind`, the folder still loads as a plain SAELens JumpReLU with the same codes
    del cfg["kind"]
    (tmp_path / "b" / "cfg.json").write_text(json.dumps(cfg))
    j = load_dictionary(tmp_path / "b")
    x = torch.randn(8, D_IN)
    with torch.no_grad():
        assert torch.allclose(j.encode(x), d.encode(x), atol=1e-5)


def test_flops_hand_counts():
    d, n = D_IN, D_SAE  # 8, 24
    # topk: encode 2*8*24 (matmul) + 8 (subtract b_dec) + 2*24 (bias, selection) = 440; decode 2*3*8 + 8 = 56
    assert make("topk", k=3).flops_per_token() == {"encode": 440, "decode": 56}
    # batchtopk: encode adds the threshold comparison: 440 + 24 = 464; decode dense 2*24*8 + 8 = 392
    assert make("batchtopk", k=3).flops_per_token() == {"encode": 464, "decode": 392}
    # mlp hidden 5: 8 + (2*8*5 + 2*5) + 5 (branch scale) + 2*8*24 + 2*5*24 + 2*24 = 8 + 90 + 5 + 384 + 240 + 48 = 775
    assert make("mlp", hidden=5).flops_per_token() == {"encode": 775, "decode": 392}
    # two layers + top-4: + (2*5*5 + 2*5) = 60 -> 835; decode 2*4*8 + 8 = 72
    assert make("mlp", hidden=5, mlp_layers=2, k=4).flops_per_token() == {"encode": 835, "decode": 72}
    # sae-ito gp, pool 6, k 3: 8 + 2*24*8 + 24 + 2*36*8 + 2*6*8 + 3*(2*36 + 12*6 + 1) = 8 + 384 + 24 + 576 + 96 + 435
    assert make("sae-ito", method="gp").flops_per_token() == {"encode": 1523, "decode": 2 * 3 * 8 + 8}
    # sae-ito mp, pool 6, k 3: the same set-up, steps 3 * 4 * 6 = 72
    assert make("sae-ito", method="mp").flops_per_token()["encode"] == 8 + 384 + 24 + 576 + 96 + 72
    # sparse-coding, pool 6, 10 iterations: encoder 8 + 384 + 48 = 440, then pooled FISTA with the pool picked
    # from the encoder (24): 24 + 576 + 96 + power 6*(72+18) + 72 + 12 = 624 + 6 (c*step) + 10*(72+48) = 1200 + top-k 24
    sc = make("sparse-coding", fista_l1=0.01, n_iter=10, pool=6).flops_per_token()
    assert sc == {"encode": 440 + 24 + 576 + 96 + 624 + 6 + 1200 + 24, "decode": 392}
    assert n == 24 and d == 8


def dense_topk_loss(d, x, k, dead, aux_coeff, k_aux):
    """Reference TopK + AuxK loss with dense tensors and plain autograd."""
    pre = (x - d.b_dec) @ d.W_enc + d.b_enc
    v, i = pre.topk(k, dim=1)
    f = torch.zeros_like(pre).scatter(1, i, v.relu())
    x_hat = f @ d.W_dec + d.b_dec
    e = (x - x_hat).detach()
    va, ia = pre.masked_fill(~dead, -float("inf")).topk(k_aux, dim=1)
    e_aux = torch.zeros_like(pre).scatter(1, ia, va.relu()) @ d.W_dec
    return (x - x_hat).pow(2).sum() / len(x) + aux_coeff * (e_aux - e).pow(2).sum() / e.pow(2).sum()


def test_topk_sparse_gradients_match_dense_autograd():
    d = make("topk", k=3)
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1))
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[::3] = True
    stats, fired = d.loss_and_backward(x, {"dead": dead, "aux_coeff": 0.5, "k_aux": 4})
    ours = {n: p.grad.clone() for n, p in d.named_parameters()}
    d.zero_grad(set_to_none=True)
    dense_topk_loss(d, x, 3, dead, 0.5, 4).backward()
    for n, p in d.named_parameters():
        assert torch.allclose(ours[n], p.grad, atol=1e-5), n
    assert stats["l0"] <= 3 and int(fired.sum()) == round(stats["l0"] * 32) and stats["auxk"] > 0


@pytest.mark.parametrize("k,b_shift", [(0, -2.0), (0, 0.0), (4, 0.0)])  # L1 sparse path, L1 dense path, top-k
def test_mlp_gradients_match_dense_autograd(k, b_shift):
    d = make("mlp", hidden=5, k=k)
    with torch.no_grad():
        d.b_enc.add_(b_shift)
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(2))
    d.loss_and_backward(x, {"l1": 0.1})
    ours = {n: p.grad.clone() for n, p in d.named_parameters()}
    d.zero_grad(set_to_none=True)
    f = d.encode(x)
    loss = (x - d.decode(f)).pow(2).sum() / 32 + (0.0 if k else 0.1) * (f * d.W_dec.norm(dim=1)).sum() / 32
    loss.backward()
    for n, p in d.named_parameters():
        assert torch.allclose(ours[n], p.grad, atol=1e-5), n


def test_sparse_coding_codes_beat_its_encoder_and_ito_beats_its_base():
    # planted non-negative 2-sparse data over a random unit dictionary that the kinds are given
    g = torch.Generator().manual_seed(3)
    W = torch.randn(D_SAE, D_IN, generator=g)
    W /= W.norm(dim=1, keepdim=True)
    z = torch.zeros(64, D_SAE)
    for r in range(64):
        z[r, torch.randperm(D_SAE, generator=g)[:2]] = 1 + torch.rand(2, generator=g)
    x = z @ W
    sc = SparseCodingDictionary({"d_in": D_IN, "d_sae": D_SAE, "fista_l1": 0.01, "n_iter": 60, "pool": 0})
    base = relu_base()
    with torch.no_grad():
        for m in (sc, base):
            m.W_dec.copy_(W)
            m.W_enc.copy_(0.5 * W.T)
            m.b_dec.zero_()
            m.b_enc.zero_()
        err = lambda d: float((x - d.decode(d.encode(x))).pow(2).sum())  # noqa: E731
        f0 = sc.W_enc.T  # the encoder alone: relu((x - b) W_enc + b_enc)
        enc_err = float((x - torch.relu(x @ f0.T) @ W).pow(2).sum())
        assert err(sc) < 0.05 * enc_err
        ito = SaeItoDictionary({"d_in": D_IN, "d_sae": D_SAE, "base_cfg": {**base.cfg, "kind": "relu-l1"},
                                "method": "gp", "target_l0": 2, "pool": 0})
        ito.base.load_state_dict(base.state_dict())
        assert err(ito) < 0.5 * err(base)
        assert ((ito.encode(x) > 0).sum(1) <= 2).all()


# --- the pipeline on the tiny run ---------------------------------------------------------------
@pytest.fixture(scope="module")
def kinds_run(tiny_run, tmp_path_factory):
    """A private copy of the tiny run (no dictionaries) with a trained relu-l1 base for sae-ito."""
    from backend.pipeline import build_dictionary
    from backend.training.trainer import TrainConfig

    run = tmp_path_factory.mktemp("kinds") / "tiny"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("dictionaries"))
    build_dictionary(run, TrainConfig(kind="relu-l1", d_sae=64, epochs=4, batch_size=256), "base", device="cpu",
                     compute_ce=False, progress=False)
    return run


PIPELINE = [
    ("topk", {"k": 8}),
    ("batchtopk", {"k": 8}),
    ("mlp", {"hidden": 16}),
    ("sparse-coding", {"pool": 16, "n_iter": 10}),
    ("sae-ito", {"method": "gp"}),
    ("sae-ito", {"method": "fista", "target_l0": 4}),
]


@pytest.mark.slow  # 5-20 s each on 2 shared cores: a real (tiny) model for CE and the analysis
@pytest.mark.parametrize("kind,opts", PIPELINE, ids=[f"{k}-{o.get('method', '')}" for k, o in PIPELINE])
def test_train_metrics_analyze_dashboard(kinds_run, kind, opts):
    from backend.analysis.analyze import analyze
    from backend.pipeline import build_dictionary
    from backend.store import query as store
    from backend.training.ito import ItoConfig
    from backend.training.trainer import TrainConfig

    name = f"{kind}-{opts.get('method', 'x')}"
    if kind == "sae-ito":
        build_dictionary(kinds_run, ItoConfig(base="base", **opts), name, device="cpu", ce_seqs=4)
    else:
        cfg = TrainConfig(kind=kind, d_sae=64, epochs=2, batch_size=256, checkpoint_every_s=0, **opts)
        build_dictionary(kinds_run, cfg, name, device="cpu", ce_seqs=4, progress=False)
    m = json.loads((kinds_run / "dictionaries" / name / "metrics.json").read_text())
    assert m["kind"] == kind and 0 < m["l0"] and m["explained_variance"] > -1
    assert "ce_loss_score" in m and m["flops_per_token"]["encode"] > 0
    cfg_json = json.loads((kinds_run / "dictionaries" / name / "cfg.json").read_text())
    assert cfg_json["train_flops"] >= 0
    if kind == "sae-ito":
        base_l0 = json.loads((kinds_run / "dictionaries" / "base" / "metrics.json").read_text())["l0"]
        target = opts.get("target_l0") or round(base_l0)
        assert cfg_json["target_l0"] == target and m["l0"] <= target + 1e-9
    analyze(kinds_run, name, device="cpu", progress=False)
    feat = store.random_feature(str(kinds_run), name, seed=0)
    page = store.feature_dashboard(str(kinds_run), name, feat)
    assert page["feature"] == feat and page["n_fires"] > 0 and page["contexts"]["top"]
    assert page["contexts"]["top"][0]["value"] > 0


def test_ito_and_kind_errors_are_one_line_user_errors(kinds_run):
    from backend.pipeline import build_dictionary
    from backend.training.ito import ItoConfig
    from backend.training.trainer import TrainConfig

    with pytest.raises(UserError, match="no dictionary 'nope'"):
        build_dictionary(kinds_run, ItoConfig(base="nope"), "x", device="cpu", compute_ce=False)
    with pytest.raises(UserError, match="method must be one of"):
        ItoConfig(method="omp")
    with pytest.raises(UserError, match="--base"):
        TrainConfig(kind="sae-ito")
    with pytest.raises(UserError, match="resample_dead_every works for"):
        TrainConfig(kind="mlp", resample_dead_every=10)
    with pytest.raises(UserError, match="k must be"):
        TrainConfig(kind="topk", k=0)
    assert TrainConfig(kind="sparse-coding").epochs == 4.0 and TrainConfig().epochs == 12.0


@pytest.mark.slow
def test_cli_builds_sae_ito_and_rejects_bad_options(kinds_run, capsys):
    from backend.cli import main

    assert main(["train", "--run", str(kinds_run), "--kind", "sae-ito"]) == 2
    assert "needs --base" in capsys.readouterr().err
    assert main(["train", "--run", str(kinds_run), "--kind", "topk", "--base", "base"]) == 2
    assert "are for --kind sae-ito" in capsys.readouterr().err
    assert main(["train", "--run", str(kinds_run), "--kind", "sae-ito", "--base", "base", "--method", "mp",
                 "--target-l0", "3", "--pool", "8", "--no-ce"]) == 0
    cfg = json.loads((kinds_run / "dictionaries" / "sae-ito-mp" / "cfg.json").read_text())
    assert (cfg["method"], cfg["target_l0"], cfg["pool"], cfg["base"]) == ("mp", 3, 8, "base")
    assert main(["train", "--run", str(kinds_run), "--kind", "sae-ito", "--base", "base", "--method", "mp"]) == 2
    assert "already exists" in capsys.readouterr().err
