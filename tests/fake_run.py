"""Fake run folders for tests and benchmarks, written to the on-disk contract of docs/CONTRACTS.md.

One module writes every fake run, so a change of the contract is made once: `write_run` (run.json,
tokens.parquet and, when given activations, the shards), `write_dictionary` (cfg.json in the SAELens
layout, optional `sae_weights.safetensors`, metrics.json) and `write_analysis` (features.parquet,
feature_acts.parquet, contexts.parquet and analysis.json from planted firings). The analysed files go
through the writers of `backend.analysis.analyze` (`write_sparse_store`, `features_table`), so their
statistics, contexts and Parquet layout are what a real analysis writes for the same firings;
`check_run` asserts the documented columns and types, for fake runs and real ones alike.

Callers choose the size (the shape of the token ids, d_in, d_sae) and what is planted (the activations,
the firings, labels); `planted_activations` and `make_synthetic_run` are the sparse-directions case that
training tests recover. Benchmarks import this as `tests.fake_run` (run them from the repository root).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from backend.common.layout import (
    ACTS_DIR,
    ANALYSIS_JSON,
    CFG_JSON,
    CONTEXTS,
    DICTS_DIR,
    FEATURE_ACTS,
    FEATURES,
    METRICS,
    RUN_JSON,
    TOKENS,
    WEIGHTS,
    shard_name,
)

Block = tuple[int, int, np.ndarray, np.ndarray, np.ndarray]  # (feature_lo, feature_hi, feature, token_index, value)


def _dump(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2))


# --------------------------------------------------------------------------- the run: run.json, tokens, shards


def write_tokens(path: Path, token_ids: np.ndarray, vocab: np.ndarray, sources: Sequence[str],
                 row_group_size: int = 64 * 1024) -> None:
    """tokens.parquet for token_ids [n_seqs, ctx_len]: `token_str` = vocab[token_id], one source per sequence;
    `source` dictionary-encoded and 64k-row row groups by default, as `backend.activations.cache` writes it."""
    n_seqs, T = token_ids.shape
    flat = token_ids.reshape(-1)
    pq.write_table(pa.table({
        "token_index": pa.array(np.arange(n_seqs * T, dtype=np.int64)),
        "seq": pa.array(np.repeat(np.arange(n_seqs, dtype=np.int32), T)),
        "pos": pa.array(np.tile(np.arange(T, dtype=np.int16), n_seqs)),
        "token_id": pa.array(flat.astype(np.int32)),
        "token_str": pa.array(np.asarray(vocab, dtype=object)[flat].tolist(), type=pa.string()),
        "source": pa.array(np.repeat(np.asarray(sources, dtype=object), T).tolist(), type=pa.string()).dictionary_encode(),
    }), path, row_group_size=row_group_size)


def write_shards(run: Path, acts: np.ndarray, shard_seqs: int, dtype: str) -> list[dict]:
    """Activation shards of acts [n_seqs, ctx_len, d_in] in `dtype`; returns run.json's `shards`."""
    (run / ACTS_DIR).mkdir(parents=True, exist_ok=True)
    shards = []
    for i, s in enumerate(range(0, len(acts), shard_seqs)):
        part = acts[s:s + shard_seqs].astype(dtype, copy=False)
        np.save(run / shard_name(i), part)
        shards.append({"file": shard_name(i), "seq_start": s, "n_seqs": int(part.shape[0])})
    return shards


def write_run(run: str | Path, token_ids: np.ndarray, vocab: Sequence[str] | np.ndarray,
              sources: Sequence[str] | str = "synthetic", *, acts: np.ndarray | None = None, d_in: int | None = None,
              shard_seqs: int = 16, dtype: str = "float16", heldout_from: int | None = None, model: str = "synthetic",
              hook: str = "blocks.0.hook_resid_post", corpus: str = "synthetic", bos_token_id: int | None = None,
              seed: int = 0, tokens_row_group: int = 64 * 1024, **extra) -> Path:
    """A run folder: run.json, tokens.parquet and (when `acts` [n_seqs, ctx_len, d_in] is given) activation shards.

    token_ids [n_seqs, ctx_len] ints indexing `vocab` (one string per id: token_str is a function of token_id,
    as the query layer's token cache expects); `sources` one per sequence or one for all. Without `acts` the
    run has no shards (enough for the query layer and the app, which never read them) and needs `d_in`.
    heldout_from defaults to the last eighth of the sequences; `extra` adds run.json fields.
    """
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    token_ids = np.asarray(token_ids)
    n_seqs, T = token_ids.shape
    sources = [sources] * n_seqs if isinstance(sources, str) else list(sources)
    write_tokens(run / TOKENS, token_ids, np.asarray(vocab, dtype=object), sources, tokens_row_group)
    shards = write_shards(run, acts, shard_seqs, dtype) if acts is not None else []
    _dump(run / RUN_JSON, {
        "model": model, "model_source": model, "hook": hook, "corpus": corpus, "ctx_len": T, "n_seqs": n_seqs,
        "n_tokens": n_seqs * T, "d_in": int(acts.shape[2] if acts is not None else d_in), "seed": seed, "dtype": dtype,
        "bos_token_id": bos_token_id,
        "heldout_from": n_seqs - max(1, n_seqs // 8) if heldout_from is None else int(heldout_from),
        "shards": shards, "sources": [], "versions": {}, "created": "2026-01-01T00:00:00", **extra})
    return run


# --------------------------------------------------------------------------- a dictionary: cfg.json, weights, metrics


def write_dictionary(run: str | Path, name: str, d_in: int, d_sae: int, *, tensors: dict | None = None,
                     metrics: dict | None = None, kind: str | None = "relu-l1", architecture: str = "standard",
                     **cfg_extra) -> Path:
    """dictionaries/<name>/ with cfg.json (SAELens layout, hook and model from run.json), the tensors (if any:
    numpy or torch, e.g. W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec) and metrics.json (if any)."""
    run = Path(run)
    meta = json.loads((run / RUN_JSON).read_text())
    out = run / DICTS_DIR / name
    out.mkdir(parents=True, exist_ok=True)
    cfg = {"architecture": architecture, **({"kind": kind} if kind else {}), "d_in": d_in, "d_sae": d_sae,
           "dtype": "float32", "metadata": {"hook_name": meta["hook"], "model_name": meta["model"]}, **cfg_extra}
    _dump(out / CFG_JSON, cfg)
    if tensors is not None:
        import torch
        from safetensors.torch import save_file

        save_file({k: torch.as_tensor(np.asarray(v, np.float32)).contiguous() for k, v in tensors.items()},
                  str(out / WEIGHTS))
    if metrics is not None:
        _dump(out / METRICS, metrics)
    return out


# --------------------------------------------------------------------------- the analysed store of a dictionary


def firing_blocks(feature: np.ndarray, token_index: np.ndarray, value: np.ndarray, d_sae: int) -> Iterator[Block]:
    """Planted firings as the one block `write_sparse_store` takes: sorted by (feature, token_index)."""
    order = np.lexsort((token_index, feature))
    yield (0, d_sae, np.asarray(feature, np.int32)[order], np.asarray(token_index, np.int64)[order],
           np.asarray(value, np.float32)[order])


def write_analysis(run: str | Path, name: str, firings: tuple[np.ndarray, np.ndarray, np.ndarray] | Iterable[Block],
                   d_sae: int, *, logits: dict | None = None, token_text: dict[int, str] | None = None,
                   W_dec=None, W_U=None, vocab: Sequence[str] | None = None, neighbours: tuple | None = None,
                   labels: list[str] | None = None, label_sources: list[str] | None = None, cfg=None,
                   n_tokens: int | None = None, progress: bool = False) -> dict:
    """features.parquet, feature_acts.parquet, contexts.parquet and analysis.json of dictionaries/<name>.

    firings: (feature, token_index, value) arrays of every firing (position 0 must not fire), or an iterable
    of sorted feature blocks (streamed, for stores larger than memory). Logit effects: `logits`/`token_text`
    as `logit_effects`/`decode_tokens` give them, else computed from W_dec [d_sae, d_in] @ W_U [d_in, vocab]
    with `vocab` as the token texts, else empty. Neighbours: (ids, cos) [d_sae, k], else from W_dec, else none.
    n_tokens (the density denominator) defaults to every non-position-0 token. Returns the per-feature stats.
    """
    from backend.analysis.analyze import (
        AnalyzeConfig,
        decoder_neighbours,
        empty_logits,
        features_table,
        logit_effects,
        write_sparse_store,
    )

    run = Path(run)
    meta = json.loads((run / RUN_JSON).read_text())
    out = run / DICTS_DIR / name
    out.mkdir(parents=True, exist_ok=True)
    cfg = cfg or AnalyzeConfig()
    blocks = firing_blocks(*firings, d_sae) if isinstance(firings, tuple) else firings
    st = write_sparse_store(out, iter(blocks), d_sae, int(meta["ctx_len"]), cfg, progress=progress)
    if logits is None and W_dec is not None and W_U is not None:
        logits = logit_effects(W_dec, W_U, cfg.n_logits, cfg.hist_bins, cfg.weight_chunk)
        token_text = dict(enumerate(vocab))
    if logits is None:
        logits, token_text = empty_logits(d_sae, cfg.n_logits, cfg.hist_bins), {}
    if neighbours is None:
        neighbours = (decoder_neighbours(W_dec, cfg.n_neighbours, cfg.weight_chunk) if W_dec is not None
                      else (np.zeros((d_sae, 0), np.int32), np.zeros((d_sae, 0), np.float32)))
    n_tokens = int(meta["n_seqs"]) * (int(meta["ctx_len"]) - 1) if n_tokens is None else n_tokens
    table = features_table(n_tokens, st["n_fires"], st["max_act"], st["sum_act"], st["hist_counts"], logits,
                           token_text or {}, *neighbours, labels=labels, label_sources=label_sources)
    pq.write_table(table, out / FEATURES, row_group_size=cfg.features_row_group, compression="snappy")
    _dump(out / ANALYSIS_JSON, {"fake": True, "tokens": {"n_tokens": n_tokens}, "feature_acts_rows": st["n_rows"],
                                "windows": {"before": cfg.window_before, "after": cfg.window_after}})
    return st


# --------------------------------------------------------------------------- planted sparse activations


def planted_activations(n_seqs: int, ctx_len: int, d_in: int, n_features: int, k: int, noise: float,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(acts [n_seqs, ctx_len, d_in], directions [n_features, d_in]): each token is the sum of k of the unit
    directions with magnitudes 0.5 + Exp(1), plus an offset and a little noise; position 0 is an outlier
    (10x the offset) as BOS is in real models, excluded everywhere."""
    feats = rng.standard_normal((n_features, d_in)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    offset = rng.standard_normal(d_in).astype(np.float32) * 0.5
    n_tok = n_seqs * ctx_len
    acts = np.tile(offset, (n_tok, 1)) + noise * rng.standard_normal((n_tok, d_in)).astype(np.float32)
    active = np.stack([rng.choice(n_features, size=k, replace=False) for _ in range(n_tok)])  # [n_tok, k]
    mags = rng.exponential(1.0, size=(n_tok, k)).astype(np.float32) + 0.5
    acts += np.einsum("tk,tkd->td", mags, feats[active])
    acts = acts.reshape(n_seqs, ctx_len, d_in)
    acts[:, 0] = 10.0 * offset
    return acts, feats


def make_synthetic_run(tmp_path: str | Path, n_seqs: int = 64, ctx_len: int = 32, d_in: int = 32, seed: int = 0,
                       n_features: int | None = None, k: int = 3, noise: float = 0.01, shard_seqs: int = 16,
                       vocab_size: int = 256, heldout_seqs: int | None = None, hook: str = "blocks.1.hook_resid_post",
                       model: str = "synthetic", dtype: str = "float16", name: str = "synthetic") -> Path:
    """`<tmp_path>/<name>/`: a run of `planted_activations` (2 * d_in directions unless n_features) with random
    token ids in [3, vocab_size) and BOS id 1 at position 0; the true directions in `true_features.npy`."""
    rng = np.random.default_rng(seed)
    acts, feats = planted_activations(n_seqs, ctx_len, d_in, n_features or 2 * d_in, k, noise, rng)
    ids = rng.integers(3, vocab_size, size=(n_seqs, ctx_len)).astype(np.int32)
    ids[:, 0] = 1
    heldout = heldout_seqs if heldout_seqs is not None else max(1, n_seqs // 8)
    run = write_run(Path(tmp_path) / name, ids, [f"t{i}" for i in range(vocab_size)], acts=acts, shard_seqs=shard_seqs,
                    dtype=dtype, heldout_from=n_seqs - heldout, model=model, hook=hook, bos_token_id=1, seed=seed)
    np.save(run / "true_features.npy", feats)
    return run


# --------------------------------------------------------------------------- the contract, checked


TOKEN_TYPES = {"token_index": "int64", "seq": "int32", "pos": "int16", "token_id": "int32", "token_str": "string",
               "source": "string"}
FEATURE_TYPES = {"feature": "int32", "density": "double", "n_fires": "int64", "max_act": "float", "mean_act": "float",
                 "hist_edges": "list<double>", "hist_counts": "list<int64>", "top_logit_ids": "list<int32>",
                 "top_logit_tokens": "list<string>", "top_logit_values": "list<float>",
                 "bottom_logit_ids": "list<int32>", "bottom_logit_tokens": "list<string>",
                 "bottom_logit_values": "list<float>", "logit_hist_edges": "list<double>",
                 "logit_hist_counts": "list<int64>", "neighbours": "list<int32>", "neighbour_cos": "list<float>",
                 "label": "string", "label_source": "string"}
ACTS_TYPES = {"feature": "int32", "token_index": "int64", "value": "float"}
CONTEXT_TYPES = {"feature": "int32", "group": "string", "rank": "int16", "token_index": "int64", "value": "float"}
RUN_KEYS = ("model", "model_source", "hook", "corpus", "ctx_len", "n_seqs", "n_tokens", "d_in", "seed", "dtype",
            "bos_token_id", "heldout_from", "shards", "sources", "versions", "created")


def _types(path: Path) -> dict[str, str]:
    def name(t: pa.DataType) -> str:
        if pa.types.is_dictionary(t):
            return name(t.value_type)
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return f"list<{name(t.value_type)}>"
        return "string" if pa.types.is_large_string(t) else str(t)
    return {f.name: name(f.type) for f in pq.read_schema(path)}


def check_run(run: str | Path) -> None:
    """Assert that a run folder and each analysed dictionary in it have the columns, types and orders that
    docs/CONTRACTS.md documents (used on fake runs and on runs the real pipeline wrote)."""
    run = Path(run)
    meta = json.loads((run / RUN_JSON).read_text())
    assert set(RUN_KEYS) <= set(meta), sorted(set(RUN_KEYS) - set(meta))
    assert meta["n_tokens"] == meta["n_seqs"] * meta["ctx_len"] and 0 < meta["heldout_from"] <= meta["n_seqs"]
    assert _types(run / TOKENS) == TOKEN_TYPES
    idx = pq.read_table(run / TOKENS, columns=["token_index"]).column(0).to_numpy()
    assert np.array_equal(idx, np.arange(meta["n_tokens"]))
    for s in meta["shards"]:
        shard = np.load(run / s["file"], mmap_mode="r")
        assert shard.shape == (s["n_seqs"], meta["ctx_len"], meta["d_in"]) and shard.dtype == np.dtype(meta["dtype"])
    for d in sorted((run / DICTS_DIR).glob(f"*/{FEATURES}")):
        _check_analysis(d.parent, int(json.loads((d.parent / CFG_JSON).read_text())["d_sae"]))


def _check_analysis(d: Path, d_sae: int) -> None:
    assert _types(d / FEATURES) == FEATURE_TYPES
    assert _types(d / FEATURE_ACTS) == ACTS_TYPES
    assert _types(d / CONTEXTS) == CONTEXT_TYPES
    feats = pq.read_table(d / FEATURES, columns=["feature", "hist_edges", "hist_counts"]).to_pydict()
    assert feats["feature"] == list(range(d_sae))
    assert all(len(e) == len(c) + 1 for e, c in zip(feats["hist_edges"], feats["hist_counts"]))
    acts = pq.read_table(d / FEATURE_ACTS).to_pandas()
    assert acts.equals(acts.sort_values(["feature", "token_index"], kind="stable").reset_index(drop=True))
    ctx = pq.read_table(d / CONTEXTS).to_pandas()
    assert ctx["feature"].is_monotonic_increasing and set(ctx["group"]) <= {"top", "q1", "q2", "q3", "q4", "q5"}
    assert (d / ANALYSIS_JSON).is_file()
