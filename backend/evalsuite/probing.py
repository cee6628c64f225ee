"""Sparse probing (SAEBench; Gurnee et al. 2023): how much of a labelled property k latents carry.

For a binary task (tokens of one POS tag against the other tagged tokens; contexts of one source family
against the rest), on a class-balanced sample split by context (80% train, 20% test, no context on both sides):

    1. rank the units by |mean over positives - mean over negatives| on the train part
    2. keep the top k (k in 1, 2, 5, 20), standardise, fit an L2 logistic regression (scikit-learn, C = 1)
    3. report test accuracy

The same probe runs on the raw activations, both on their top-k basis coordinates (same selection) and on
all d_in coordinates (the ceiling a dictionary's latents are measured against). Tasks with fewer than
`min_per_class` examples of either class on either side are skipped.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

KS = (1, 2, 5, 20)


def balanced_split(y: np.ndarray, groups: np.ndarray, seed: int = 0, test_frac: float = 0.2,
                   max_per_class: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) index arrays: groups (contexts) split test_frac/rest, then each side class-balanced by
    subsampling the larger class (at most max_per_class per class per side)."""
    rng = np.random.default_rng(seed)
    uniq = rng.permutation(np.unique(groups))
    test_groups = set(uniq[:max(1, round(test_frac * len(uniq)))].tolist())
    is_test = np.array([g in test_groups for g in groups])
    out = []
    for side in (~is_test, is_test):
        pos, neg = np.flatnonzero(side & (y == 1)), np.flatnonzero(side & (y == 0))
        n = min(len(pos), len(neg), max_per_class)
        out.append(np.sort(np.concatenate([rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)])))
    return out[0], out[1]


def _dense(m, cols) -> np.ndarray:
    sub = m[:, cols]
    return np.asarray(sub.todense() if sp.issparse(sub) else sub, dtype=np.float64)


def _fit_score(Xtr, ytr, Xte, yte, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(Xtr)
    clf = LogisticRegression(C=1.0, max_iter=500, random_state=seed).fit(sc.transform(Xtr), ytr)
    return float(clf.score(sc.transform(Xte), yte))


def top_k_units(X, y: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k units with the largest |mean(positives) - mean(negatives)|."""
    pos, neg = X[y == 1], X[y == 0]
    diff = np.abs(np.asarray(pos.mean(0)).ravel() - np.asarray(neg.mean(0)).ravel())
    return np.argsort(-diff, kind="stable")[:k]


def probe_task(X, y: np.ndarray, groups: np.ndarray, ks=KS, seed: int = 0, full: bool = False,
               min_per_class: int = 20) -> dict | None:
    """{k: test accuracy} (and "all" with `full`: every unit) for features X [N, F] (dense or sparse) and binary y,
    or None when a class is too rare."""
    tr, te = balanced_split(y, groups, seed)
    if min(len(tr), len(te)) < 2 * min_per_class:
        return None
    Xtr, Xte = (X[tr], X[te])
    out = {}
    for k in ks:
        cols = top_k_units(Xtr, y[tr], k)
        out[str(k)] = _fit_score(_dense(Xtr, cols), y[tr], _dense(Xte, cols), y[te], seed)
    if full:
        cols = np.arange(X.shape[1])
        out["all"] = _fit_score(_dense(Xtr, cols), y[tr], _dense(Xte, cols), y[te], seed)
    out["n_train"], out["n_test"] = int(len(tr)), int(len(te))
    return out


def probe_tasks(X, labels: np.ndarray, groups: np.ndarray, classes: list[str], ks=KS, seed: int = 0,
                full: bool = False, min_per_class: int = 20) -> dict:
    """One-vs-rest tasks for each class: {"tasks": {class: probe_task}, "mean": {k: mean accuracy over tasks}}."""
    tasks = {}
    for c in classes:
        r = probe_task(X, (labels == c).astype(np.int64), groups, ks, seed, full, min_per_class)
        if r is not None:
            tasks[c] = r
    keys = [str(k) for k in ks] + (["all"] if full else [])
    mean = {k: float(np.mean([t[k] for t in tasks.values()])) for k in keys} if tasks else {}
    return {"tasks": tasks, "mean": mean}


def pool_contexts(X, context: np.ndarray) -> tuple[np.ndarray, object]:
    """(context ids [G], mean over each context's tokens [G, F]): the context-level input of the source task."""
    ids, inv = np.unique(context, return_inverse=True)
    counts = np.bincount(inv).astype(np.float64)
    P = sp.csr_matrix((1.0 / counts[inv], (inv, np.arange(len(inv)))), shape=(len(ids), len(inv)))
    pooled = P @ X
    return ids, (pooled if sp.issparse(pooled) else np.asarray(pooled))
