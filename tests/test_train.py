"""The trainer on planted sparse synthetic runs: it learns, saves a SAELens-layout folder in raw
units, checkpoints and resumes, and validates its config; compute_metrics on a tiny Llama."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from backend.common.errors import UserError
from backend.dictionaries import load_dictionary
from backend.evaluation.metrics import compute_metrics, heldout_token_ids
from backend.pipeline import build_dictionary
from backend.training.trainer import CHECKPOINT, TrainConfig, Trainer, train_batches
from tests.fake_run import make_synthetic_run

FAST = dict(d_sae=64, batch_size=128, lr=3e-3, l1_coeff=0.3, threads=1, checkpoint_every_s=0)


@pytest.fixture()
def run(tmp_path):
    return make_synthetic_run(tmp_path, n_seqs=64, ctx_len=32, d_in=16, seed=0, n_features=32, k=2)


def test_config_validation():
    with pytest.raises(UserError, match="l1_coeff"):
        TrainConfig(l1_coeff=-1)
    with pytest.raises(UserError, match="kind"):
        TrainConfig(kind="nope")
    with pytest.raises(UserError, match="batch_size"):
        TrainConfig(batch_size=0)
    assert TrainConfig(adam_betas=[0.9, 0.99]).adam_betas == (0.9, 0.99)


def test_trainer_learns_planted_features(run):
    tr = Trainer(run, TrainConfig(epochs=20, **FAST), "sae", device="cpu")
    tr.init_from_data()
    first = None
    for x in train_batches(tr.store, tr.cfg, 0, tr.steps_per_epoch, tr.total_steps, tr.device):
        s = tr.step(x)
        first = first or s
    assert tr.step_i == tr.total_steps
    assert s["mse"] < 0.5 * first["mse"]
    ev = tr.evaluate()
    assert ev["ev"] > 0.5, ev
    assert torch.allclose(tr.dictionary.W_dec.norm(dim=1), torch.ones(64), atol=1e-4)


def test_train_dictionary_writes_folder_in_raw_units(run):
    out = build_dictionary(run, TrainConfig(epochs=10, **FAST), "sae", device="cpu", compute_ce=False, progress=False)
    assert out == run / "dictionaries" / "sae"
    assert not (run / "dictionaries" / "sae.partial").exists()
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "standard" and cfg["kind"] == "relu-l1" and cfg["d_sae"] == 64
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post" and cfg["metadata"]["model_name"] == "synthetic"
    assert cfg["activation_scale"] > 0 and cfg["train_flops"] > 0 and cfg["training"]["l1_coeff"] == 0.3
    m = json.loads((out / "metrics.json").read_text())
    for k in ("l0", "mse", "fvu", "explained_variance", "dead_fraction", "dead_window_tokens"):
        assert k in m
    assert m["explained_variance"] > 0.5 and m["fvu"] == pytest.approx(1 - m["explained_variance"])

    with pytest.raises(UserError, match="already exists"):
        build_dictionary(run, TrainConfig(epochs=1, **FAST), "sae", device="cpu", compute_ce=False, progress=False)


def test_saved_dictionary_matches_trainer_in_raw_units(run):
    tr = Trainer(run, TrainConfig(epochs=3, **FAST), "sae", device="cpu")
    tr.fit(progress=False)
    x_raw = torch.from_numpy(tr.store.load_split("test")[0])
    expected = tr.dictionary(x_raw * tr.scale) / tr.scale  # training units -> raw units
    expected_f = tr.dictionary.encode(x_raw * tr.scale) / tr.scale
    tr.finish()
    d = load_dictionary(run / "dictionaries" / "sae")
    assert torch.allclose(d(x_raw), expected, rtol=1e-4, atol=1e-4 * float(x_raw.abs().max()))
    assert torch.allclose(d.encode(x_raw), expected_f, rtol=1e-4, atol=1e-3)
    assert torch.allclose(d.W_dec.norm(dim=1), torch.ones(64), atol=1e-4)


def test_checkpoint_and_resume_continue_the_same_run(run):
    cfg = TrainConfig(epochs=4, **FAST)
    ref = Trainer(run, cfg, "ref", device="cpu")
    ref.fit(progress=False)

    tr = Trainer(run, cfg, "sae", device="cpu")
    tr.init_from_data()
    half = tr.total_steps // 2
    for x in train_batches(tr.store, cfg, 0, tr.steps_per_epoch, half, tr.device):
        tr.step(x)
    ck = tr.checkpoint()
    assert ck == run / "dictionaries" / "sae.partial" / CHECKPOINT

    again = Trainer(run, cfg, "sae", device="cpu")
    assert again.resume()
    assert again.step_i == half and again.scale == tr.scale
    assert torch.equal(again.dictionary.W_enc, tr.dictionary.W_enc)
    again.fit(resume=True, progress=False)
    assert again.step_i == ref.step_i == ref.total_steps
    for (k, a), b in zip(again.dictionary.state_dict().items(), ref.dictionary.state_dict().values()):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-4), k  # same batches in the same order

    with pytest.raises(UserError, match="different config"):
        Trainer(run, TrainConfig(epochs=5, **FAST), "sae", device="cpu").resume()

    # build_dictionary(resume=True) picks the checkpoint up and removes the partial folder at the end
    out = build_dictionary(run, cfg, "sae", device="cpu", resume=True, compute_ce=False, progress=False)
    assert json.loads((out / "cfg.json").read_text())["training"]["steps"] == ref.total_steps
    assert not (run / "dictionaries" / "sae.partial").exists()


def test_heldout_token_ids(run):
    ids = heldout_token_ids(run, 3)
    meta = json.loads((run / "run.json").read_text())
    assert ids.shape == (3, 32) and (ids[:, 0] == 1).all()
    assert heldout_token_ids(run, 1000).shape == (meta["n_seqs"] - meta["heldout_from"], 32)


def test_compute_metrics_with_ce_on_tiny_llama(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    run = make_synthetic_run(tmp_path, n_seqs=32, ctx_len=16, d_in=64, seed=1, n_features=128, k=4)
    build_dictionary(run, TrainConfig(epochs=5, d_sae=128, batch_size=64, l1_coeff=0.1, lr=3e-3, threads=1),
                     "sae", device="cpu", compute_ce=False, progress=False)
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)).eval()
    m = compute_metrics(run, "sae", lm=lm, ce_seqs=3)
    on_disk = json.loads((run / "dictionaries" / "sae" / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(m))
    for k in ("ce_clean", "ce_spliced", "ce_zero_ablation", "ce_loss_score", "delta_ce", "kl_div"):
        assert np.isfinite(m[k]), k
    assert m["ce_seqs"] == 3 and m["ce_tokens"] == 3 * 14
    assert m["kl_div"] >= 0


def test_resample_dead_reinitialises_silent_features(run):
    tr = Trainer(run, TrainConfig(epochs=1, dead_window_tokens=256, **FAST), "sae", device="cpu")
    tr.init_from_data()
    d = tr.dictionary
    with torch.no_grad():
        d.b_enc[:8] = -1e3  # features 0..7 can never fire
    x = torch.from_numpy(tr.store.load_split("train", max_tokens=256)[0]) * tr.scale
    for _ in range(3):
        tr.step(x.clone() / tr.scale)
    assert tr.dead_mask()[:8].all()
    before = d.W_dec[:8].clone()
    n = tr.resample_dead(x)
    assert n >= 8 and tr.n_resampled == n
    assert not torch.allclose(d.W_dec[:8], before)
    assert torch.allclose(d.W_dec.norm(dim=1), torch.ones(64), atol=1e-4)
    assert (d.b_enc[:8] == 0).all() and not tr.dead_mask()[:8].any()
    assert (d.encode(x)[:, :8] > 0).any()  # they fire again
