"""Monosemanticity proxy (AnchorX): normalised mutual information between a feature's firing and a category.

For feature j (fires: A = f_j > 0) and each value c of an annotation (a POS tag, a source family), the binary
variables A and B_c = [label == c] give

    NMI_jc = I(A; B_c) / ((H(A) + H(B_c)) / 2)            (scikit-learn's arithmetic normalisation)

over the labelled tokens: 1 when the feature fires on exactly the tokens of c, 0 when its firing says nothing
about c. A feature's score is max_c NMI_jc (its best tag); the part reports the distribution of scores and the
fraction above a stated threshold. Measuring against one tag at a time, not the whole tag variable, keeps a
feature that fires on all nouns (and only them) at 1 while a feature firing on nouns and verbs scores less.

Baselines, measured the same way on the same tokens: random unit directions and the residual stream's own
basis directions, each "firing" on the tokens whose projection is above its (1 - density) quantile, with the
densities taken from the dictionary's alive features (evenly spaced quantiles of their distribution), since NMI
depends on how often a unit fires.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def _h(p: np.ndarray) -> np.ndarray:
    """Binary entropy (nats) of probabilities p, 0 at 0 and 1."""
    p = np.clip(p, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    return np.nan_to_num(out)


def tag_nmi(fires: sp.spmatrix | np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """[F, C] NMI between each unit's firing (fires [N, F] bool or 0/1, sparse or dense) and each class indicator
    (labels [N] in 0..C-1)."""
    N = len(labels)
    onehot = sp.csr_matrix((np.ones(N), (np.arange(N), labels)), shape=(N, n_classes))
    F = sp.csr_matrix(fires, dtype=np.float64) if not sp.issparse(fires) else fires.astype(np.float64).tocsr()
    F.data[:] = 1.0  # fired = any positive value
    n11 = np.asarray((F.T @ onehot).todense())  # [F, C] fired and in class
    n1 = np.asarray(F.sum(0)).ravel()[:, None]  # [F, 1]
    nc = np.asarray(onehot.sum(0)).ravel()[None, :]  # [1, C]
    mi = np.zeros(n11.shape)
    for a_fired, b_in in ((1, 1), (1, 0), (0, 1), (0, 0)):  # the 2x2 table's cells
        pa = n1 / N if a_fired else 1 - n1 / N
        pb = nc / N if b_in else 1 - nc / N
        joint = {(1, 1): n11, (1, 0): n1 - n11, (0, 1): nc - n11, (0, 0): N - n1 - nc + n11}[(a_fired, b_in)] / N
        with np.errstate(divide="ignore", invalid="ignore"):
            mi += np.where(joint > 0, joint * np.log(joint / (pa * pb)), 0.0)
    denom = (_h(n1 / N) + _h(nc / N)) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, np.clip(mi, 0, None) / denom, 0.0)


def direction_fires(x: np.ndarray, directions: np.ndarray, densities: np.ndarray, chunk: int = 512) -> sp.csr_matrix:
    """[N, M] firing of unit directions [M, d] on x [N, d]: projection above the (1 - densities[m]) quantile."""
    parts = []
    for i in range(0, len(directions), chunk):
        proj = x @ directions[i:i + chunk].T  # [N, m]
        q = np.quantile(proj, 1 - densities[i:i + chunk], axis=0, method="higher")
        q = np.diagonal(q) if q.ndim == 2 else q
        parts.append(sp.csr_matrix(proj > q[None, :]))
    return sp.hstack(parts).tocsr()


def matched_densities(densities: np.ndarray, m: int) -> np.ndarray:
    """m densities at evenly spaced quantiles of the alive features' densities (a baseline unit per quantile)."""
    alive = np.sort(densities[densities > 0])
    if not len(alive):
        return np.full(m, 0.01)
    return np.quantile(alive, (np.arange(m) + 0.5) / m)


def summarize(best: np.ndarray, threshold: float) -> dict:
    """Distribution of per-unit best NMI (alive units only: the caller passes them)."""
    if not len(best):
        return {"n": 0}
    return {"n": int(len(best)), "mean": float(best.mean()), "median": float(np.median(best)),
            "p90": float(np.quantile(best, 0.9)), "fraction_above": float((best > threshold).mean()),
            "threshold": threshold, "hist_edges": np.linspace(0, 1, 41).tolist(),
            "hist_counts": np.histogram(best, bins=np.linspace(0, 1, 41))[0].tolist()}


def random_directions(m: int, d: int, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed).standard_normal((m, d))
    return (g / np.linalg.norm(g, axis=1, keepdims=True)).astype(np.float32)
