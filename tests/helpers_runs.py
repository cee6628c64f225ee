"""Write a small synthetic run folder (run.json + tokens.parquet + activation shards) for tests.

The activations are planted sparse data: each token is a sum of a few of `n_features` random
unit directions with exponential magnitudes, plus an offset and a little noise, so a sparse
dictionary can recover it. The true directions are saved as `true_features.npy` [n_features, d_in].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def make_synthetic_run(tmp_path: str | Path, n_seqs: int = 64, ctx_len: int = 32, d_in: int = 32, seed: int = 0,
                       n_features: int | None = None, k: int = 3, noise: float = 0.01, shard_seqs: int = 16,
                       vocab_size: int = 256, heldout_seqs: int | None = None, hook: str = "blocks.1.hook_resid_post",
                       model: str = "synthetic", dtype: str = "float16", name: str = "synthetic") -> Path:
    """Create `<tmp_path>/<name>/` and return it. Token ids are random in [0, vocab_size); BOS id 1 at position 0."""
    rng = np.random.default_rng(seed)
    run = Path(tmp_path) / name
    (run / "activations").mkdir(parents=True, exist_ok=True)
    n_features = n_features or 2 * d_in
    feats = rng.standard_normal((n_features, d_in)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    offset = rng.standard_normal(d_in).astype(np.float32) * 0.5

    n_tok = n_seqs * ctx_len
    acts = np.tile(offset, (n_tok, 1)) + noise * rng.standard_normal((n_tok, d_in)).astype(np.float32)
    active = np.stack([rng.choice(n_features, size=k, replace=False) for _ in range(n_tok)])  # [n_tok, k]
    mags = rng.exponential(1.0, size=(n_tok, k)).astype(np.float32) + 0.5
    acts += np.einsum("tk,tkd->td", mags, feats[active])
    acts = acts.reshape(n_seqs, ctx_len, d_in)
    acts[:, 0] = 10.0 * offset  # an outlier BOS position, as real models have; excluded everywhere

    shards = []
    for i, s in enumerate(range(0, n_seqs, shard_seqs)):
        part = acts[s:s + shard_seqs].astype(dtype)
        f = f"activations/shard_{i:05d}.npy"
        np.save(run / f, part)
        shards.append({"file": f, "seq_start": s, "n_seqs": int(part.shape[0])})

    ids = rng.integers(3, vocab_size, size=(n_seqs, ctx_len)).astype(np.int32)
    ids[:, 0] = 1
    tok_index = np.arange(n_tok, dtype=np.int64)
    pd.DataFrame({
        "token_index": tok_index,
        "seq": (tok_index // ctx_len).astype(np.int32),
        "pos": (tok_index % ctx_len).astype(np.int16),
        "token_id": ids.reshape(-1),
        "token_str": [f"t{t}" for t in ids.reshape(-1)],
        "source": "synthetic",
    }).to_parquet(run / "tokens.parquet", index=False)

    heldout = heldout_seqs if heldout_seqs is not None else max(1, n_seqs // 8)
    meta = {
        "model": model, "model_source": model, "hook": hook, "corpus": "synthetic", "ctx_len": ctx_len,
        "n_seqs": n_seqs, "n_tokens": n_tok, "d_in": d_in, "seed": seed, "dtype": dtype, "bos_token_id": 1,
        "heldout_from": n_seqs - heldout, "shards": shards, "sources": [], "versions": {}, "created": "synthetic",
    }
    import json

    (run / "run.json").write_text(json.dumps(meta, indent=2))
    np.save(run / "true_features.npy", feats)
    return run
