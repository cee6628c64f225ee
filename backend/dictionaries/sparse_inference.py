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
than two passes over D (n_atoms < 2 d).

Pools: on a large dictionary (4608 atoms) a full pursuit step streams an 85 MB Gram matrix per
token-step, too slow for 200k tokens on a CPU. `pool=m` restricts each token to m candidate atoms
(most correlated with x, or given, e.g. an encoder's top pre-activations): a local Gram
D_P D_P^T [m, m] per token, then the same algorithms on it (`pooled_inference`). The FLOP functions count what these implementations do per
token (a multiply-add is 2 FLOPs, a comparison/abs/add 1); the one-off per-dictionary costs (G: 2 n^2 d,
L by an SVD) are not per token and are left out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

POWER_ITERS = 6  # power-iteration steps for a pool's largest Gram eigenvalue (x 1.2 margin)


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
          G: torch.Tensor | None = None, pool: int | None = None, pool_idx: torch.Tensor | None = None) -> torch.Tensor:
    """FISTA on 0.5 ||x - z D||^2 + l1 ||z||_1 for x [B, d], D [n_atoms, d] -> z [B, n_atoms].

    `L` (largest eigenvalue of D D^T) and `G` (= D D^T) may be passed in to skip recomputing them;
    G is used only when `use_gram_for_fista` says so (or when given). `pool` (m) or `pool_idx` [B, m]:
    solve over a pool of atoms per row only (the m most correlated with x, or the given ones), see
    `pooled_inference`."""
    x, D = x.float(), D.float()
    if pool or pool_idx is not None:
        P = pool_idx if pool_idx is not None else select_pool(x @ D.T, pool, nonneg)
        return pooled_inference(x, D, P, "fista", nonneg=nonneg, l1=l1, n_iter=n_iter, z0=z0, topk=topk)
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


def _global_rows(G: torch.Tensor):
    """grow(S [B, t], w [B, t]) -> sum_t w_t G[S_t] [B, n] for one Gram matrix G [n, n] shared by all rows."""
    return lambda S, w: F.embedding_bag(S, G, mode="sum", per_sample_weights=w)


def _mp(c: torch.Tensor, grow, k: int, nonneg: bool) -> torch.Tensor:
    """Matching pursuit on correlations c [B, m] (consumed) -> z [B, m]."""
    B = c.shape[0]
    z = torch.zeros_like(c)
    rows = torch.arange(B)
    for _ in range(k):
        j = _pick(c, nonneg)  # [B]
        a = c[rows, j]  # [B]
        if nonneg:
            a = a.clamp_min(0.0)
        z[rows, j] += a
        c.sub_(grow(j[:, None], a[:, None]))  # c -= a G[j]
    return z


def _gp(c: torch.Tensor, grow, k: int, nonneg: bool) -> torch.Tensor:
    """Gradient pursuit on correlations c [B, m] (consumed) -> z [B, m] with k atoms per row."""
    B, m = c.shape
    k = min(k, m)
    z = torch.zeros_like(c)
    in_s = torch.zeros(B, m, dtype=torch.bool)
    S = torch.empty(B, 0, dtype=torch.int64)  # [B, t] support, in order of selection
    for _ in range(k):
        j = _pick(c, nonneg, in_s)  # [B]
        in_s[torch.arange(B), j] = True
        S = torch.cat([S, j[:, None]], 1)  # [B, t]
        g = c.gather(1, S)  # [B, t] minus the gradient of 0.5||r||^2 on S
        if nonneg:  # a coefficient at 0 may not be pushed below 0
            g = torch.where((g > 0) | (z.gather(1, S) > 0), g, torch.zeros_like(g))
        u = grow(S, g)  # [B, m] = g G_S (= (g D_S) D^T)
        num = g.pow(2).sum(1)  # [B]
        den = (g * u.gather(1, S)).sum(1)  # [B] = ||g D_S||^2
        a = num / den.clamp_min(1e-12)  # exact line search
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


def _mp_local(c: torch.Tensor, Gp: torch.Tensor, k: int, nonneg: bool) -> torch.Tensor:
    """Matching pursuit with per-row Gram matrices Gp [B, m, m] on correlations c [B, m] (consumed) -> z [B, m]."""
    rows = torch.arange(c.shape[0])
    return _mp(c, lambda S, w: w * Gp[rows, S[:, 0]], k, nonneg)  # S, w [B, 1]: c -= a Gp[row, j]


def _gp_local(c: torch.Tensor, Gp: torch.Tensor, k: int, nonneg: bool) -> torch.Tensor:
    """Gradient pursuit with per-row Gram matrices Gp [B, m, m] on correlations c [B, m] (consumed) -> z [B, m].
    The same steps as `_gp`, with g kept as a full [B, m] vector (zero off the support): one batched
    mat-vec (2 m^2) per step instead of gathering the support's Gram rows (2 t m), fewer, larger ops."""
    B, m = c.shape
    z = torch.zeros_like(c)
    in_s = torch.zeros(B, m, dtype=torch.bool)
    rows = torch.arange(B)
    for _ in range(min(k, m)):
        in_s[rows, _pick(c, nonneg, in_s)] = True
        active = in_s if not nonneg else in_s & ((c > 0) | (z > 0))  # a code at 0 may not be pushed below 0
        g = torch.where(active, c, 0.0)  # [B, m]
        u = torch.bmm(g[:, None, :], Gp).squeeze(1)  # [B, m] = g G
        num = g.pow(2).sum(1)
        den = (g * u).sum(1)
        a = num / den.clamp_min(1e-12)  # exact line search
        if nonneg:
            lim = torch.where(g < 0, z / (-g).clamp_min(1e-30), math.inf).amin(1)
            a = torch.minimum(a, lim)
        a = torch.where(den > 1e-12, a, 0.0)[:, None]
        z.add_(a * g)
        c.sub_(a * u)
    if nonneg:
        z.clamp_min_(0.0)  # rounding only
    return z


def _fista_local(c: torch.Tensor, Gp: torch.Tensor, l1: float, n_iter: int, nonneg: bool,
                 z0: torch.Tensor | None) -> torch.Tensor:
    """FISTA on a pool: min 0.5 z Gp z^T - c z + l1 |z| per row, c [B, m], Gp [B, m, m] -> z [B, m].
    Step 1/L_b with L_b = 1.2 x a POWER_ITERS-step power-iteration estimate of the row's largest eigenvalue
    (a lower bound that is within a few per cent by then; the margin keeps the step safe)."""
    v = torch.ones(c.shape[0], c.shape[1], 1)
    for _ in range(POWER_ITERS):
        v = torch.bmm(Gp, v)
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    L = 1.2 * (v * torch.bmm(Gp, v)).sum((1, 2)).clamp_min(1e-6)  # [B]
    step = (1.0 / L)[:, None]  # [B, 1]
    thresh = l1 * step  # [B, 1]
    c_step = c * step  # [B, m]: the constant part of the gradient step
    z = torch.zeros_like(c) if z0 is None else z0.clone()
    if nonneg:
        z.clamp_min_(0.0)
    y, t = z.clone(), 1.0
    for _ in range(n_iter):
        v = y - step * torch.bmm(y[:, None, :], Gp).squeeze(1)  # y - step y G
        v.add_(c_step)  # y - step (y G - c)
        if nonneg:
            z_new = v.sub_(thresh).clamp_min_(0.0)
        else:
            z_new = torch.sign(v) * (v.abs() - thresh).clamp_min_(0.0)
        t_new = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y = z_new + ((t - 1.0) / t_new) * (z_new - z)
        z, t = z_new, t_new
    return z


def select_pool(scores: torch.Tensor, m: int, nonneg: bool = False) -> torch.Tensor:
    """Indices [B, m] of the m atoms with the largest score (|score| unless nonneg) per row of scores [B, n]."""
    s = scores if nonneg else scores.abs()
    return s.topk(min(m, s.shape[1]), dim=1, sorted=False).indices


@torch.no_grad()
def pooled_inference(x: torch.Tensor, D: torch.Tensor, P: torch.Tensor, method: str, k: int = 0,
                     nonneg: bool = False, l1: float = 0.0, n_iter: int = 0, z0: torch.Tensor | None = None,
                     topk: int | None = None, chunk: int = 1024) -> torch.Tensor:
    """Solve each row's problem over its own pool of atoms P [B, m] only -> z [B, n_atoms] (zero off the pool).

    Per chunk of rows: D_P = D[P] [b, m, d], local Gram G_P = D_P D_P^T [b, m, m] (2 m^2 d per row),
    local correlations c = D_P x (2 m d), then "mp"/"gp" (k steps) or "fista" (n_iter steps, warm start
    z0 [B, n_atoms] read on the pool) with per-row step sizes. Exact for the restricted problem; the
    restriction is the approximation (atoms outside the pool are never used)."""
    x, D = x.float(), D.float()
    B, n = x.shape[0], D.shape[0]
    z = torch.zeros(B, n)
    for a in range(0, B, chunk):
        Pc, xc = P[a:a + chunk], x[a:a + chunk]
        Dp = D[Pc]  # [b, m, d]
        Gp = torch.bmm(Dp, Dp.transpose(1, 2))  # [b, m, m]
        c = torch.bmm(Dp, xc[:, :, None]).squeeze(2)  # [b, m]
        if method == "mp":
            zl = _mp_local(c, Gp, k, nonneg)
        elif method == "gp":
            zl = _gp_local(c, Gp, k, nonneg)
        elif method == "fista":
            z0l = z0[a:a + chunk].float().gather(1, Pc) if z0 is not None else None
            zl = _fista_local(c, Gp, l1, n_iter, nonneg, z0l)
        else:
            raise ValueError(f"unknown method {method!r} (mp, gp or fista)")
        z[a:a + chunk].scatter_(1, Pc, zl)
    return keep_topk(z, topk) if topk else z


@torch.no_grad()
def matching_pursuit(x: torch.Tensor, D: torch.Tensor, k: int, nonneg: bool = False,
                     G: torch.Tensor | None = None, pool: int | None = None) -> torch.Tensor:
    """k matching-pursuit steps for x [B, d] over D [n_atoms, d] (unit rows) -> z [B, n_atoms], L0 <= k.

    Step: j = argmax |c|, z_j += c_j, c -= c_j G[j] (the residual's correlations stay exact).
    Non-negative: j = argmax c and the coefficient is max(c_j, 0) (a row stops moving once all c <= 0).
    `pool`: restrict each row to the `pool` atoms most correlated with x (see `pooled_inference`)."""
    return _pursuit("mp", x, D, k, nonneg, G, pool)


@torch.no_grad()
def gradient_pursuit(x: torch.Tensor, D: torch.Tensor, k: int, nonneg: bool = False,
                     G: torch.Tensor | None = None, pool: int | None = None) -> torch.Tensor:
    """k gradient-pursuit steps (Blumensath & Davies 2008) for x [B, d] over D [n_atoms, d] -> z [B, n_atoms].

    Step t: add j = argmax |c| (outside the support S) to S; g = c_S (the gradient of 0.5||r||^2 on S,
    sign flipped); u = g G_S [B, n] (= (g D_S) D^T); a = ||g||^2 / <g, u_S> (exact line search);
    z_S += a g; c -= a u. Non-negative: pick argmax c, and cap a so that no z_S goes below 0.
    `pool`: restrict each row to the `pool` atoms most correlated with x (see `pooled_inference`)."""
    return _pursuit("gp", x, D, k, nonneg, G, pool)


def _pursuit(method: str, x: torch.Tensor, D: torch.Tensor, k: int, nonneg: bool, G: torch.Tensor | None,
             pool: int | None) -> torch.Tensor:
    """MP or GP over all atoms (Gram rows of G) or over each row's pool of candidate atoms."""
    x, D = x.float(), D.float()
    if pool:
        return pooled_inference(x, D, select_pool(x @ D.T, pool, nonneg), method, k=k, nonneg=nonneg)
    G = gram(D) if G is None else G
    return (_mp if method == "mp" else _gp)(x @ D.T, _global_rows(G), k, nonneg)


def pursuit_flops(n_atoms: int, d: int, k: int, method: str = "gp", pool: int | None = None) -> int:
    """Per-token FLOPs of `matching_pursuit` ("mp") or `gradient_pursuit` ("gp"), Gram-matrix form.

    Both start with c = x D^T (2 n d). MP step: abs + argmax (2n), c -= a G[j] (2n) -> 4n.
    GP step t (support size t): abs + mask + argmax (3n), u = g G_S (2 t n), ||g||^2 (2t), <g, u_S> (2t),
    divide (1), z_S += a g (2t), c -= a u (2n) -> 5n + 2tn + 6t + 1, summed over t = 1..k.
    With a pool of m atoms: 2 n d + n (correlations, pool choice) + 2 m^2 d + 2 m d (local Gram and
    correlations), then MP steps of 4m, or GP steps with g a full m-vector: pick (3m), mask g (m),
    u = g G_P (2 m^2), ||g||^2 and <g, u> (4m), divide (1), z and c updates (4m) -> 2 m^2 + 12 m + 1."""
    n = n_atoms
    if method not in ("mp", "gp"):
        raise ValueError(f"unknown pursuit method {method!r} (mp or gp)")
    if pool:
        m = min(pool, n)
        steps = min(k, m) * (4 * m if method == "mp" else 2 * m * m + 12 * m + 1)
        return 2 * n * d + n + 2 * m * m * d + 2 * m * d + steps
    if method == "mp":
        return 2 * n * d + k * 4 * n
    return 2 * n * d + k * (5 * n + 1) + (k * (k + 1) // 2) * (2 * n + 6)


def pooled_fista_flops(n_atoms: int, d: int, m: int, n_iter: int, select: int | None = None) -> int:
    """Per-token FLOPs of `pooled_inference(..., "fista")`: pool choice `select` (default 2 n d + n, the
    correlations and top-m), local Gram 2 m^2 d, correlations 2 m d, power iteration POWER_ITERS x (2 m^2 + 3m)
    + 2 m^2 + 2m, c * step (m), per iteration y G (2 m^2) + step, subtract, add c, threshold, clamp (5m) +
    momentum (3m) = 2 m^2 + 8m, plus n for the final top-k."""
    select = 2 * n_atoms * d + n_atoms if select is None else select
    power = POWER_ITERS * (2 * m * m + 3 * m) + 2 * m * m + 2 * m
    return select + 2 * m * m * d + 2 * m * d + power + m + n_iter * (2 * m * m + 8 * m) + n_atoms
