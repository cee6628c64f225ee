"""Activation cache: run.json, tokens.parquet, shards, resume, never half-written."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from backend.activations.activation_store import ActivationStore
from backend.activations.cache import CacheConfig, cache_activations
from backend.common.errors import UserError
from backend.model import hooks
from backend.model.loading import load_model


def _cfg(model, corpus, **kw):
    base = dict(model=str(model), hook="blocks.1.hook_resid_post", corpus=str(corpus), tokens=24 * 16, ctx_len=16,
                shard_seqs=8, batch_size=4, device="cpu")
    base.update(kw)
    return CacheConfig(**base)


def test_run_layout_and_activations_match_model(tiny_run, tiny_model_dir):
    meta = json.loads((tiny_run / "run.json").read_text())
    assert meta["hook"] == "blocks.1.hook_resid_post" and meta["ctx_len"] == 32 and meta["n_seqs"] == 64
    assert meta["n_tokens"] == 64 * 32 and meta["d_in"] == 64 and meta["heldout_from"] == 56
    assert sum(s["n_seqs"] for s in meta["shards"]) == 64
    assert set(meta["source_counts"]) == {"prose", "code", "math"}
    toks = pq.read_table(tiny_run / "tokens.parquet").to_pandas()
    assert len(toks) == 64 * 32
    assert (toks.token_index.to_numpy() == np.arange(64 * 32)).all()
    assert (toks[toks.pos == 0].token_str == "<bos>").all()
    assert toks.groupby("seq").source.nunique().max() == 1  # one genre per context

    # activations on disk equal a fresh forward pass over the stored token ids
    lm = load_model(str(tiny_model_dir), device="cpu")
    ids = torch.tensor(toks.token_id.to_numpy().reshape(64, 32)[:3], dtype=torch.long)
    fresh = hooks.capture(lm.model, hooks.parse_hook(meta["hook"]), ids).numpy()
    store = ActivationStore(tiny_run)
    np.testing.assert_allclose(store.seqs(0, 3), fresh, atol=2e-3 * np.abs(fresh).max())


def test_store_splits_drop_position_zero(tiny_run):
    store = ActivationStore(tiny_run)
    x, idx = store.load_split("test")
    assert x.shape == (8 * 31, 64) and x.dtype == np.float32
    assert (idx % 32 != 0).all() and idx.min() == 56 * 32 + 1
    batches = list(store.iter_batches(100, split="train", seed=0))
    assert sum(len(b) for b in batches) <= 56 * 31 and all(b.shape == (100, 64) for b in batches)


def test_resume_after_interrupted_shard(tmp_path, tiny_model_dir, tiny_corpus_dir, monkeypatch):
    out = tmp_path / "run"
    calls = {"n": 0}
    real = hooks.capture

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # dies in the third shard (2 batches per shard)
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(hooks, "capture", flaky)
    with pytest.raises(KeyboardInterrupt):
        cache_activations(_cfg(tiny_model_dir, tiny_corpus_dir), out)
    assert not out.exists()  # nothing half-written at the destination
    progress = json.loads((tmp_path / "run.partial" / "progress.json").read_text())
    assert progress["done"] == [0, 1]
    monkeypatch.setattr(hooks, "capture", real)
    calls["n"] = 0
    counted = {"n": 0}

    def counting(*a, **k):
        counted["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(hooks, "capture", counting)
    cache_activations(_cfg(tiny_model_dir, tiny_corpus_dir), out)
    assert counted["n"] == 2  # only the third shard ran again
    assert (out / "run.json").is_file() and not (tmp_path / "run.partial").exists()
    assert ActivationStore(out).seqs(0, 24).shape == (24, 16, 64)


def test_finished_run_is_not_overwritten_without_force(tiny_run, tiny_model_dir, tiny_corpus_dir):
    with pytest.raises(UserError, match="already holds a finished run"):
        cache_activations(_cfg(tiny_model_dir, tiny_corpus_dir), tiny_run)


def test_bad_config_values():
    with pytest.raises(UserError, match="at least 2 contexts"):
        CacheConfig(tokens=10)
    with pytest.raises(UserError, match="ctx-len"):
        CacheConfig(ctx_len=2)


def test_corrupt_shard_is_reported(tmp_path, tiny_run):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    (run / "activations" / "shard_00001.npy").write_bytes(b"not a numpy file")
    with pytest.raises(UserError, match="corrupt activation shard"):
        ActivationStore(run).seqs(0, 64)
