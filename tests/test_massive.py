"""Massive-activation tokens: found from the data, skipped by training and the headline metrics, recorded.

A synthetic run (bulk norms ~3-5) gets three planted tokens of norm 400: two in the training split,
one held out; position 0 carries a huge BOS vector too, which must never be counted as massive.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from backend.activations import massive as massive_mod
from backend.activations.activation_store import ActivationStore
from backend.activations.massive import MASSIVE_JSON, K, massive_from_norms, massive_record
from backend.dictionaries import load_dictionary
from backend.pipeline import build_dictionary
from backend.training.trainer import TrainConfig
from tests.fake_run import make_synthetic_run

N_SEQS, CTX, D_IN, HELDOUT_FROM = 64, 32, 16, 56  # make_synthetic_run holds out n_seqs // 8 = 8 sequences
PLANTED = [(3, 1), (20, 17), (60, 2)]  # (seq, pos): two train, one test
PLANTED_INDEX = [s * CTX + p for s, p in PLANTED]


def plant(run, planted=PLANTED, norm=400.0):
    """Overwrite tokens of the run's shards with a vector of the given norm along one axis."""
    meta = json.loads((run / "run.json").read_text())
    for seq, pos in planted:
        info = next(s for s in meta["shards"] if s["seq_start"] <= seq < s["seq_start"] + s["n_seqs"])
        arr = np.load(run / info["file"])
        arr[seq - info["seq_start"], pos] = 0
        arr[seq - info["seq_start"], pos, 5] = norm
        np.save(run / info["file"], arr)


@pytest.fixture()
def run(tmp_path):
    run = make_synthetic_run(tmp_path, n_seqs=N_SEQS, ctx_len=CTX, d_in=D_IN, seed=0, n_features=32, k=2)
    plant(run)
    return run


def test_rule_on_planted_norms():
    rng = np.random.default_rng(0)
    norms = rng.uniform(9.0, 11.0, size=(10, 8)).astype(np.float32)
    norms[:, 0] = 1000.0  # BOS: never massive
    norms[2, 3], norms[9, 1] = 500.0, 70.0  # a train one and a test one (70 > 6 x ~10)
    norms[4, 4] = 50.0  # 5 x the median: below the threshold
    rec = massive_from_norms(norms, heldout_from=8)
    median = float(np.median(norms[:8, 1:]))
    assert rec["median_norm"] == pytest.approx(median, rel=1e-4) and 9.5 < median < 10.5
    assert rec["threshold"] == pytest.approx(K * median, rel=1e-4)
    assert rec["token_index"] == [2 * 8 + 3, 9 * 8 + 1]
    assert (rec["n_train"], rec["n_test"]) == (1, 1) and rec["max_norm"] == 500.0


def test_old_run_gets_a_cached_record_and_run_json_is_untouched(run, monkeypatch):
    before = (run / "run.json").read_bytes()
    store = ActivationStore(run)
    rec = store.massive
    assert rec["token_index"] == PLANTED_INDEX and (rec["n_train"], rec["n_test"]) == (2, 1)
    bulk = np.linalg.norm(store.seqs(0, N_SEQS)[:, 1:].astype(np.float32), axis=-1)
    bulk_max = np.sort(bulk.reshape(-1))[-4]  # the largest norm after the three planted tokens
    assert bulk_max < rec["threshold"] < 400.0
    assert (run / "run.json").read_bytes() == before
    assert json.loads((run / MASSIVE_JSON).read_text())["token_index"] == PLANTED_INDEX

    def boom(*a, **k):
        raise AssertionError("recomputed although massive_tokens.json is there")

    monkeypatch.setattr(massive_mod, "find_massive", boom)
    assert ActivationStore(run).massive["threshold"] == rec["threshold"]


def test_run_json_record_wins(run, monkeypatch):
    meta = json.loads((run / "run.json").read_text())
    meta["massive"] = {**massive_record(run), "token_index": [PLANTED_INDEX[0]], "n_train": 1, "n_test": 0}
    (run / MASSIVE_JSON).unlink()
    (run / "run.json").write_text(json.dumps(meta))
    store = ActivationStore(run)
    assert store.n_tokens("train") == HELDOUT_FROM * (CTX - 1) - 1
    assert not (run / MASSIVE_JSON).exists()


def test_splits_and_batches_skip_massive_tokens(run):
    store = ActivationStore(run)
    assert store.n_tokens("train") == HELDOUT_FROM * (CTX - 1) - 2
    assert store.n_tokens("test") == (N_SEQS - HELDOUT_FROM) * (CTX - 1) - 1
    assert store.n_tokens("test", exclude_massive=False) == (N_SEQS - HELDOUT_FROM) * (CTX - 1)

    x, idx = store.load_split("test")
    assert len(x) == len(idx) == store.n_tokens("test") and PLANTED_INDEX[2] not in idx
    acts = store.seqs(0, N_SEQS).astype(np.float32)
    np.testing.assert_array_equal(x, acts[idx // CTX, idx % CTX])  # token_index still names each row
    x_all, idx_all = store.load_split("test", exclude_massive=False)
    assert PLANTED_INDEX[2] in idx_all and np.linalg.norm(x_all, axis=1).max() == pytest.approx(400.0)

    x, idx = store.load_split("train", max_tokens=200)  # seq 3 holds a planted token: still 200 rows
    assert len(x) == 200 and PLANTED_INDEX[0] not in idx and idx[0] == 1
    np.testing.assert_array_equal(x, acts[idx // CTX, idx % CTX])

    batches = torch.cat(list(store.iter_batches(64, "train", seed=1)))
    assert len(batches) == store.n_tokens("train") // 64 * 64
    assert float(batches.norm(dim=1).max()) < store.massive["threshold"]
    kept = torch.cat(list(ActivationStore(run, exclude_massive=False).iter_batches(64, "train", seed=1)))
    assert int((kept.norm(dim=1) > 399).sum()) == 2  # one epoch of HELDOUT_FROM*31 = 1736 = 27*64 + 8 rows


def test_metrics_report_ev_with_and_without_massive_tokens(run):
    cfg = TrainConfig(kind="relu-l1", d_sae=32, batch_size=128, epochs=10, lr=3e-3, l1_coeff=0.3, threads=1,
                      checkpoint_every_s=0)
    build_dictionary(run, cfg, "sae", device="cpu", compute_ce=False, progress=False)
    m = json.loads((run / "dictionaries" / "sae" / "metrics.json").read_text())
    train = json.loads((run / "dictionaries" / "sae" / "cfg.json").read_text())["training"]
    assert train["massive_excluded"] == 2 and train["n_train_tokens"] == HELDOUT_FROM * (CTX - 1) - 2

    d = load_dictionary(run / "dictionaries" / "sae")
    x, idx = ActivationStore(run).load_split("test", exclude_massive=False)
    x = torch.from_numpy(x).double()
    with torch.no_grad():
        x_hat = d(x.float()).double()

    def ev(rows):
        err = (x[rows] - x_hat[rows]).pow(2).sum(1).mean()
        return float(1 - err / (x[rows] - x[rows].mean(0)).pow(2).sum(1).mean())

    massive = torch.from_numpy(np.isin(idx, PLANTED_INDEX))
    assert int(massive.sum()) == 1 == m["n_massive_tokens"]
    assert m["explained_variance"] == pytest.approx(ev(~massive), abs=1e-6)
    assert m["explained_variance_all"] == pytest.approx(ev(torch.ones_like(massive)), abs=1e-6)
    assert m["fvu_all"] == pytest.approx(1 - m["explained_variance_all"])
    assert m["explained_variance"] > 0.5 > m["explained_variance_all"]  # the badly reconstructed planted token swamps it
    assert m["n_tokens"] == len(x) - 1 and m["n_tokens_all"] == len(x)
    rel = float((x[massive] - x_hat[massive]).pow(2).sum() / x[massive].pow(2).sum())
    assert m["massive_relative_error"] == pytest.approx(rel, rel=1e-6)
    assert m["massive_threshold"] == ActivationStore(run).massive["threshold"]


def test_cache_records_massive_in_run_json(tiny_run):
    meta = json.loads((tiny_run / "run.json").read_text())
    rec = meta["massive"]
    norms = np.linalg.norm(ActivationStore(tiny_run).seqs(0, 56)[:, 1:].astype(np.float32), axis=-1)
    assert rec["median_norm"] == pytest.approx(float(np.median(norms)), rel=1e-4)
    assert rec["threshold"] == pytest.approx(K * rec["median_norm"], rel=1e-4)
    assert rec["n_train"] + rec["n_test"] == len(rec["token_index"])
    assert not (tiny_run / MASSIVE_JSON).exists()
