"""FISTA, matching pursuit and gradient pursuit on small planted problems, and their FLOP counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.dictionaries.sparse_inference import (
    fista,
    fista_flops,
    gradient_pursuit,
    keep_topk,
    matching_pursuit,
    objective,
    pooled_fista_flops,
    pursuit_flops,
)


def planted(B=64, n=256, d=128, k=4, seed=0, nonneg=False):
    """Random unit-row dictionary D [n, d] and k-sparse codes z [B, n] with |values| in [1, 2]."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n, d, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    z = torch.zeros(B, n)
    for b in range(B):
        idx = torch.randperm(n, generator=g)[:k]
        v = 1.0 + torch.rand(k, generator=g)
        if not nonneg:
            v *= torch.where(torch.rand(k, generator=g) < 0.5, -1.0, 1.0)
        z[b, idx] = v
    return D, z, z @ D


@pytest.mark.parametrize("method", [matching_pursuit, gradient_pursuit])
@pytest.mark.parametrize("nonneg", [False, True])
def test_pursuit_recovers_planted_support(method, nonneg):
    # easy regime: k=4 atoms in d=128, mutual coherence ~0.3: the greedy choice finds the true atoms
    D, z_true, x = planted(nonneg=nonneg)
    z = method(x, D, k=4, nonneg=nonneg)
    assert z.shape == z_true.shape
    assert ((z != 0).sum(1) <= 4).all()
    found = ((z.abs() > 0.05) == (z_true != 0)).all(1).float().mean()
    assert found >= 0.95
    if nonneg:
        assert (z >= 0).all()
    if method is gradient_pursuit:
        assert ((z != 0).sum(1) == 4).float().mean() >= 0.95  # exactly k atoms
        # one gradient step per atom: close to, not at, least squares on the support
        assert ((x - z @ D).norm(dim=1) / x.norm(dim=1)).median() < 0.1


def test_gradient_pursuit_beats_matching_pursuit_at_same_l0():
    D, _, x = planted(B=128, n=512, d=64, k=8, seed=1)  # harder: more coherence
    err = lambda z: float((x - z @ D).pow(2).sum())  # noqa: E731
    assert err(gradient_pursuit(x, D, 8)) < err(matching_pursuit(x, D, 8))


def test_fista_recovers_planted_code_and_topk():
    D, z_true, x = planted()
    z = fista(x, D, l1=0.01, n_iter=300)
    assert float((z - z_true).abs().max()) < 0.1  # small l1 => near the planted code (shrunk by ~l1)
    zk = fista(x, D, l1=0.01, n_iter=300, topk=4)
    assert ((zk != 0).sum(1) <= 4).all()
    assert ((zk != 0) == (z_true != 0)).all(1).float().mean() >= 0.95
    zn = fista(x.clamp_min(0), D, l1=0.01, n_iter=50, nonneg=True)
    assert (zn >= 0).all()


@pytest.mark.parametrize("n,d", [(96, 64), (256, 64)])  # Gram form (n < 2d) and residual form
def test_fista_objective_decreases_and_matches_sklearn(n, d):
    from sklearn.decomposition import sparse_encode

    D, _, x = planted(B=16, n=n, d=d, k=3, seed=2)
    x = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    l1 = 0.1
    objs = [float(objective(x, D, fista(x, D, l1, n_iter=it), l1).sum()) for it in (0, 5, 30, 500)]
    assert objs[0] > objs[1] > objs[2] >= objs[3] - 1e-4
    # sklearn's lasso_cd minimises (1/(2 d)) ||x - z D||^2 + (alpha/d) ||z||_1 (it divides alpha by d):
    # the same minimiser as ours with alpha = l1.
    ref = sparse_encode(x.double().numpy(), D.double().numpy(), algorithm="lasso_cd", alpha=l1, max_iter=5000)
    ref = torch.from_numpy(ref).float()
    ours = fista(x, D, l1, n_iter=2000)
    assert abs(float(objective(x, D, ours, l1).sum()) - float(objective(x, D, ref, l1).sum())) < 1e-3 * objs[3]
    assert float((ours - ref).abs().max()) < 2e-3
    # warm start from the answer stays there
    again = fista(x, D, l1, n_iter=5, z0=ours)
    assert float((again - ours).abs().max()) < 1e-4


def test_keep_topk():
    z = torch.tensor([[0.1, -3.0, 2.0, 0.5], [1.0, 0.0, 0.0, -0.25]])
    assert keep_topk(z, 2).tolist() == [[0.0, -3.0, 2.0, 0.0], [1.0, 0.0, 0.0, -0.25]]


def test_flop_formulas_hand_count():
    # hand counts for n=10 atoms, d=4, k=3
    # MP: x D^T 2*10*4 = 80, each step 4*10 = 40 -> 80 + 120 = 200
    assert pursuit_flops(10, 4, 3, "mp") == 200
    # GP: 80 + sum_t (5*10 + 1 + 2*t*10 + 6t) for t = 1, 2, 3 = 80 + (77 + 103 + 129) = 389
    assert pursuit_flops(10, 4, 3, "gp") == 389
    # FISTA, residual form (n=10 >= 2d=8): per iteration 4*10*4 + 4 + 8*10 = 244; 5 iterations
    assert fista_flops(10, 4, 5) == 1220
    # FISTA, Gram form (n=6 < 2d=8): 2*6*4 = 48 + per iteration 2*36 + 9*6 = 126; 5 iterations -> 678
    assert fista_flops(6, 4, 5) == 678
    assert fista_flops(6, 4, 5, topk=True) == 684
    with pytest.raises(ValueError):
        pursuit_flops(10, 4, 3, "omp")


def test_pursuit_with_precomputed_gram_is_identical():
    D, _, x = planted(B=8, seed=4)
    G = D @ D.T
    assert torch.equal(gradient_pursuit(x, D, 5, G=G), gradient_pursuit(x, D, 5))
    assert np.allclose(matching_pursuit(x, D, 5, G=G).numpy(), matching_pursuit(x, D, 5).numpy())


def test_pooled_inference_matches_global_when_pool_holds_everything():
    D, z_true, x = planted(B=16, n=64, d=48, k=3, seed=5)
    for f in (matching_pursuit, gradient_pursuit):
        assert torch.allclose(f(x, D, 3, pool=64), f(x, D, 3), atol=1e-4)
    ref = fista(x, D, 0.05, n_iter=400)
    assert torch.allclose(fista(x, D, 0.05, n_iter=400, pool=64), ref, atol=2e-3)


def test_pooled_pursuit_recovers_planted_code_on_large_dictionary():
    # 1024 atoms in d=128, pool of 16 per token (top correlations) for k=4
    D, z_true, x = planted(B=64, n=1024, d=128, k=4, seed=6, nonneg=True)
    z = gradient_pursuit(x, D, 4, nonneg=True, pool=16)
    assert ((z > 0.05) == (z_true > 0)).all(1).float().mean() >= 0.9
    zf = fista(x, D, 0.01, n_iter=200, nonneg=True, pool=16, topk=4)
    assert ((zf > 0.05) == (z_true > 0)).all(1).float().mean() >= 0.9
    assert float((zf - z_true).abs().max()) < 0.2


def test_pooled_flops_hand_count():
    # n=10, d=4, k=2, pool m=3: 2*10*4 + 10 + 2*9*4 + 2*3*4 = 80 + 10 + 72 + 24 = 186; MP steps 2*4*3 = 24
    assert pursuit_flops(10, 4, 2, "mp", pool=3) == 210
    # GP steps on m=3 with g a full 3-vector: 2 * (2*9 + 12*3 + 1) = 110
    assert pursuit_flops(10, 4, 2, "gp", pool=3) == 296
    # pooled FISTA, n=10, d=4, m=3, 2 iterations, default selection 2*10*4 + 10 = 90:
    # 90 + 72 + 24 + power 6*(18+9) + 18 + 6 = 186 + c*step 3 + 2*(18+24) = 84 + top-k 10
    assert pooled_fista_flops(10, 4, 3, 2) == 90 + 72 + 24 + 186 + 3 + 84 + 10
