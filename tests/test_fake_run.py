"""tests/fake_run.py: the fake runs every test and benchmark builds follow docs/CONTRACTS.md, as real runs do."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backend.store import query as store
from tests.fake_run import (
    check_run,
    make_synthetic_run,
    write_analysis,
    write_dictionary,
    write_run,
)

T, N_SEQS, D_SAE = 8, 6, 4
VOCAB = ["<s>", " a", " <b>", "'", " z"]


@pytest.fixture
def planted_run(tmp_path):
    """6 sequences of 8 tokens; feature 0 fires at 3 planted tokens, feature 2 at one, features 1 and 3 never."""
    ids = np.arange(N_SEQS * T).reshape(N_SEQS, T) % 5
    ids[:, 0] = 0
    run = write_run(tmp_path / "run", ids, VOCAB, [f"g{s % 2}" for s in range(N_SEQS)],
                    d_in=3, bos_token_id=0)
    write_dictionary(run, "d", 3, D_SAE, metrics={"l0": 0.1})
    firings = (np.array([2, 0, 0, 0]), np.array([9, 17, 3, 44]), np.array([1.5, 2.0, 1.0, 4.0]))
    write_analysis(run, "d", firings, D_SAE, labels=["zero", "", "two", ""], label_sources=["human", "", "auto", ""])
    return run


def test_planted_firings_come_back_through_the_query_layer(planted_run):
    run = str(planted_run)
    check_run(planted_run)
    acts = pq.read_table(planted_run / "dictionaries" / "d" / "feature_acts.parquet").to_pydict()
    assert acts["feature"] == [0, 0, 0, 2] and acts["token_index"] == [3, 17, 44, 9]  # sorted (feature, token)
    feats = store.list_features(run, "d", limit=10)
    assert feats["density"].tolist() == pytest.approx([3 / (N_SEQS * (T - 1)), 0, 1 / (N_SEQS * (T - 1)), 0])
    assert feats["max_act"].tolist() == pytest.approx([4.0, 0, 1.5, 0]) and feats["label"].tolist()[:3] == ["zero", "", "two"]
    dash = store.feature_dashboard(run, "d", 0)
    assert [c["token_index"] for c in dash["contexts"]["top"]] == [44, 17, 3]  # value-descending
    top = dash["contexts"]["top"][0]
    assert top["tokens"][top["peak"]] == VOCAB[44 % 5] and top["source"] == "g1"  # token 44: seq 5, id 4
    assert store.list_dictionaries(run)["l0"].tolist() == [0.1]
    assert json.loads((planted_run / "run.json").read_text())["shards"] == []  # no activations asked for


def test_synthetic_run_shards_hold_the_planted_directions(tmp_path):
    run = make_synthetic_run(tmp_path, n_seqs=20, ctx_len=8, d_in=6, n_features=5, k=1, noise=0.0, shard_seqs=8)
    check_run(run)
    meta = json.loads((run / "run.json").read_text())
    assert [s["n_seqs"] for s in meta["shards"]] == [8, 8, 4] and meta["heldout_from"] == 18
    x = np.concatenate([np.load(run / s["file"]) for s in meta["shards"]]).astype(np.float32)[:, 1:].reshape(-1, 6)
    dirs = np.load(run / "true_features.npy")
    # k=1, no noise: every token minus the common offset (position 0 holds 10x it, as BOS outliers go) is a
    # positive multiple of one planted direction (up to float16 rounding)
    offset = np.load(run / meta["shards"][0]["file"])[0, 0].astype(np.float32) / 10
    y = x - offset
    cos = (y @ dirs.T) / np.linalg.norm(y, axis=1, keepdims=True)
    assert cos.max(axis=1).min() > 0.99


def test_real_runs_meet_the_same_contract(tiny_store):
    check_run(tiny_store / "runs" / "tiny")


def test_the_check_fails_on_a_broken_column(planted_run):
    path = planted_run / "dictionaries" / "d" / "features.parquet"
    t = pq.read_table(path)
    i = t.schema.get_field_index("feature")
    pq.write_table(t.set_column(i, "feature", t.column(i).cast(pa.int64())), path)
    with pytest.raises(AssertionError):
        check_run(planted_run)


def test_every_fake_store_of_the_suite_meets_the_contract(tmp_path):
    from tests.helpers_labels import make_planted_store
    from tests.test_analyze import make_run
    from tests.test_app_pages import make_fake_store

    check_run(make_fake_store(tmp_path / "pages") / "fake")
    check_run(make_planted_store(tmp_path / "labels")[0])
    check_run(make_run(tmp_path / "analyze"))


def test_feature_page_lookups_from_memory_match_duckdb_and_follow_a_rewrite(planted_run, monkeypatch):
    """feature_dashboard reads features.parquet and contexts.parquet from memory (backend/store/feature_rows.py):
    the same dict as the DuckDB path, and a re-analysis (the files rewritten) is read afresh."""
    from backend.store import feature_rows

    run = str(planted_run)
    feature_rows._cache.clear()
    held = [store.feature_dashboard(run, "d", f) for f in range(D_SAE)]
    assert len(feature_rows._cache) == 2  # the features and the contexts file of "d"
    monkeypatch.setattr(feature_rows, "MAX_BYTES", 0)  # too large to hold: DuckDB answers
    feature_rows._cache.clear()
    assert [store.feature_dashboard(run, "d", f) for f in range(D_SAE)] == held
    monkeypatch.undo()
    feature_rows._cache.clear()
    store.feature_dashboard(run, "d", 0)
    firings = (np.array([1, 1]), np.array([9, 17]), np.array([0.5, 7.0]))  # now feature 1 fires, 0 does not
    write_analysis(planted_run, "d", firings, D_SAE, labels=["", "one", "", ""], label_sources=["", "human", "", ""])
    dash = store.feature_dashboard(run, "d", 1)
    assert dash["max_act"] == pytest.approx(7.0) and [c["token_index"] for c in dash["contexts"]["top"]] == [17, 9]
    assert store.feature_dashboard(run, "d", 0)["contexts"]["top"] == []


def test_file_version_cache_keeps_one_version_per_file_and_the_most_recent_files():
    from backend.store.file_cache import MISSING, FileVersionCache

    c = FileVersionCache(2)
    c.put(("a", 1, 1), "a1")
    c.put(("b", 1, 1), "b1")
    c.put(("a", 2, 5), "a2")  # a rewritten: its old version goes
    assert c.get(("a", 1, 1)) is MISSING and c.get(("a", 2, 5)) == "a2" and len(c) == 2
    c.get(("b", 1, 1))  # b used last: c evicts a
    c.put(("c", 1, 1), None)  # None is a value (a file too large to hold), not a miss
    assert c.get(("a", 2, 5)) is MISSING and c.get(("b", 1, 1)) == "b1" and c.get(("c", 1, 1)) is None
