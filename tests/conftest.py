"""Shared fixtures: a tiny random model, a tiny corpus, and a tiny analysed store built by the real pipeline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.tiny import make_tiny_corpus, make_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_corpus_dir(tmp_path_factory) -> Path:
    return make_tiny_corpus(tmp_path_factory.mktemp("tiny_corpus"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir, tiny_corpus_dir) -> Path:
    """A cached run of the tiny model: 64 contexts of 32 tokens at blocks.1.hook_resid_post."""
    from backend.activations.cache import CacheConfig, cache_activations

    root = tmp_path_factory.mktemp("tiny_data")
    cfg = CacheConfig(model=str(tiny_model_dir), hook="blocks.1.hook_resid_post", corpus=str(tiny_corpus_dir),
                      tokens=64 * 32, ctx_len=32, shard_seqs=16, batch_size=8, device="cpu", heldout_frac=0.125)
    return cache_activations(cfg, root / "runs" / "tiny")


@pytest.fixture(scope="session")
def tiny_store(tiny_run) -> Path:
    """Data root holding run `tiny` with an analysed relu-l1 dictionary; returns the data root."""
    from backend.analysis.analyze import analyze
    from backend.pipeline import build_dictionary
    from backend.training.trainer import TrainConfig

    cfg = TrainConfig(kind="relu-l1", d_sae=128, epochs=40, batch_size=256)
    build_dictionary(tiny_run, cfg, name="relu-l1", device="cpu")
    analyze(tiny_run, "relu-l1", device="cpu")
    return tiny_run.parent.parent
