"""Analyse every feature of a dictionary into the Parquet stores the explorer reads.

One streaming pass encodes all tokens of the run (train and held-out, position 0 dropped) batch by
batch and keeps only the sparse firings (feature, token_index, value); the dense [N, d_sae] code
matrix never exists. Past `spill_rows` firings the sparse rows spill to disk, bucketed by feature
range, so a corpus whose firings exceed memory still works. Each feature block is then sorted by
(feature, token_index) and reduced with vectorised NumPy: density, max/mean, activation histogram,
top contexts and quantile samples. Logit effects (`W_dec @ W_U`, Bricken et al. 2023, "Towards
Monosemanticity") and decoder-cosine neighbours are chunked matmuls over the weights.

Outputs in `dictionaries/<name>/` (schemas in docs/CONTRACTS.md), each written atomically:
`features.parquet`, `feature_acts.parquet`, `contexts.parquet`, `analysis.json`.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from backend.common.atomic import atomic_path, write_json
from backend.common.errors import UserError
from backend.common.layout import (
    ANALYSIS_JSON,
    CFG_JSON,
    CONTEXTS,
    FEATURE_ACTS,
    FEATURES,
    dict_dir,
    load_run,
)
from backend.common.names import check_output

GROUPS = ("top", "q1", "q2", "q3", "q4", "q5")  # q5 is the highest activation interval


@dataclass
class AnalyzeConfig:
    """What `python -m backend analyze` keeps per feature, and how it lays the Parquet files out."""

    n_top: int = 20
    """Max-activating contexts per feature."""
    max_per_seq: int = 2
    """Top contexts prefer at most this many peaks from one sequence, so that they come from several texts."""
    n_quantiles: int = 5
    """Equal-width intervals of (0, max_act] that contexts are sampled from."""
    per_quantile: int = 5
    """Contexts sampled per interval."""
    n_logits: int = 10
    """Top and bottom logit-effect tokens."""
    n_neighbours: int = 5
    """Nearest features by decoder cosine."""
    hist_bins: int = 50
    """Bins of the activation and logit-effect histograms."""
    seed: int = 0
    """Seed of the quantile sampling."""
    window_before: int = 24
    """Tokens before the peak in the context window the explorer shows (recorded in analysis.json)."""
    window_after: int = 8
    """Tokens after the peak in that window."""
    acts_row_group: int = 262144
    """feature_acts rows per row group: DuckDB skips groups by feature min/max, and fewer groups cost less per query."""
    features_row_group: int = 1024
    """features rows per row group: the feature page reads one row, the feature list scans a few columns of all."""
    contexts_row_group: int = 8192
    """contexts rows per row group."""
    spill_rows: int = 50_000_000
    """Firings held in memory before spilling to disk (16 bytes each: 800 MB)."""
    weight_chunk: int = 512
    """Features per chunk of the logit-effect and cosine matmuls."""


# --------------------------------------------------------------------------- sparse collection


class SparseCollector:
    """Accumulates firings (feature int32, token_index int64, value float32) arriving in token order.

    `blocks()` yields them per feature range, each block sorted by (feature, token_index). Below
    `spill_rows` everything stays in memory (one block); past it, rows go to temporary .npy files
    bucketed by feature range and each bucket is loaded and sorted on its own.
    """

    def __init__(self, d_sae: int, spill_rows: int, expected_rows: int | None = None, tmp_root: Path | None = None):
        self.d_sae = d_sae
        self.spill_rows = spill_rows
        self.expected_rows = expected_rows
        self.tmp_root = tmp_root
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.in_memory = 0
        self.total = 0
        self.spill_dir: Path | None = None
        self.n_buckets = 1
        self.n_spills = 0

    def add(self, feat: np.ndarray, tok: np.ndarray, val: np.ndarray) -> None:
        self.parts.append((feat.astype(np.int32, copy=False), tok.astype(np.int64, copy=False), val.astype(np.float32, copy=False)))
        self.in_memory += len(feat)
        self.total += len(feat)
        if self.in_memory > self.spill_rows:
            self._spill()

    def _bucket_size(self) -> int:
        return -(-self.d_sae // self.n_buckets)

    def _spill(self) -> None:
        if self.spill_dir is None:
            self.spill_dir = Path(tempfile.mkdtemp(prefix=".analyze_spill_", dir=self.tmp_root))
            # buckets sized so one bucket of the expected total fits in about half the memory budget
            expect = max(self.expected_rows or 0, 2 * self.in_memory)
            self.n_buckets = int(min(self.d_sae, max(2, math.ceil(expect / max(1, self.spill_rows // 2)))))
        feat, tok, val = self._concat()
        bucket = feat // self._bucket_size()
        order = np.argsort(bucket, kind="stable")  # stable keeps token order inside a bucket
        bounds = np.searchsorted(bucket[order], np.arange(self.n_buckets + 1))
        for b in range(self.n_buckets):
            sl = order[bounds[b]:bounds[b + 1]]
            if len(sl):
                np.savez(self.spill_dir / f"b{b:05d}_{self.n_spills:05d}.npz", f=feat[sl], t=tok[sl], v=val[sl])
        self.n_spills += 1
        self.parts, self.in_memory = [], 0

    def _concat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.parts:
            return np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.float32)
        out = tuple(np.concatenate([p[k] for p in self.parts]) for k in range(3))
        self.parts = []
        return out  # type: ignore[return-value]

    def blocks(self) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
        """(feature_lo, feature_hi, feat, tok, val) per feature range, sorted by (feature, token_index)."""
        if self.spill_dir is None:
            feat, tok, val = self._concat()
            order = _feature_order(feat, self.d_sae)  # rows arrive in token order: stable sort gives (feature, token)
            yield 0, self.d_sae, feat[order], tok[order], val[order]
            return
        if self.in_memory:
            self._spill()
        size = self._bucket_size()
        try:
            for b in range(self.n_buckets):
                lo, hi = b * size, min(self.d_sae, (b + 1) * size)
                files = sorted(self.spill_dir.glob(f"b{b:05d}_*.npz"))  # spill order = token order
                chunks = [np.load(f) for f in files]
                feat = np.concatenate([c["f"] for c in chunks]) if chunks else np.zeros(0, np.int32)
                tok = np.concatenate([c["t"] for c in chunks]) if chunks else np.zeros(0, np.int64)
                val = np.concatenate([c["v"] for c in chunks]) if chunks else np.zeros(0, np.float32)
                for f in files:
                    f.unlink()
                order = _feature_order(feat - lo, hi - lo)
                yield lo, hi, feat[order], tok[order], val[order]
        finally:
            self.close()

    def close(self) -> None:
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)


# --------------------------------------------------------------------------- per-feature statistics


def _feature_order(feat: np.ndarray, n: int) -> np.ndarray:
    """Stable argsort of feature ids; as uint16 when they fit, where NumPy's stable sort is a radix sort."""
    return np.argsort(feat.astype(np.uint16) if n <= 65536 else feat, kind="stable")


def _group_rank(keys: np.ndarray) -> np.ndarray:
    """Rank of each element within its run of equal keys (keys must be grouped, i.e. sorted)."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, np.int64)
    start = np.ones(n, bool)
    start[1:] = keys[1:] != keys[:-1]
    idx = np.arange(n)
    return idx - np.maximum.accumulate(np.where(start, idx, 0))


def _desc_value_key(group: np.ndarray, val: np.ndarray) -> np.ndarray:
    """int64 key sorting by group ascending then value descending (values are > 0 float32)."""
    bits = val.astype(np.float32, copy=False).view(np.uint32).astype(np.int64)  # monotone for positive floats
    return (group.astype(np.int64) << 32) | (0xFFFFFFFF - bits)


def _top_rows_mask(starts: np.ndarray, n_fires: np.ndarray, val: np.ndarray, m: int) -> np.ndarray:
    """Rows whose value is at least their feature's m-th largest (every row of a feature with <= m rows).

    A value-threshold set: with a row it holds every higher-valued row of the same feature."""
    keep = np.ones(len(val), bool)
    for j in np.flatnonzero(n_fires > m):
        a, b = starts[j], starts[j + 1]
        seg = val[a:b]
        keep[a:b] = seg >= np.partition(seg, len(seg) - m)[len(seg) - m]
    return keep


def _top_contexts(f: np.ndarray, t: np.ndarray, v: np.ndarray, nb: int, ctx_len: int, n_top: int, max_per_seq: int,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top contexts of firings (f local feature, t token, v value): value-descending within each feature, at
    most max_per_seq peaks per sequence first, filled up from the rest only when a feature fires in too few
    sequences. Returns the picks (f, t, v) in (feature, value desc) order and the number of first-tier rows
    seen per feature (the pick is exact for a feature when that is >= n_top or all its rows were given)."""
    order = np.argsort(_desc_value_key(f, v), kind="stable")
    f_s, t_s, v_s = f[order], t[order], v[order]
    first = np.searchsorted(f_s, np.arange(nb))  # first row of each feature
    seq_key = f_s * (int(t.max()) // ctx_len + 1 if len(t) else 1) + t_s // ctx_len
    o2 = np.argsort(seq_key, kind="stable")  # groups (feature, seq) keeping value order inside
    in_seq = np.empty(len(o2), np.int64)
    in_seq[o2] = _group_rank(seq_key[o2])
    tier0 = in_seq < max_per_seq
    c0 = np.cumsum(tier0)
    c1 = np.cumsum(~tier0)
    base0 = np.concatenate([[0], c0])[first]  # tier-0 rows before each feature's first row
    base1 = np.concatenate([[0], c1])[first]
    rank0 = c0 - 1 - base0[f_s]
    rank1 = c1 - 1 - base1[f_s]
    n_tier0 = np.bincount(f_s[tier0], minlength=nb)
    pick = (tier0 & (rank0 < n_top)) | (~tier0 & (rank1 < n_top - n_tier0[f_s]))
    return f_s[pick], t_s[pick], v_s[pick], n_tier0


def block_stats(lo: int, hi: int, feat: np.ndarray, tok: np.ndarray, val: np.ndarray, ctx_len: int,
                cfg: AnalyzeConfig, rng: np.random.Generator) -> tuple[dict, dict]:
    """Statistics of features [lo, hi) from their firings sorted by (feature, token_index).

    Returns (stats, contexts): stats holds arrays over the block's features (`n_fires`, `max_act`,
    `sum_act`, `hist_counts` [nb, bins]); contexts holds flat columns (feature, group, rank,
    token_index, value) ordered by feature, group (top, q1..q5) and rank. Everything is O(rows)
    except sorts over small candidate sets (the top rows of each feature, a few random rows per interval).
    """
    nb = hi - lo
    local = (feat - lo).astype(np.int64)
    stats, starts, scaled = _activation_stats(local, val, nb, cfg.hist_bins)
    top = _block_top_contexts(local, tok, val, starts, stats["n_fires"], ctx_len, cfg)
    quantiles = _block_quantile_samples(local, tok, val, scaled, nb, cfg, rng)
    return stats, _merge_contexts(top, quantiles, lo)


def _activation_stats(local: np.ndarray, val: np.ndarray, nb: int, bins: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """(stats, starts [nb+1] row offsets of each feature, scaled [rows] = value / its feature's max, in (0, 1]).

    stats: n_fires, max_act, sum_act and the activation histogram over [0, max] per feature (the max
    itself falls in the last bin)."""
    n_fires = np.bincount(local, minlength=nb).astype(np.int64)
    starts = np.zeros(nb + 1, np.int64)
    np.cumsum(n_fires, out=starts[1:])
    fired = n_fires > 0
    max_act = np.zeros(nb, np.float32)
    sum_act = np.zeros(nb, np.float64)
    if len(val):
        max_act[fired] = np.maximum.reduceat(val, starts[:-1][fired])
        sum_act[fired] = np.add.reduceat(val.astype(np.float64), starts[:-1][fired])
    scaled = val / np.where(max_act > 0, max_act, 1).astype(np.float64)[local]
    hist_bin = np.minimum((scaled * bins).astype(np.int64), bins - 1)
    hist = np.bincount(local * bins + hist_bin, minlength=nb * bins).reshape(nb, bins)
    return {"n_fires": n_fires, "max_act": max_act, "sum_act": sum_act, "hist_counts": hist}, starts, scaled


def _block_top_contexts(local: np.ndarray, tok: np.ndarray, val: np.ndarray, starts: np.ndarray, n_fires: np.ndarray,
                        ctx_len: int, cfg: AnalyzeConfig) -> tuple[np.ndarray, ...]:
    """(feature, token_index, value, rank) of the top contexts, in (feature, value desc) order.

    Computed on each feature's top rows (a value-threshold set, so exact whenever it holds n_top
    first-tier rows); features that fire in too few sequences are redone on all their rows."""
    nb = len(n_fires)
    m = max(cfg.n_top * 10, cfg.n_top * cfg.max_per_seq)
    cand = np.flatnonzero(_top_rows_mask(starts, n_fires, val, m))
    tf, tt, tv, n_tier0 = _top_contexts(local[cand], tok[cand], val[cand], nb, ctx_len, cfg.n_top, cfg.max_per_seq)
    redo = (n_tier0 < cfg.n_top) & (n_fires > m)
    if redo.any():
        rows = np.flatnonzero(redo[local])
        rf, rt, rv, _ = _top_contexts(local[rows], tok[rows], val[rows], nb, ctx_len, cfg.n_top, cfg.max_per_seq)
        keep = ~redo[tf]
        tf, tt, tv = np.concatenate([tf[keep], rf]), np.concatenate([tt[keep], rt]), np.concatenate([tv[keep], rv])
        o = np.argsort(_desc_value_key(tf, tv), kind="stable")
        tf, tt, tv = tf[o], tt[o], tv[o]
    return tf, tt, tv, _group_rank(tf)


def _block_quantile_samples(local: np.ndarray, tok: np.ndarray, val: np.ndarray, scaled: np.ndarray, nb: int,
                            cfg: AnalyzeConfig, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(feature, interval, token_index, value, rank) of the quantile samples, in (feature, interval, value desc) order.

    Interval k covers (k*max/Q, (k+1)*max/Q]; a fixed-seed random sample per interval. Each row gets a
    uniform key; the sample is the smallest keys of each interval, found among the rows whose key is
    below ~4x the needed fraction (intervals short of candidates take all their rows)."""
    Q, K = cfg.n_quantiles, cfg.per_quantile
    q = np.clip(np.ceil(scaled * Q).astype(np.int64) - 1, 0, Q - 1)
    gkey = local * Q + q
    u = rng.random(len(val))
    size = np.bincount(gkey, minlength=nb * Q)
    cut = np.minimum(1.0, 4.0 * K / np.maximum(size, 1))
    is_cand = u < cut[gkey]
    short = np.bincount(gkey[is_cand], minlength=nb * Q) < np.minimum(K, size)
    if short.any():
        is_cand |= short[gkey]
    cand = np.flatnonzero(is_cand)
    o3 = cand[np.lexsort((u[cand], gkey[cand]))]
    sel = o3[_group_rank(gkey[o3]) < K]
    sel = sel[np.argsort(_desc_value_key(gkey[sel], val[sel]), kind="stable")]
    return local[sel], q[sel], tok[sel], val[sel], _group_rank(gkey[sel])


def _merge_contexts(top: tuple[np.ndarray, ...], quantiles: tuple[np.ndarray, ...], lo: int) -> dict:
    """Top and quantile rows as one set of contexts.parquet columns, sorted by (feature, group, rank) with
    group 0 = top, 1..Q = q1..qQ; feature ids back in the dictionary's numbering (+ lo)."""
    tf, tt, tv, top_rank = top
    qs_f, qs_q, qs_t, qs_v, qs_rank = quantiles
    all_f = np.concatenate([tf, qs_f])
    all_g = np.concatenate([np.zeros(len(tf), np.int64), qs_q + 1])
    all_r = np.concatenate([top_rank, qs_rank])
    o4 = np.lexsort((all_r, all_g, all_f))
    return {
        "feature": (all_f[o4] + lo).astype(np.int32),
        "group": all_g[o4].astype(np.int8),
        "rank": all_r[o4].astype(np.int16),
        "token_index": np.concatenate([tt, qs_t])[o4].astype(np.int64),
        "value": np.concatenate([tv, qs_v])[o4].astype(np.float32),
    }


# --------------------------------------------------------------------------- weight-based statistics


def logit_effects(W_dec: torch.Tensor, W_U: torch.Tensor, k: int = 10, bins: int = 50, chunk: int = 512,
                  progress: bool = False) -> dict[str, np.ndarray]:
    """Top/bottom-k logit effects of each feature (rows of W_dec @ W_U) and a histogram of all of them.

    W_dec [d_sae, d_in], W_U [d_in, vocab] (final norm folded in). Returns arrays
    top_ids/top_values/bottom_ids/bottom_values [d_sae, k] and hist_edges [d_sae, bins+1], hist_counts [d_sae, bins].
    """
    d_sae = W_dec.shape[0]
    k = min(k, W_U.shape[1])
    out = {
        "top_ids": np.zeros((d_sae, k), np.int32), "top_values": np.zeros((d_sae, k), np.float32),
        "bottom_ids": np.zeros((d_sae, k), np.int32), "bottom_values": np.zeros((d_sae, k), np.float32),
        "hist_edges": np.zeros((d_sae, bins + 1), np.float64), "hist_counts": np.zeros((d_sae, bins), np.int64),
    }
    W_U = W_U.float()
    steps = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    for a in tqdm(range(0, d_sae, chunk), desc="logit effects", disable=not progress, leave=False):
        with torch.inference_mode():
            L = W_dec[a:a + chunk].to(W_U.device, torch.float32) @ W_U  # [c, vocab]
            tv, ti = L.topk(k, dim=1)
            bv, bi = L.topk(k, dim=1, largest=False)
            lo, hi = torch.aminmax(L, dim=1)
            span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
            # bin index in place (L is not needed any more): floor((L - lo) / span * bins), the max in the last bin
            L.sub_(lo[:, None]).mul_((bins / span)[:, None])
            b = L.to(torch.int32).clamp_(0, bins - 1)
            b += (torch.arange(len(L), device=L.device, dtype=torch.int32) * bins)[:, None]
            counts = torch.bincount(b.flatten(), minlength=len(L) * bins).view(len(L), bins)
        c = len(L)
        out["top_ids"][a:a + c], out["top_values"][a:a + c] = ti.cpu().numpy(), tv.cpu().numpy()
        out["bottom_ids"][a:a + c], out["bottom_values"][a:a + c] = bi.cpu().numpy(), bv.cpu().numpy()
        lo64, hi64 = lo.double().cpu(), hi.double().cpu()
        out["hist_edges"][a:a + c] = (lo64[:, None] + (hi64 - lo64)[:, None] * steps[None, :]).numpy()
        out["hist_counts"][a:a + c] = counts.cpu().numpy()
    return out


def decoder_neighbours(W_dec: torch.Tensor, k: int = 5, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest other features by cosine of decoder rows: (ids [d_sae, k] int32, cos [d_sae, k] float32)."""
    d_sae = W_dec.shape[0]
    k = min(k, d_sae - 1)
    W = torch.nn.functional.normalize(W_dec.float(), dim=1)
    ids = np.zeros((d_sae, k), np.int32)
    cos = np.zeros((d_sae, k), np.float32)
    with torch.inference_mode():
        for a in range(0, d_sae, chunk):
            C = W[a:a + chunk] @ W.T  # [c, d_sae]
            r = torch.arange(len(C), device=C.device)
            C[r, r + a] = -float("inf")  # not its own neighbour
            v, i = C.topk(k, dim=1)
            ids[a:a + len(C)], cos[a:a + len(C)] = i.cpu().numpy(), v.cpu().numpy()
    return ids, cos


def decode_tokens(tokenizer, ids: np.ndarray) -> dict[int, str]:
    """Text of each distinct single token id (tokenizer.batch_decode or .decode; str(id) without a tokenizer)."""
    uniq = np.unique(ids).tolist()
    if tokenizer is None:
        return {i: str(i) for i in uniq}
    if hasattr(tokenizer, "batch_decode"):
        texts = tokenizer.batch_decode([[i] for i in uniq], clean_up_tokenization_spaces=False)
    else:
        texts = [tokenizer.decode([i]) for i in uniq]
    return dict(zip(uniq, texts))


# --------------------------------------------------------------------------- writers


def _row_offsets(n: int, k: int) -> pa.Array:
    """Offsets of n list rows of k items each (all zero when k = 0: n empty lists)."""
    return pa.array(np.arange(0, n * k + 1, k, dtype=np.int32) if k else np.zeros(n + 1, np.int32))


def _list_array(mat: np.ndarray, typ: pa.DataType) -> pa.Array:
    """[n, k] matrix -> list<typ> array of n rows of k."""
    n, k = mat.shape
    return pa.ListArray.from_arrays(_row_offsets(n, k), pa.array(np.ascontiguousarray(mat).reshape(-1), type=typ))


def _str_list_array(ids: np.ndarray, table: dict[int, str]) -> pa.Array:
    """[n, k] token ids -> list<string> array of their texts."""
    n, k = ids.shape
    return pa.ListArray.from_arrays(_row_offsets(n, k), pa.array([table[i] for i in ids.reshape(-1).tolist()], type=pa.string()))


def features_table(n_tokens: int, n_fires: np.ndarray, max_act: np.ndarray, sum_act: np.ndarray, hist_counts: np.ndarray,
                   logits: dict[str, np.ndarray], token_text: dict[int, str], nb_ids: np.ndarray, nb_cos: np.ndarray,
                   labels: list[str] | None = None, label_sources: list[str] | None = None) -> pa.Table:
    """features.parquet as a table (schema in docs/CONTRACTS.md)."""
    d_sae, B = hist_counts.shape
    mean_act = np.where(n_fires > 0, sum_act / np.maximum(n_fires, 1), 0).astype(np.float32)
    edges = max_act.astype(np.float64)[:, None] * np.linspace(0, 1, B + 1)[None, :]
    return pa.table({
        "feature": pa.array(np.arange(d_sae, dtype=np.int32)),
        "density": pa.array(n_fires / max(1, n_tokens), type=pa.float64()),
        "n_fires": pa.array(n_fires.astype(np.int64)),
        "max_act": pa.array(max_act.astype(np.float32)),
        "mean_act": pa.array(mean_act),
        "hist_edges": _list_array(edges, pa.float64()),
        "hist_counts": _list_array(hist_counts.astype(np.int64), pa.int64()),
        "top_logit_ids": _list_array(logits["top_ids"], pa.int32()),
        "top_logit_tokens": _str_list_array(logits["top_ids"], token_text),
        "top_logit_values": _list_array(logits["top_values"], pa.float32()),
        "bottom_logit_ids": _list_array(logits["bottom_ids"], pa.int32()),
        "bottom_logit_tokens": _str_list_array(logits["bottom_ids"], token_text),
        "bottom_logit_values": _list_array(logits["bottom_values"], pa.float32()),
        "logit_hist_edges": _list_array(logits["hist_edges"], pa.float64()),
        "logit_hist_counts": _list_array(logits["hist_counts"], pa.int64()),
        "neighbours": _list_array(nb_ids, pa.int32()),
        "neighbour_cos": _list_array(nb_cos, pa.float32()),
        "label": pa.array(labels or [""] * d_sae, type=pa.string()),
        "label_source": pa.array(label_sources or [""] * d_sae, type=pa.string()),
    })


def empty_logits(d_sae: int, k: int, bins: int) -> dict[str, np.ndarray]:
    return {
        "top_ids": np.zeros((d_sae, 0), np.int32), "top_values": np.zeros((d_sae, 0), np.float32),
        "bottom_ids": np.zeros((d_sae, 0), np.int32), "bottom_values": np.zeros((d_sae, 0), np.float32),
        "hist_edges": np.zeros((d_sae, 0), np.float64), "hist_counts": np.zeros((d_sae, 0), np.int64),
    }


ACTS_SCHEMA = pa.schema([("feature", pa.int32()), ("token_index", pa.int64()), ("value", pa.float32())])
CONTEXTS_SCHEMA = pa.schema([("feature", pa.int32()), ("group", pa.string()), ("rank", pa.int16()),
                             ("token_index", pa.int64()), ("value", pa.float32())])


def acts_writer(path: Path) -> pq.ParquetWriter:
    """feature_acts.parquet writer: token_index delta-encoded (sorted within a feature), statistics on."""
    return pq.ParquetWriter(path, ACTS_SCHEMA, compression="zstd", compression_level=1,
                            use_dictionary=["feature"], column_encoding={"token_index": "DELTA_BINARY_PACKED",
                                                                          "value": "BYTE_STREAM_SPLIT"})


def contexts_batch(ctx: dict) -> pa.Table:
    groups = pa.DictionaryArray.from_arrays(pa.array(ctx["group"], pa.int8()), pa.array(GROUPS)).cast(pa.string())
    return pa.table({"feature": ctx["feature"], "group": groups, "rank": ctx["rank"],
                     "token_index": ctx["token_index"], "value": ctx["value"]}, schema=CONTEXTS_SCHEMA)


def write_sparse_store(out: Path, blocks: Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]], d_sae: int,
                       ctx_len: int, cfg: AnalyzeConfig, progress: bool = False) -> dict:
    """Write feature_acts.parquet and contexts.parquet from sorted feature blocks; return the per-feature stats."""
    rng = np.random.default_rng(cfg.seed)
    n_fires = np.zeros(d_sae, np.int64)
    max_act = np.zeros(d_sae, np.float32)
    sum_act = np.zeros(d_sae, np.float64)
    hist = np.zeros((d_sae, cfg.hist_bins), np.int64)
    ctx_tables = []
    n_rows = 0
    with atomic_path(out / FEATURE_ACTS) as acts_tmp:
        writer = acts_writer(acts_tmp)
        try:
            for lo, hi, feat, tok, val in tqdm(blocks, desc="feature stats", disable=not progress, leave=False):
                s, ctx = block_stats(lo, hi, feat, tok, val, ctx_len, cfg, rng)
                n_fires[lo:hi], max_act[lo:hi], sum_act[lo:hi], hist[lo:hi] = s["n_fires"], s["max_act"], s["sum_act"], s["hist_counts"]
                ctx_tables.append(contexts_batch(ctx))
                if len(feat):
                    writer.write_table(pa.table({"feature": feat, "token_index": tok, "value": val}, schema=ACTS_SCHEMA),
                                       row_group_size=cfg.acts_row_group)
                n_rows += len(feat)
        finally:
            writer.close()
    with atomic_path(out / CONTEXTS) as tmp:
        pq.write_table(pa.concat_tables(ctx_tables) if ctx_tables else CONTEXTS_SCHEMA.empty_table(), tmp,
                       row_group_size=cfg.contexts_row_group, compression="zstd", compression_level=1)
    return {"n_fires": n_fires, "max_act": max_act, "sum_act": sum_act, "hist_counts": hist, "n_rows": n_rows}


# --------------------------------------------------------------------------- the pipeline


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t0


def _open_inputs(run_dir: str | Path, dict_name: str, dictionary: torch.nn.Module | None, dev: torch.device):
    """(dictionary in eval mode on dev, the run's ActivationStore, the dictionary folder); UserErrors for a
    missing dictionary or a run too short to analyse."""
    from backend.activations.activation_store import ActivationStore
    from backend.dictionaries import load_dictionary

    out = dict_dir(run_dir, dict_name)
    if dictionary is None:
        if not (out / CFG_JSON).is_file():
            raise UserError(f"no dictionary {dict_name!r} in {run_dir}")
        dictionary = load_dictionary(out)
    check_output(out, "dictionary folder")  # before the slow passes, not when the first file is written
    out.mkdir(parents=True, exist_ok=True)
    acts = ActivationStore(run_dir, exclude_massive=False)  # every token is real text: massive ones are analysed too
    if acts.ctx_len < 2:
        raise UserError(f"run {run_dir} has ctx_len {acts.ctx_len}: nothing to analyse after dropping position 0")
    return dictionary.to(dev).eval(), acts, out


@torch.inference_mode()
def collect_firings(dictionary: torch.nn.Module, acts, collector: SparseCollector, batch_tokens: int,
                    dev: torch.device, desc: str = "encode", progress: bool = False) -> None:
    """Pass 1: encode every token of the run (position 0 dropped) batch by batch into `collector`'s sparse rows."""
    T, n_tokens = acts.ctx_len, acts.n_tokens("all")
    seqs_per_batch = max(1, batch_tokens // (T - 1))
    pos = np.arange(1, T, dtype=np.int64)
    with tqdm(total=n_tokens, desc=desc, unit="tok", disable=not progress) as bar:
        for a in range(0, acts.n_seqs, seqs_per_batch):
            b = min(acts.n_seqs, a + seqs_per_batch)
            x = acts.seqs(a, b)[:, 1:]  # [n, T-1, d_in], position 0 dropped
            tok_idx = (np.arange(a, b, dtype=np.int64)[:, None] * T + pos[None, :]).reshape(-1)
            x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32).reshape(-1, acts.d_in)).to(dev)
            f = dictionary.encode(x)  # [B, d_sae]
            rows, cols = torch.nonzero(f > 0, as_tuple=True)  # row-major: token order, then feature
            collector.add(cols.cpu().numpy(), tok_idx[rows.cpu().numpy()], f[rows, cols].float().cpu().numpy())
            if collector.expected_rows is None and collector.total:
                collector.expected_rows = int(collector.total * n_tokens / len(tok_idx))
            bar.update(len(tok_idx))


def weight_stats(W_dec: torch.Tensor, lm, cfg: AnalyzeConfig, timings: dict[str, float], progress: bool = False) -> dict:
    """Logit effects (with the text of their tokens) and decoder neighbours: everything read from the weights.

    W_dec [d_sae, d_in] on the device of the model's unembedding. When the hook space is not the residual
    stream's width there is no direct logit effect and the logit columns are empty."""
    from backend.model.loading import unembedding

    with _timed(timings, "logits"):
        W_U = unembedding(lm.model).to(W_dec.device)
        if W_U.shape[0] == W_dec.shape[1]:
            logits = logit_effects(W_dec, W_U, cfg.n_logits, cfg.hist_bins, cfg.weight_chunk, progress)
            token_text = decode_tokens(lm.tokenizer, np.concatenate([logits["top_ids"], logits["bottom_ids"]]))
        else:
            logits, token_text = empty_logits(W_dec.shape[0], cfg.n_logits, cfg.hist_bins), {}
    with _timed(timings, "neighbours"):
        nb_ids, nb_cos = decoder_neighbours(W_dec, cfg.n_neighbours, cfg.weight_chunk)
    return {"logits": logits, "token_text": token_text, "nb_ids": nb_ids, "nb_cos": nb_cos}


def write_features(out: Path, table: pa.Table, cfg: AnalyzeConfig) -> None:
    """features.parquet, atomically, in row groups the feature page and the feature list read cheaply."""
    with atomic_path(out / FEATURES) as tmp:
        pq.write_table(table, tmp, row_group_size=cfg.features_row_group, compression="snappy")


def _analysis_record(dict_name: str, meta: dict, acts, st: dict, cfg: AnalyzeConfig, timings: dict[str, float],
                     spilled: bool, device: str, batch_tokens: int) -> dict:
    """analysis.json: what analyze read, the settings it used and how long each step took."""
    return {
        "dictionary": dict_name, "d_sae": len(st["n_fires"]), "model": meta["model"], "hook": meta["hook"],
        "tokens": {"n_tokens": acts.n_tokens("all"), "n_seqs": acts.n_seqs, "ctx_len": acts.ctx_len,
                   "positions": "1..ctx_len-1 (position 0 dropped)", "splits": "train + held-out"},
        "windows": {"before": cfg.window_before, "after": cfg.window_after},
        "feature_acts_rows": st["n_rows"], "alive": int((st["n_fires"] > 0).sum()), "spilled": spilled,
        "device": device, "batch_tokens": batch_tokens, "config": asdict(cfg),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def analyze(run_dir: str | Path, dict_name: str, lm=None, device: str = "auto", batch_tokens: int = 8192, *,
            dictionary: torch.nn.Module | None = None, cfg: AnalyzeConfig | None = None, progress: bool = True) -> Path:
    """Analyse dictionary `dict_name` of the run at `run_dir`; return its folder.

    lm: a `backend.model.loading.LoadedModel` (only W_U and the tokenizer are used); loaded from run.json when None.
    dictionary: an already-loaded dictionary (else `load_dictionary(dictionaries/<name>)`).
    """
    from backend.model.loading import load_model, pick_device

    cfg = cfg or AnalyzeConfig()
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    with _timed(timings, "load"):
        meta = load_run(run_dir)
        dev = pick_device(device)
        dictionary, acts, out = _open_inputs(run_dir, dict_name, dictionary, dev)
    d_sae = int(dictionary.W_dec.shape[0])
    collector = SparseCollector(d_sae, cfg.spill_rows, tmp_root=out)
    try:
        with _timed(timings, "encode"):
            collect_firings(dictionary, acts, collector, batch_tokens, dev, f"encode {dict_name}", progress)
        with _timed(timings, "feature_stats"):  # pass 2: per feature block, sort and reduce
            st = write_sparse_store(out, collector.blocks(), d_sae, acts.ctx_len, cfg, progress)
    finally:
        collector.close()
    if lm is None:
        with _timed(timings, "load_model"):
            lm = load_model(meta["model"], device=str(dev))
    w = weight_stats(dictionary.W_dec.detach(), lm, cfg, timings, progress)
    n_tokens = acts.n_tokens("all")
    write_features(out, features_table(n_tokens, st["n_fires"], st["max_act"], st["sum_act"], st["hist_counts"],
                                       w["logits"], w["token_text"], w["nb_ids"], w["nb_cos"]), cfg)
    timings["total"] = time.perf_counter() - t_start
    write_json(out / ANALYSIS_JSON, _analysis_record(dict_name, meta, acts, st, cfg, timings, collector.spill_dir is not None,
                                                     str(dev), batch_tokens))
    return out
