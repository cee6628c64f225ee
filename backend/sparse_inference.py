"""Sparse inference over a fixed dictionary: FISTA, matching pursuit, gradient pursuit (batched, torch).

Conventions: a dictionary D [n_atoms, d] with unit-norm rows, codes z [B, n_atoms], inputs x [B, d]
(already centred by whoever owns a bias), reconstruction x_hat = z @ D.

- `fista`: min_z 0.5 ||x - z D||^2 + l1 ||z||_1 (optionally z >= 0), step 1/L with L the largest
  eigenvalue of D D^T (Beck & Teboulle 2009). Warm start `z0`; `topk` keeps the k largest |z| per row.
- `matching_pursuit`: k greedy steps (Mallat & Zhang 1993); an atom may be picked twice, so L0 <= k.
- `gradient_pursuit`: Blumensath & Davies 2008: pick the atom most correlated with the residual (as
  MP does; here only atoms not yet in the support, so k steps give exactly k atoms), then one gradient
  step on the whole support with the exact line search a = ||g||^2 / ||g D||^2.

Both pursuits work on correlations c = r D^T [B, n_atoms] and keep them current through the Gram
matrix G = D D^T [n_atoms, n_atoms] (an MP step is c -= a G[j], O(n_atoms); a GP step is
c -= a g G_S, O(|S| n_atoms)), never forming the residual again. FISTA uses G only when it is cheaper
than two passes over D (n_atoms < 2 d). The FLOP functions count what these implementations do per
token (a multiply-add is 2 FLOPs, a comparison/abs/add 1); the one-off per-dictionary costs (G: 2 n^2 d,
L by an SVD) are not per token and are left out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def lipschitz(D: torch.Tensor) -> float:
    """Largest eigenvalue of D D^T (= squared spectral norm of D [n_atoms, d]): the gradient's Lipschitz constant."""
    return float(torch.linalg.matrix_norm(D.float(), ord=2) ** 2)


def gram(D: torch.Tensor) -> torch.Tensor:
    """G = D D^T [n_atoms, n_atoms]."""
    return D @ D.T


def use_gram_for_fista(n_atoms: int, d: int) -> bool:
    """A FISTA gradient costs 2 n^2 with the Gram matrix, 4 n d without: use G only when n < 2 d."""
    return n_atoms < 2 * d


def _prox(v: torch.Tensor, thresh: float, nonneg: bool) -> torch.Tensor:
    """Soft threshold (or its non-negative version, relu(v - t)) of v [B, n]."""
    if nonneg:
        return (v - thresh).clamp_min_(0.0)
    return torch.sign(v) * (v.abs() - thresh).clamp_min_(0.0)


def keep_topk(z: torch.Tensor, k: int) -> torch.Tensor:
    """Zero all but the k largest |z| of each row of z [B, n]."""
    if k >= z.shape[1]:
        return z
    _, i = z.abs().topk(k, dim=1, sorted=False)
    return torch.zeros_like(z).scatter_(1, i, z.gather(1, i))


@torch.no_grad()
def fista(x: torch.Tensor, D: torch.Tensor, l1: float, n_iter: int = 100, nonneg: bool = False,
          z0: torch.Tensor | None = None, topk: int | None = None, L: float | None = None,
          G: torch.Tensor | None = None) -> torch.Tensor:
    """FISTA on 0.5 ||x - z D||^2 + l1 ||z||_1 for x [B, d], D [n_atoms, d] -> z [B, n_atoms].

    `L` (largest eigenvalue of D D^T) and `G` (= D D^T) may be passed in to skip recomputing them;
    G is used only when `use_gram_for_fista` says so (or when given)."""
    x, D = x.float(), D.float()
    n, d = D.shape
    L = lipschitz(D) if L is None else float(L)
    step = 1.0 / L
    if G is None and use_gram_for_fista(n, d):
        G = gram(D)
    c = x @ D.T if G is not None else None  # [B, n] x D^T, fixed
    z = torch.zeros(x.shape[0], n) if z0 is None else z0.float().clone()  # [B, n]
    if nonneg:
        z.clamp_min_(0.0)
    y, t = z.clone(), 1.0
    for _ in range(n_iter):
        if G is not None:
            grad = y @ G - c  # [B, n] = (y D - x) D^T
        else:
            grad = (y @ D - x) @ D.T  # [B, n]
        z_new = _prox(y.sub_(grad, alpha=step), l1 * step, nonneg)  # y is overwritten: not needed any more
        t_new = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y = z_new + ((t - 1.0) / t_new) * (z_new - z)
        z, t = z_new, t_new
    return keep_topk(z, topk) if topk else z


def fista_flops(n_atoms: int, d: int, n_iter: int, gram_form: bool | None = None, topk: bool = False) -> int:
    """Per-token FLOPs of `fista` (a multiply-add 2, an elementwise op 1).

    Gram form: c = x D^T once (2 n d), then per iteration y G (2 n^2) - c (n), gradient step (2n),
    prox (3n: subtract, clamp, and sign-multiply ~ counted as 3), momentum (3n) -> 2n^2 + 9n.
    Residual form: per iteration y D (2 n d) - x (d), times D^T (2 n d), then the same 8n -> 4nd + d + 8n.
    `topk` adds n for the final selection."""
    n = n_atoms
    gram_form = use_gram_for_fista(n, d) if gram_form is None else gram_form
    if gram_form:
        total = 2 * n * d + n_iter * (2 * n * n + 9 * n)
    else:
        total = n_iter * (4 * n * d + d + 8 * n)
    return total + (n if topk else 0)


def objective(x: torch.Tensor, D: torch.Tensor, z: torch.Tensor, l1: float) -> torch.Tensor:
    """Per-row 0.5 ||x - z D||^2 + l1 ||z||_1 -> [B]."""
    return 0.5 * (x - z @ D).pow(2).sum(1) + l1 * z.abs().sum(1)


def _pick(c: torch.Tensor, nonneg: bool, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Index [B] of the atom with the largest |c| (largest c if nonneg), outside `exclude` [B, n] bool."""
    s = c if nonneg else c.abs()
    if exclude is not None:
        s = s.masked_fill(exclude, -math.inf)
    return s.argmax(1)


@torch.no_grad()
def matching_pursuit(x: torch.Tensor, D: torch.Tensor, k: int, nonneg: bool = False,
                     G: torch.Tensor | None = None) -> torch.Tensor:
    """k matching-pursuit steps for x [B, d] over D [n_atoms, d] (unit rows) -> z [B, n_atoms], L0 <= k.

    Step: j = argmax |c|, z_j += c_j, c -= c_j G[j] (the residual's correlations stay exact).
    Non-negative: j = argmax c and the coefficient is max(c_j, 0) (a row stops moving once all c <= 0)."""
    x, D = x.float(), D.float()
    G = gram(D) if G is None else G
    B, n = x.shape[0], D.shape[0]
    c = x @ D.T  # [B, n] correlations of the residual with each atom
    z = torch.zeros(B, n)
    rows = torch.arange(B)
    for _ in range(k):
        j = _pick(c, nonneg)  # [B]
        a = c[rows, j]  # [B]
        if nonneg:
            a = a.clamp_min(0.0)
        z[rows, j] += a
        c.sub_(a[:, None] * G[j])  # G[j] [B, n]
    return z


@torch.no_grad()
def gradient_pursuit(x: torch.Tensor, D: torch.Tensor, k: int, nonneg: bool = False,
                     G: torch.Tensor | None = None) -> torch.Tensor:
    """k gradient-pursuit steps (Blumensath & Davies 2008) for x [B, d] over D [n_atoms, d] -> z [B, n_atoms].

    Step t: add j = argmax |c| (outside the support S) to S; g = c_S (the gradient of 0.5||r||^2 on S,
    sign flipped); u = g G_S [B, n] (= (g D_S) D^T); a = ||g||^2 / <g, u_S> (exact line search);
    z_S += a g; c -= a u. Non-negative: pick argmax c, and cap a so that no z_S goes below 0."""
    x, D = x.float(), D.float()
    G = gram(D) if G is None else G
    B, n = x.shape[0], D.shape[0]
    k = min(k, n)
    c = x @ D.T  # [B, n]
    z = torch.zeros(B, n)
    in_s = torch.zeros(B, n, dtype=torch.bool)
    S = torch.empty(B, 0, dtype=torch.int64)  # [B, t] support, in order of selection
    for _ in range(k):
        j = _pick(c, nonneg, in_s)  # [B]
        in_s[torch.arange(B), j] = True
        S = torch.cat([S, j[:, None]], 1)  # [B, t]
        g = c.gather(1, S)  # [B, t]
        if nonneg:
            g = torch.where(g > 0, g, torch.where(z.gather(1, S) > 0, g, torch.zeros_like(g)))  # stay feasible at 0
        u = F.embedding_bag(S, G, mode="sum", per_sample_weights=g)  # [B, n] = g @ G[S]
        num = g.pow(2).sum(1)  # [B]
        den = (g * u.gather(1, S)).sum(1)  # [B] = ||g D_S||^2
        a = num / den.clamp_min(1e-12)
        if nonneg:  # largest step keeping z_S + a g >= 0
            zs = z.gather(1, S)
            lim = torch.where(g < 0, zs / (-g).clamp_min(1e-30), torch.full_like(g, math.inf)).amin(1)
            a = torch.minimum(a, lim)
        a = torch.where(den > 1e-12, a, torch.zeros_like(a))
        z.scatter_add_(1, S, a[:, None] * g)
        c.sub_(a[:, None] * u)
    if nonneg:
        z.clamp_min_(0.0)  # rounding only
    return z


def pursuit_flops(n_atoms: int, d: int, k: int, method: str = "gp") -> int:
    """Per-token FLOPs of `matching_pursuit` ("mp") or `gradient_pursuit` ("gp"), Gram-matrix form.

    Both start with c = x D^T (2 n d). MP step: abs + argmax (2n), c -= a G[j] (2n) -> 4n.
    GP step t (support size t): abs + mask + argmax (3n), u = g G_S (2 t n), ||g||^2 (2t), <g, u_S> (2t),
    divide (1), z_S += a g (2t), c -= a u (2n) -> 5n + 2tn + 6t + 1, summed over t = 1..k."""
    n = n_atoms
    if method == "mp":
        return 2 * n * d + k * 4 * n
    if method == "gp":
        return 2 * n * d + k * (5 * n + 1) + (k * (k + 1) // 2) * (2 * n + 6)
    raise ValueError(f"unknown pursuit method {method!r} (mp or gp)")
