"""The tokens the probing and monosemanticity parts read: a seeded sample of whole contexts, with labels.

Contexts are drawn from every split, stratified by source family (brown, sotu, moby-dick, python-stdlib,
math, ...: the part of `source` before ':'), the same contexts for every dictionary of a run (a fixed seed),
so dictionaries are compared on the same tokens. Position 0 and the massive-activation tokens are left out.
Each token carries its context, its family and, for Brown tokens, its universal part-of-speech tag and
whether it is the last token of its word (backend/corpus/pos_tags.py, cached as <run>/pos_tags.parquet).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from backend.activations.activation_store import ActivationStore
from backend.common.atomic import atomic_path
from backend.common.errors import UserError
from backend.common.layout import POS_TAGS, TOKENS, load_run


@dataclass
class TokenSample:
    x: np.ndarray  # [N, d_in] float32 raw activations
    token_index: np.ndarray  # [N] int64
    context: np.ndarray  # [N] int64, the sequence
    family: np.ndarray  # [N] str, source family of the context
    pos: np.ndarray  # [N] str, universal POS tag ("" when untagged)
    last_of_word: np.ndarray  # [N] bool
    pos_note: str = ""  # why there are no POS tags, when there are none


def family_of(source: str) -> str:
    return str(source).split(":")[0]


def pos_table(run_dir: str | Path, tokenizer=None) -> pd.DataFrame:
    """<run>/pos_tags.parquet (token_index, brown_tag, pos, last_of_word), computed once from the run's corpus."""
    from backend.corpus import pos_tags
    from backend.corpus.readers import iter_documents

    run_dir = Path(run_dir)
    path = run_dir / POS_TAGS
    if path.is_file():
        return pd.read_parquet(path)
    meta = load_run(run_dir)
    corpus = meta.get("corpus", "")
    if corpus == "default":
        from backend.corpus.default_corpus import default_corpus_path

        corpus_path = default_corpus_path()
    elif str(corpus).endswith(".parquet"):
        corpus_path = Path(corpus)
    else:
        raise UserError(f"run corpus {corpus!r} carries no part-of-speech tags (the default corpus's Brown part does)")
    if tokenizer is None:
        from backend.model.loading import load_model

        tokenizer = load_model(meta["model"], device="cpu").tokenizer
    spans = pos_tags.corpus_spans(corpus_path)
    ids = pd.read_parquet(run_dir / TOKENS, columns=["token_index", "token_id"]).sort_values("token_index")
    ids = ids["token_id"].to_numpy().reshape(int(meta["n_seqs"]), int(meta["ctx_len"]))
    cols = pos_tags.align(iter_documents(corpus, seed=int(meta.get("seed", 0))), tokenizer, int(meta["ctx_len"]),
                          int(meta["n_seqs"]), ids, spans)
    df = pd.DataFrame(cols)
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return df


def sample_contexts(run_dir: str | Path, n_contexts: int, seed: int = 0) -> np.ndarray:
    """Sorted sequence indices: up to n_contexts, the same share of each source family as the run has
    (at least 2 of each), seeded."""
    meta = load_run(run_dir)
    src = pd.read_parquet(Path(run_dir) / TOKENS, columns=["seq", "pos", "source"])
    src = src[src["pos"] == 0].sort_values("seq")
    fam = src["source"].map(family_of).to_numpy()
    seqs = src["seq"].to_numpy()
    rng = np.random.default_rng(seed)
    frac = min(1.0, n_contexts / max(1, int(meta["n_seqs"])))
    chosen = []
    for f in sorted(set(fam)):
        pool = seqs[fam == f]
        k = min(len(pool), max(2, round(frac * len(pool))))
        chosen.append(rng.choice(pool, size=k, replace=False))
    return np.sort(np.concatenate(chosen))


def load_sample(run_dir: str | Path, n_contexts: int = 400, seed: int = 0, tokenizer=None) -> TokenSample:
    """The sample's activations and labels (module docstring)."""
    run_dir = Path(run_dir)
    store = ActivationStore(run_dir)
    T = store.ctx_len
    seqs = sample_contexts(run_dir, n_contexts, seed)
    if not store.shards:
        raise UserError(f"{run_dir} has no activation shards: probing and NMI read the cached activations")
    x = np.concatenate([np.asarray(store.seqs(int(s), int(s) + 1)[0, 1:], dtype=np.float32) for s in seqs])
    idx = (seqs[:, None] * T + np.arange(1, T)[None, :]).reshape(-1)
    keep = ~store.is_massive(idx)
    x, idx = x[keep], idx[keep]
    tokens = pd.read_parquet(run_dir / TOKENS, columns=["token_index", "source"]).set_index("token_index")
    family = tokens.loc[idx, "source"].map(family_of).to_numpy()
    pos = np.full(len(idx), "", dtype=object)
    last = np.zeros(len(idx), dtype=bool)
    note = ""
    try:
        tags = pos_table(run_dir, tokenizer).set_index("token_index")
        hit = np.isin(idx, tags.index.to_numpy())
        pos[hit] = tags.loc[idx[hit], "pos"].to_numpy()
        last[hit] = tags.loc[idx[hit], "last_of_word"].to_numpy()
    except UserError as e:
        note = str(e)
    return TokenSample(x, idx, idx // T, family, pos.astype(str), last, note)


@torch.no_grad()
def encode_sparse(dictionary, x: np.ndarray, batch: int = 2048, device="cpu"):
    """Codes of x [N, d_in] as a scipy CSR matrix [N, d_sae] float32 (dense codes would not fit for large N)."""
    import scipy.sparse as sp

    parts = []
    for i in range(0, len(x), batch):
        f = dictionary.encode(torch.from_numpy(x[i:i + batch]).to(device)).float().cpu()
        r, c = f.nonzero(as_tuple=True)
        parts.append(sp.csr_matrix((f[r, c].numpy(), (r.numpy(), c.numpy())), shape=f.shape))
    if not parts:
        return sp.csr_matrix((0, dictionary.d_sae), dtype=np.float32)
    return sp.vstack(parts).tocsr()
