"""The sparse training primitives and the TopK/BatchTopK hand-written gradients, against dense references.

The fast paths change how the numbers are computed (sparse products, a radix sort, a bfloat16 matmul that only
chooses the active latents), so each is checked against the plain implementation: dense products and autograd
through the same choice of latents.
"""

from __future__ import annotations

import pytest
import torch

import backend.dictionaries.topk as topk_mod
from backend.dictionaries import KINDS
from backend.dictionaries.sparse_ops import (
    Pairs,
    col_scatter,
    fast_select_dtype,
    pair_dots,
    select_preacts,
    sparse_decode,
    stable_order,
)

G = torch.Generator().manual_seed(0)


@pytest.mark.parametrize("bound", [1, 7, 4608, 70_000, 2048 * 4608])
def test_stable_order_is_torchs_stable_argsort(bound):
    keys = torch.randint(0, bound, (5000,), generator=G)
    assert torch.equal(stable_order(keys, bound), torch.argsort(keys, stable=True))
    assert stable_order(keys[:0], bound).numel() == 0


def random_pairs(B=40, n=30, per_row=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(B, n, generator=g).topk(per_row, dim=1).indices  # [B, per_row] distinct columns
    return Pairs.from_topk(idx, n), idx


def test_pair_products_equal_dense_products():
    pairs, idx = random_pairs()
    B, n, d = 40, 30, 6
    A, M, D = torch.randn(B, d, generator=G), torch.randn(d, n, generator=G), torch.randn(B, d, generator=G)
    w = torch.randn(pairs.nnz, generator=G)
    Fw = torch.zeros(B, n).index_put_((pairs.rows, pairs.cols), w)  # the dense latent matrix
    dense = (A @ M)[pairs.rows, pairs.cols]
    assert torch.allclose(pair_dots(pairs, A, M), dense, atol=1e-5)
    assert torch.allclose(pair_dots(pairs, A, M, sampled=False, chunk=7), dense, atol=1e-5)  # the off-CPU route
    Wd = torch.randn(n, d, generator=G)
    assert torch.allclose(sparse_decode(pairs, w, Wd), Fw @ Wd, atol=1e-5)
    assert torch.allclose(col_scatter(pairs, w, D), Fw.T @ D, atol=1e-5)
    # unsorted input: build puts the pairs in CSR order and the products follow
    perm = torch.randperm(pairs.nnz, generator=G)
    p2 = Pairs.build(pairs.rows[perm], pairs.cols[perm], B, n)
    assert torch.equal(p2.rows * n + p2.cols, (pairs.rows * n + pairs.cols).sort().values)
    assert torch.equal(p2.col_counts, torch.bincount(idx.reshape(-1), minlength=n))


def test_select_dtype_choice():
    assert fast_select_dtype("cpu", "float32") == torch.float32
    assert fast_select_dtype("cpu", "bfloat16") == torch.bfloat16
    assert fast_select_dtype("cpu") in (torch.float32, torch.bfloat16)
    assert fast_select_dtype("meta") == torch.float32


def test_bfloat16_selection_agrees_with_float32_on_most_pairs():
    # demo-like proportions, scaled down: the bf16 matmul changes which latents win only at near-ties
    d = KINDS["topk"]({"d_in": 128, "d_sae": 1024, "k": 16})
    d.init_weights_(generator=torch.Generator().manual_seed(0))
    x = torch.randn(512, 128, generator=G) / 128 ** 0.5
    with torch.no_grad():
        h = x - d.b_dec
        a = select_preacts(h, d.W_enc, d.b_enc, torch.float32).topk(16, dim=1).indices
        b = select_preacts(h, d.W_enc, d.b_enc, torch.bfloat16).topk(16, dim=1).indices
    same = (a[:, :, None] == b[:, None, :]).any(2).float().mean()
    assert same > 0.95


# --- TopK / BatchTopK gradients against autograd through the same choice ------------------------------
D_IN, D_SAE, K, K_AUX = 8, 24, 3, 4


def make(kind, dtype):
    g = torch.Generator().manual_seed(3)
    d = KINDS[kind]({"d_in": D_IN, "d_sae": D_SAE, "k": K, "k_aux": K_AUX})
    d.init_weights_(b_dec=torch.randn(D_IN, generator=g) * 0.1, enc_norm=0.5, generator=g)
    with torch.no_grad():
        d.b_enc.add_(0.05 * torch.randn(D_SAE, generator=g))
    d.select_dtype = dtype
    return d


def reference_loss(d, x, sel, aux_sel, aux_coeff):
    """MSE + AuxK with dense tensors and autograd, latents chosen by the index tensors sel [B, k] and aux_sel."""
    pre = (x - d.b_dec) @ d.W_enc + d.b_enc  # float32, differentiable
    f = torch.zeros_like(pre).scatter(1, sel, pre.gather(1, sel).relu())
    x_hat = f @ d.W_dec + d.b_dec
    e = (x - x_hat).detach()
    loss = (x - x_hat).pow(2).sum() / len(x)
    if aux_sel is not None:
        fa = torch.zeros_like(pre).scatter(1, aux_sel, pre.gather(1, aux_sel).relu())
        loss = loss + aux_coeff * (fa @ d.W_dec - e).pow(2).sum() / e.pow(2).sum()
    return loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("aux_mode", ["dense", "pairs"])
def test_topk_gradients_match_autograd(monkeypatch, dtype, aux_mode):
    monkeypatch.setattr(topk_mod, "AUX_DENSE_MAX", 8 if aux_mode == "dense" else 0)
    d = make("topk", dtype)
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1))
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[::3] = True
    stats, fired = d.loss_and_backward(x, {"dead": dead, "aux_coeff": 0.5, "k_aux": K_AUX})
    ours = {n: p.grad.clone() for n, p in d.named_parameters()}
    d.zero_grad(set_to_none=True)
    with torch.no_grad():
        h = x - d.b_dec
        sel_pre = select_preacts(h, d.W_enc, d.b_enc, dtype)
        sel = sel_pre.topk(K, dim=1).indices
        aux_pre = (h @ d.W_enc + d.b_enc) if aux_mode == "dense" else sel_pre.float()  # dense: exact, on dead columns
        aux_sel = aux_pre.masked_fill(~dead, -torch.inf).topk(K_AUX, dim=1).indices
    loss = reference_loss(d, x, sel, aux_sel, 0.5)
    loss.backward()
    for n, p in d.named_parameters():
        assert torch.allclose(ours[n], p.grad, atol=1e-5), n
    assert stats["loss"] == pytest.approx(float(loss.detach()), rel=1e-5) and stats["auxk"] > 0
    assert int(fired.sum()) == round(stats["l0"] * 32) and stats["l0"] <= K


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batchtopk_gradients_and_threshold_match_autograd(dtype):
    d = make("batchtopk", dtype)
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(2))
    stats, fired = d.loss_and_backward(x, {})
    ours = {n: p.grad.clone() for n, p in d.named_parameters()}
    d.zero_grad(set_to_none=True)
    with torch.no_grad():
        sel_pre = select_preacts(x - d.b_dec, d.W_enc, d.b_enc, dtype).float()
        top = sel_pre.reshape(-1).topk(32 * K)
        flat = top.indices[top.values > 0]
        mask = torch.zeros(32 * D_SAE, dtype=torch.bool).index_fill_(0, flat, True).view(32, D_SAE)
    pre = (x - d.b_dec) @ d.W_enc + d.b_enc
    f = pre.relu() * mask
    ((x - f @ d.W_dec - d.b_dec).pow(2).sum() / 32).backward()
    for n, p in d.named_parameters():
        assert torch.allclose(ours[n], p.grad, atol=1e-5), n
    with torch.no_grad():
        theta = pre[mask & (pre > 0)].min()
    assert float(d.threshold[0]) == pytest.approx(float(theta), rel=1e-6)
    assert int(fired.sum()) == int((f > 0).sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_relu_l1_fast_path_matches_autograd_through_the_same_choice(dtype):
    torch.manual_seed(0)
    sae = KINDS["relu-l1"]({"d_in": 16, "d_sae": 48})
    sae.init_weights_(b_dec=torch.randn(16), enc_norm=1.0)
    with torch.no_grad():
        sae.b_enc.fill_(-0.3)
        sae.W_dec.mul_(torch.rand(48, 1) + 0.5)  # non-unit norms exercise the L1 norm gradient
    sae.select_dtype, sae._density = dtype, 0.0  # sparse path, choice in `dtype`
    x = torch.randn(64, 16)
    stats, fired = sae.loss_and_backward(x, {"l1": 0.7})
    ours = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad(set_to_none=True)
    with torch.no_grad():
        chosen = select_preacts(x - sae.b_dec, sae.W_enc, sae.b_enc, dtype) > 0
    f = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).relu() * chosen
    x_hat = f @ sae.W_dec + sae.b_dec
    loss = (x_hat - x).pow(2).sum() / 64 + 0.7 * (f * sae.W_dec.norm(dim=1)).sum() / 64
    loss.backward()
    for n, p in sae.named_parameters():
        assert torch.allclose(ours[n], p.grad, rtol=1e-4, atol=1e-6), n
    assert stats["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
    assert torch.equal(fired, (f > 0).sum(0)) and stats["l0"] == pytest.approx(float((f > 0).sum()) / 64)
