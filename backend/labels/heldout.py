"""Contexts a feature's label was never built from: the test set of detection scoring.

An explanation is written from the feature's analysed contexts (`contexts.parquet`: top and quantile
groups). Scoring it on those same windows would only measure memory, so detection scoring (Bills et
al. 2023, "Language models can explain neurons"; EleutherAI delphi, Paulo et al. 2024) draws *other*
windows: `n` activating ones whose window does not overlap any analysed context of the feature, taken
from the run's held-out sequences first (`run.json["heldout_from"]` on) and from the training sequences
only when those run short, plus `n` non-activating windows (the feature is 0 on every token of the
window), also held-out first.

Activating windows are stratified over the feature's activation range: the candidates (the peak of
each sequence, then further peaks whose windows do not overlap) are sorted by value and split into
`n` equal-count bins, one drawn from each, so a label is tested on weak firings as well as strong ones.
Everything is deterministic for a given seed (the RNG is seeded with (seed, feature)).

`explain_contexts` returns the analysed windows (what an explainer sees) and `calibration_windows`
non-activating training windows, so a scorer can calibrate itself on the explanation's own data and
never on the held-out windows it is scored on.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from backend.common.errors import UserError
from backend.common.layout import CONTEXTS, FEATURE_ACTS, load_run
from backend.store import query as store

BEFORE, AFTER = store.DEFAULT_BEFORE, store.DEFAULT_AFTER


_fire_cache: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
_fire_lock = threading.Lock()


def _firings(run_dir, dict_name: str, feature: int) -> tuple[np.ndarray, np.ndarray]:
    """(token_index int64 sorted, value float32) of every firing of the feature; the last few features are
    kept (scoring asks for one feature's firings three times: held-out, explained and calibration windows)."""
    acts = store.store_file(run_dir, dict_name, FEATURE_ACTS)
    key = (store.file_key(acts), int(feature))
    with _fire_lock:
        if key in _fire_cache:
            return _fire_cache[key]
    got = store.query_numpy("SELECT token_index, value FROM read_parquet(?) WHERE feature = ? ORDER BY token_index",
                            [acts, int(feature)])
    out = got["token_index"].astype(np.int64), got["value"].astype(np.float32)
    with _fire_lock:
        _fire_cache[key] = out
        while len(_fire_cache) > 8:
            _fire_cache.popitem(last=False)
    return out


def _context_peaks(run_dir, dict_name: str, feature: int, groups: tuple[str, ...] | None = None) -> np.ndarray:
    """Peak token indices of the feature's analysed contexts (all groups unless `groups`)."""
    path = store.store_file(run_dir, dict_name, CONTEXTS)
    sql = 'SELECT DISTINCT token_index FROM read_parquet(?) WHERE feature = ?'
    params: list = [path, int(feature)]
    if groups:
        sql += ' AND "group" IN (SELECT unnest(?::VARCHAR[]))'
        params.append(list(groups))
    return np.sort(store.query_numpy(sql, params)["token_index"].astype(np.int64))


def _overlaps(t: np.ndarray, centres: np.ndarray, T: int, span: int) -> np.ndarray:
    """Mask of tokens t whose window could share a token with the window of any centre (same sequence, |dt| <= span)."""
    if len(centres) == 0 or len(t) == 0:
        return np.zeros(len(t), bool)
    c = np.sort(centres)
    i = np.searchsorted(c, t)
    near = np.zeros(len(t), bool)
    for j in (i - 1, i):
        ok = (j >= 0) & (j < len(c))
        cj = c[np.clip(j, 0, len(c) - 1)]
        near |= ok & (np.abs(cj - t) <= span) & (cj // T == t // T)
    return near


def _spread_peaks(t: np.ndarray, v: np.ndarray, T: int, span: int, want: int) -> np.ndarray:
    """Indices into (t, v) of candidate peaks: the maximum of each sequence, then (only when there are fewer
    than `want` sequences) further peaks, value-descending, whose windows overlap no chosen one."""
    if len(t) == 0:
        return np.zeros(0, np.int64)
    seq = t // T
    order = np.lexsort((-v, seq))  # by sequence, value descending inside
    first = np.ones(len(order), bool)
    first[1:] = seq[order][1:] != seq[order][:-1]
    chosen = list(order[first])
    if len(chosen) < want:
        taken = t[chosen]
        for k in np.argsort(-v, kind="stable"):
            if len(chosen) >= want:
                break
            if not _overlaps(t[k:k + 1], taken, T, span)[0]:
                chosen.append(int(k))
                taken = np.append(taken, t[k])
    return np.asarray(chosen, np.int64)


def _stratified(values: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n positions into `values`, one drawn from each of n equal-count bins of the value-sorted list (all if fewer)."""
    if len(values) <= n:
        return np.arange(len(values))
    order = np.argsort(-values, kind="stable")
    edges = np.linspace(0, len(values), n + 1).astype(int)
    return np.array([order[rng.integers(edges[b], edges[b + 1])] for b in range(n)], np.int64)


def _activating(t: np.ndarray, v: np.ndarray, exclude: np.ndarray, T: int, heldout_from: int, n: int,
                rng: np.random.Generator, span: int) -> list[tuple[int, float]]:
    keep = ~_overlaps(t, exclude, T, span)
    t, v = t[keep], v[keep]
    picks: list[tuple[int, float]] = []
    held = t // T >= heldout_from
    for mask in (held, ~held):  # held-out sequences first, training ones only to fill up
        need = n - len(picks)
        if need <= 0:
            break
        tt, vv = t[mask], v[mask]
        if len(picks):  # never overlap what the held-out part already gave
            ok = ~_overlaps(tt, np.array([p[0] for p in picks]), T, span)
            tt, vv = tt[ok], vv[ok]
        cand = _spread_peaks(tt, vv, T, span, need)
        sel = cand[_stratified(vv[cand], need, rng)]
        picks += [(int(tt[i]), float(vv[i])) for i in sel]
    return sorted(picks, key=lambda p: -p[1])


def _silent_centres(fire_t: np.ndarray, T: int, seqs: np.ndarray, n: int, rng: np.random.Generator,
                    before: int, after: int, avoid: np.ndarray | None = None) -> list[int]:
    """Up to n random centres (position >= 1) in `seqs` whose window holds no firing, windows not overlapping."""
    if n <= 0 or len(seqs) == 0:
        return []
    out: list[int] = []
    taken = np.asarray(avoid if avoid is not None else [], np.int64)
    for _ in range(50 * n):
        if len(out) >= n:
            break
        s = int(seqs[rng.integers(len(seqs))])
        c = s * T + int(rng.integers(1, T))
        lo, hi = store.window_bounds(np.array([c]), T, before, after)
        a, b = np.searchsorted(fire_t, [lo[0], hi[0] + 1])
        if b > a:  # the feature fires somewhere in this window
            continue
        if _overlaps(np.array([c]), taken, T, before + after)[0]:
            continue
        out.append(c)
        taken = np.append(taken, c)
    return out


def _acts_at(idx: np.ndarray, fire_t: np.ndarray, fire_v: np.ndarray) -> np.ndarray:
    """The feature's activation at each token index (0 where it does not fire); fire_t sorted."""
    if len(fire_t) == 0:
        return np.zeros(len(idx), np.float64)
    j = np.minimum(np.searchsorted(fire_t, idx), len(fire_t) - 1)
    return np.where(fire_t[j] == idx, fire_v[j], 0.0).astype(np.float64)


def _windows(run_dir, meta: dict, centres: list[int], fire_t: np.ndarray, fire_v: np.ndarray, before: int,
             after: int, activating: bool) -> list[dict]:
    """Context dicts (as `store.context` returns them) plus `activating`, acts from the firing arrays."""
    if not centres:
        return []
    wins = store.token_windows(run_dir, meta, np.asarray(centres, np.int64), before, after)
    out = []
    for c, w in zip(centres, wins):
        acts = _acts_at(np.asarray(w["token_indices"], np.int64), fire_t, fire_v)
        d = store.context_from_window(w, [float(a) for a in acts], int(c), float(acts[w["token_indices"].index(int(c))]))
        d["activating"] = activating
        out.append(d)
    return out


def heldout_contexts(run_dir: str | Path, dict_name: str, feature: int, n: int = 10, seed: int = 0,
                     before: int = BEFORE, after: int = AFTER) -> list[dict]:
    """n activating + n non-activating windows never shown to an explainer (activating first, value-descending).

    Each dict is what `backend.store.query.context()` returns (tokens, token_indices, acts, peak, value, source,
    token_index) plus `activating` (bool). Fewer come back when the corpus has too few: a feature firing
    in only a few places, or one so dense that no window is free of it.
    """
    if int(n) < 1:
        raise UserError(f"n must be >= 1, not {n}")
    meta = load_run(run_dir)
    f = store.check_feature(run_dir, dict_name, feature)
    T = int(meta["ctx_len"])
    n_seqs = int(meta["n_seqs"])
    heldout_from = int(meta.get("heldout_from") or n_seqs)
    rng = np.random.default_rng([int(seed), f])
    fire_t, fire_v = _firings(run_dir, dict_name, f)
    exclude = _context_peaks(run_dir, dict_name, f)
    span = before + after
    pos = _activating(fire_t, fire_v, exclude, T, heldout_from, int(n), rng, span)
    neg = _silent_centres(fire_t, T, np.arange(heldout_from, n_seqs), int(n), rng, before, after)
    if len(neg) < n:
        neg += _silent_centres(fire_t, T, np.arange(0, heldout_from), int(n) - len(neg), rng, before, after,
                               avoid=np.asarray(neg, np.int64))
    return (_windows(run_dir, meta, [p[0] for p in pos], fire_t, fire_v, before, after, True)
            + _windows(run_dir, meta, neg, fire_t, fire_v, before, after, False))


def explain_contexts(run_dir: str | Path, dict_name: str, feature: int, groups: tuple[str, ...] = ("top",),
                     before: int = BEFORE, after: int = AFTER) -> list[dict]:
    """The analysed windows of the feature (the explainer's data), value-descending, each with `activating` True."""
    meta = load_run(run_dir)
    f = store.check_feature(run_dir, dict_name, feature)
    path = store.store_file(run_dir, dict_name, CONTEXTS)
    rows = store.query_numpy('SELECT token_index, max(value) AS value FROM read_parquet(?) WHERE feature = ? '
                             'AND "group" IN (SELECT unnest(?::VARCHAR[])) GROUP BY token_index '
                             'ORDER BY value DESC, token_index', [path, f, list(groups)])
    fire_t, fire_v = _firings(run_dir, dict_name, f)
    return _windows(run_dir, meta, [int(t) for t in rows["token_index"]], fire_t, fire_v, before, after, True)


def calibration_windows(run_dir: str | Path, dict_name: str, feature: int, n: int = 10, seed: int = 0,
                        before: int = BEFORE, after: int = AFTER) -> list[dict]:
    """n non-activating windows from the *training* sequences only (never the held-out ones), `activating` False."""
    meta = load_run(run_dir)
    f = store.check_feature(run_dir, dict_name, feature)
    T = int(meta["ctx_len"])
    heldout_from = int(meta.get("heldout_from") or meta["n_seqs"])
    rng = np.random.default_rng([int(seed), f, 1])
    fire_t, fire_v = _firings(run_dir, dict_name, f)
    neg = _silent_centres(fire_t, T, np.arange(0, heldout_from), int(n), rng, before, after)
    return _windows(run_dir, meta, neg, fire_t, fire_v, before, after, False)
