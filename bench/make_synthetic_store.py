"""Build a synthetic analysed store for latency benchmarks of backend/store.py.

A run of `--tokens` tokens (default 1M: 7,813 sequences of 128) and one dictionary of `--features`
features (default 16k) whose densities follow a power law (a few dense features, a long tail of
rare ones, a slice of dead ones), mean L0 about `--l0` (default 50, i.e. ~50M feature_acts rows).
Firings are bursty (a feature that fires in a sequence tends to fire again nearby), values are
log-normal. The run is written by tests/fake_run.py (the one writer of fake runs, whose analysed files go
through the writers of `backend.analysis.analyze`, so they have the real layout). No activations are
written (the query layer never reads them). Output: bench/results/synthetic_store/ (git-ignored).

    python -m bench.make_synthetic_store [--tokens 1000000] [--features 16384] [--l0 50]   # from the repo root
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from tests.fake_run import write_analysis, write_dictionary, write_run

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "synthetic_store"
WORDS = np.array(["<s>", "the", " of", " and", " to", " a", " in", " is", " that", " for", " it", " with", " as", " was",
                  " on", " be", " by", " this", " are", " or", " from", "\n", ".", ",", " '", "\"", " <b>", " &",
                  " model", " feature", " token", " data", " 1", " 2", "ing", "ed", " über", " café", " x'); DROP"])


def densities(n: int, l0: float, rng: np.random.Generator, dead: float = 0.05) -> np.ndarray:
    """Power-law densities (Zipf-like over rank) scaled to sum to l0, a `dead` fraction at zero."""
    rank = rng.permutation(n) + 1
    d = rank.astype(np.float64) ** -0.7
    d *= l0 / d.sum()
    d = np.minimum(d, 0.5)
    d[rng.random(n) < dead] = 0
    return np.minimum(d * l0 / d.sum(), 0.5)


def firing_tokens(p: float, n_seqs: int, T: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted distinct token indices (never position 0) where a feature of density p fires, in bursts."""
    body = T - 1
    n = rng.binomial(n_seqs * body, p)
    if n == 0:
        return np.zeros(0, np.int64)
    # bursty: a rare feature fires once per sequence it hits, a dense one many times in a sequence
    per_seq = min(float(body), max(1.0, body * p * 2))
    seqs = rng.choice(n_seqs, min(n_seqs, max(1, int(np.ceil(n / per_seq)))), replace=False)
    slots = rng.choice(len(seqs) * body, n, replace=False)
    tok = seqs[slots // body].astype(np.int64) * T + slots % body + 1
    return np.sort(tok)


def blocks(dens: np.ndarray, n_seqs: int, T: int, rng: np.random.Generator, block: int = 1024):
    d_sae = len(dens)
    scale = rng.lognormal(1.0, 0.5, d_sae).astype(np.float32)
    for lo in range(0, d_sae, block):
        hi = min(d_sae, lo + block)
        toks = [firing_tokens(dens[f], n_seqs, T, rng) for f in range(lo, hi)]
        counts = np.array([len(t) for t in toks])
        feat = np.repeat(np.arange(lo, hi, dtype=np.int32), counts)
        tok = np.concatenate(toks) if toks else np.zeros(0, np.int64)
        val = (rng.lognormal(0.0, 0.6, len(feat)).astype(np.float32) * scale[feat]).astype(np.float32)
        yield lo, hi, feat, tok, val


def vocab_strings(vocab: int) -> np.ndarray:
    """Distinct token strings: common words first, then synthetic pieces (some with quotes and markup)."""
    extra = [f"{WORDS[i % len(WORDS)]}{i}" for i in range(len(WORDS), vocab)]
    return np.array(list(WORDS) + extra, dtype=object)[:vocab]


def token_ids(n_seqs: int, T: int, vocab: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(ids [n_seqs, T] Zipfian over the vocabulary with BOS 0 at position 0, a source genre per sequence)."""
    ids = (rng.zipf(1.2, n_seqs * T) - 1) % vocab
    ids[::T] = 0  # position 0: BOS
    return ids.reshape(n_seqs, T), np.array(["wiki", "code", "chat", "math"])[rng.integers(0, 4, n_seqs)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--ctx-len", type=int, default=128)
    ap.add_argument("--features", type=int, default=16384)
    ap.add_argument("--l0", type=float, default=50.0)
    ap.add_argument("--d-in", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    T = a.ctx_len
    n_seqs = -(-a.tokens // T)
    t0 = time.perf_counter()
    if a.out.exists():
        shutil.rmtree(a.out)
    ids, sources = token_ids(n_seqs, T, a.vocab, rng)
    write_run(a.out, ids, vocab_strings(a.vocab), sources, d_in=a.d_in, heldout_from=int(n_seqs * 0.9), seed=a.seed,
              created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    print(f"tokens.parquet: {n_seqs * T:,} tokens ({time.perf_counter() - t0:.1f}s)")

    write_dictionary(a.out, "synth", a.d_in, a.features, kind=None, metrics={
        "l0": a.l0, "explained_variance": 0.8, "fvu": 0.2, "mse": 0.1, "dead_fraction": 0.05, "ce_loss_score": 0.9,
        "delta_ce": 0.1, "kl_div": 0.1})
    dens = densities(a.features, a.l0, rng)
    g = torch.Generator().manual_seed(a.seed)
    W_dec = torch.nn.functional.normalize(torch.randn(a.features, a.d_in, generator=g), dim=1)
    W_U = torch.randn(a.d_in, a.vocab, generator=g)
    labels = [f"feature {i} about 'quoted' things" if i % 7 == 0 else "" for i in range(a.features)]
    st = write_analysis(a.out, "synth", blocks(dens, n_seqs, T, rng), a.features, W_dec=W_dec, W_U=W_U,
                        vocab=vocab_strings(a.vocab).tolist(), labels=labels,
                        label_sources=["auto" if s else "" for s in labels], progress=True)
    print(f"feature_acts.parquet: {st['n_rows']:,} rows ({time.perf_counter() - t0:.1f}s)")
    size = sum(p.stat().st_size for p in a.out.rglob("*") if p.is_file())
    print(f"synthetic store: {a.out} ({size / 2**20:.0f} MiB, {time.perf_counter() - t0:.1f}s)")


if __name__ == "__main__":
    main()
