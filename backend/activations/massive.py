"""Massive-activation tokens: find them once per run, so training and the headline metrics can skip them.

What they are. A few non-BOS tokens of SmolLM2-135M carry a residual vector ~100x the typical norm,
pointing along the BOS vector (one dimension dominates): the "massive activations" of Sun et al. 2024,
"Massive Activations in Large Language Models" (arXiv:2402.17762), which act as extra attention sinks.

Evidence (`python bench/bench_massive_tokens.py --run /tmp/massive_run`: 100k tokens of the default corpus,
blocks.15.hook_resid_post, 99,314 non-BOS tokens):
    non-BOS norm quantiles  p1 141, p50 169, p99 209, p99.9 239, max of the bulk 454 (2.7 x median)
    then a gap to 2,079 (12.3 x median) and 22 tokens up to 27,233 (160 x median); position 0 is 25,059
    all 22 are at position 1 (the first token after BOS; ' cream', 'compile', 'Captain', ...), cosine
    0.98-1.00 with the BOS vector; 0.022% of the tokens, they hold 74% of the mean-centred variance
    a relu-l1 SAE trained with them (2 epochs) spends L0 1,561 on them to reconstruct them (relative
    error 0.004) and scores held-out EV 0.959 with them, 0.528 without; trained without them, at the
    same L0 (159), EV 0.582 on the other tokens
    TopK training with them (1 epoch, batch 2048): 6 loss spikes (2.4-9.5 against ~0.2), all 6 in the
    15 batches that held a massive token; without them: no spike (the loss falls monotonically)
The count above k x median is 22 for every k from 3 to 12: the distribution has one wide gap (2.7x to
12.3x the median) and nothing in it, so the threshold is put at its log-centre.

Rule: a token at position >= 1 is massive when ||x|| > K * median(||x||), the median taken over the
non-BOS tokens of the training split (K = 6: the gap's geometric centre, ~2x margin each side). The
median makes the rule scale-free across models and hooks, and a run without such tokens loses none
(a Gaussian-like bulk never reaches 6x its median in d_in >= 32 dims).
Treatment: excluded from training batches and from the held-out split of the headline metrics, as
position 0 is; metrics report EV with them too. The analysis still covers them (they are real text).

Where the record lives: `run.json["massive"]` for runs cached with this rule; for older runs it is
computed on first use and cached in `<run>/massive_tokens.json` (run.json is never rewritten).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backend.common.atomic import read_json, write_json
from backend.common.layout import load_run

K = 6.0
RULE = "norm > k * median non-BOS norm of the training split"
MASSIVE_JSON = "massive_tokens.json"  # the lazily computed record of a run cached before the rule existed


def shard_norms(run_dir: str | Path, shards: list[dict], ctx_len: int) -> np.ndarray:
    """L2 norm of every cached token: [n_seqs, ctx_len] float32, one memory-mapped shard at a time."""
    run_dir = Path(run_dir)
    n_seqs = sum(int(s["n_seqs"]) for s in shards)
    out = np.empty((n_seqs, ctx_len), dtype=np.float32)
    for s in shards:
        arr = np.load(run_dir / s["file"], mmap_mode="r")  # [n, ctx_len, d_in]
        a = int(s["seq_start"])
        for i in range(0, len(arr), 64):  # 64 sequences at a time keep the float32 copy small
            part = np.asarray(arr[i:i + 64], dtype=np.float32)
            out[a + i:a + i + len(part)] = np.linalg.norm(part, axis=-1)
    return out


def massive_from_norms(norms: np.ndarray, heldout_from: int, k: float = K) -> dict:
    """The record for token norms [n_seqs, ctx_len]: threshold from the training split, flags in both."""
    n_seqs, ctx_len = norms.shape
    bulk = norms[:heldout_from, 1:]
    median = float(np.median(bulk)) if bulk.size else float("nan")
    threshold = k * median if bulk.size else float("inf")
    seq, pos = np.nonzero(norms[:, 1:] > threshold)
    pos = pos + 1
    index = (seq.astype(np.int64) * ctx_len + pos).tolist()
    return {
        "rule": RULE, "k": k, "median_norm": round(median, 4), "threshold": round(threshold, 4),
        "n_train": int((seq < heldout_from).sum()), "n_test": int((seq >= heldout_from).sum()),
        "max_norm": round(float(norms[:, 1:].max()), 2) if norms.size else 0.0,
        "token_index": index,  # sorted: seq-major, then position
    }


def find_massive(run_dir: str | Path, shards: list[dict], ctx_len: int, heldout_from: int) -> dict:
    """The record of a run folder (also one being built: it needs only the shard files)."""
    return massive_from_norms(shard_norms(run_dir, shards, ctx_len), heldout_from)


def massive_record(run_dir: str | Path, meta: dict | None = None) -> dict:
    """run.json's record, else the cached massive_tokens.json, else computed now and cached there
    (atomically; a read-only run folder just recomputes it next time)."""
    run_dir = Path(run_dir)
    meta = meta if meta is not None else load_run(run_dir)
    if "massive" in meta:
        return meta["massive"]
    path = run_dir / MASSIVE_JSON
    if path.is_file():
        try:
            rec = read_json(path)
            if rec.get("rule") == RULE and rec.get("k") == K:
                return rec
        except ValueError:
            pass  # a damaged cache is rebuilt below
    heldout_from = int(meta.get("heldout_from", meta["n_seqs"]))
    rec = find_massive(run_dir, meta["shards"], int(meta["ctx_len"]), heldout_from)
    try:
        write_json(path, rec)
    except OSError:
        pass
    return rec


def summary(rec: dict) -> dict:
    """The record without its token list (what metrics.json and cfg.json carry)."""
    return {k: v for k, v in rec.items() if k != "token_index"}
