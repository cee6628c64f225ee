"""Anchored training on the tiny Llama: the KL term lowers the spliced KL, gradients reach the dictionary only,
the task term equals the task scorer's cross-entropy, resume after an interrupt, refusals, the CLI record."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from backend.cli import main
from backend.common.errors import UserError
from backend.dictionaries import load_dictionary
from backend.evaluation.metrics import heldout_token_ids, spliced_ce_metrics
from backend.model.hooks import parse_hook
from backend.model.loading import load_model
from backend.tasks import scoring
from backend.tasks.evaluate import splice_fns
from backend.training.anchored import ANCHOR_JSON, AnchorConfig, AnchoredTrainer, TaskItems, train_anchored
from backend.training.trainer import CHECKPOINT, TrainConfig, train_dictionary
from tests.tiny import make_tiny_model

FAST = dict(d_sae=96, batch_size=256, lr=3e-3, l1_coeff=0.05, threads=1, checkpoint_every_s=0)


@pytest.fixture(scope="module")
def base_run(tiny_corpus_dir, tmp_path_factory):
    """A run of a tiny Llama with peaked next-token distributions (a default random init predicts almost uniformly,
    so every KL is ~1e-3) and a plain relu-l1 dictionary `plain` trained on it."""
    from transformers import LlamaForCausalLM

    from backend.activations.cache import CacheConfig, cache_activations

    root = tmp_path_factory.mktemp("anchored")
    folder = make_tiny_model(root / "model", n_layers=3, d_model=64, seed=1)
    model = LlamaForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)  # sharper output distributions, same architecture
    model.save_pretrained(folder)
    cfg = CacheConfig(model=str(folder), hook="blocks.1.hook_resid_post", corpus=str(tiny_corpus_dir), tokens=48 * 32,
                      ctx_len=32, shard_seqs=16, batch_size=16, device="cpu", heldout_frac=0.17, dtype="float32")
    run = cache_activations(cfg, root / "tiny")
    train_dictionary(run, TrainConfig(kind="relu-l1", epochs=20, **FAST), "plain", device="cpu", progress=False)
    return run


@pytest.fixture(scope="module")
def lm(base_run):
    return load_model(json.loads((base_run / "run.json").read_text())["model"], device="cpu")


def heldout_kl(run, name, lm) -> float:
    ids = heldout_token_ids(run, 8)
    d = load_dictionary(run / "dictionaries" / name)
    return spliced_ce_metrics(lm, json.loads((run / "run.json").read_text())["hook"], d, ids)["kl_div"]


def test_kl_fine_tune_lowers_the_spliced_kl_on_heldout_contexts(base_run, lm):
    anchor = AnchorConfig(anchor_kl=5.0, init_from="plain", anchor_contexts=4)
    tr = train_anchored(base_run, TrainConfig(kind="relu-l1", epochs=8, **FAST), anchor, "anchored", device="cpu",
                        progress=False, lm=lm)
    before, after = heldout_kl(base_run, "plain", lm), heldout_kl(base_run, "anchored", lm)
    assert after < 0.5 * before, (before, after)  # measured: 0.675 -> 0.201
    # the control: the same steps with the KL term off (a plain fine-tune on the same contexts) does far less (0.416)
    train_anchored(base_run, TrainConfig(kind="relu-l1", epochs=8, **FAST), AnchorConfig(init_from="plain"), "ctrl",
                   device="cpu", progress=False)
    assert heldout_kl(base_run, "ctrl", lm) > 1.5 * after
    cfg = json.loads((tr.final_dir / "cfg.json").read_text())["training"]
    assert cfg["anchor"]["anchor_kl"] == 5.0 and cfg["anchor"]["init_from"] == "plain"
    assert cfg["tokens"] == tr.tokens_seen > 0 and cfg["anchor"]["cache_error"] < 0.02
    assert all(not p.requires_grad and p.grad is None for p in lm.model.parameters())


def test_kl_gradient_reaches_the_dictionary_and_matches_finite_differences(base_run, lm):
    tr = AnchoredTrainer(base_run, TrainConfig(kind="relu-l1", epochs=1, **FAST), AnchorConfig(anchor_kl=1.0),
                         "grad", device="cpu", lm=lm)
    tr.init_from_dictionary("plain")
    acts, ids, _ = tr.load_batch(np.array([0, 1]))
    kl, _ = tr.kl_term(acts, ids)
    kl.backward()
    g = tr.dictionary.b_dec.grad.clone()
    assert g.abs().sum() > 0
    i, eps = int(g.abs().argmax()), 1e-3
    with torch.no_grad():
        vals = []
        for s in (eps, -eps):
            tr.dictionary.b_dec[i] += s
            vals.append(float(tr.kl_term(acts, ids)[0]))
            tr.dictionary.b_dec[i] -= s
    fd = (vals[0] - vals[1]) / (2 * eps)
    assert fd == pytest.approx(float(g[i]), rel=0.05, abs=1e-5)


def test_task_term_is_the_cross_entropy_of_the_task_scorer(base_run, lm):
    tok = lm.tokenizer
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    items = TaskItems(prompts=[[1] + enc("the cat sat on the"), [1] + enc("def add ( a , b ) :")],
                      choices=[[enc("mat"), enc("rug and the dog"), enc("river")], [enc("return a + b"), enc("print")]],
                      correct=[0, 1])
    tr = AnchoredTrainer(base_run, TrainConfig(kind="relu-l1", epochs=1, **FAST), AnchorConfig(task_loss=1.0, task_items=2),
                         "task", device="cpu", lm=lm, task_items=items)
    tr.init_from_dictionary("plain")
    loss, stats = tr.task_term(0)
    d = load_dictionary(base_run / "dictionaries" / "plain")
    hp = parse_hook(json.loads((base_run / "run.json").read_text())["hook"])
    scored = scoring.score_items(lm.model, [scoring.EncodedItem(p, c) for p, c in zip(items.prompts, items.choices)],
                                 hook=hp, act_fn=splice_fns(d)["spliced"])
    expected = np.mean([-(torch.log_softmax(torch.tensor(s.logprob), 0)[c]).item()
                        for s, c in zip(scored, items.correct)])
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-3)
    loss.backward()
    assert tr.dictionary.W_enc.grad.abs().sum() > 0


def test_interrupted_anchored_training_resumes_to_the_same_weights(base_run, lm, monkeypatch):
    shared = {k: v for k, v in FAST.items() if k != "l1_coeff"}
    cfg = TrainConfig(kind="topk", k=8, epochs=2, **{**shared, "checkpoint_every_s": 1e9})
    anchor = AnchorConfig(anchor_kl=0.8, anchor_contexts=8)
    ref = train_anchored(base_run, cfg, anchor, "ref", device="cpu", progress=False, lm=lm)

    real_step = AnchoredTrainer.anchored_step

    def interrupting(self, seqs):
        if self.step_i == 5:
            raise KeyboardInterrupt
        return real_step(self, seqs)

    monkeypatch.setattr(AnchoredTrainer, "anchored_step", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train_anchored(base_run, cfg, anchor, "cut", device="cpu", progress=False, lm=lm)
    partial = base_run / "dictionaries" / "cut.partial"
    assert (partial / CHECKPOINT).is_file() and json.loads((partial / ANCHOR_JSON).read_text())["tokens_seen"] > 0
    monkeypatch.setattr(AnchoredTrainer, "anchored_step", real_step)
    with pytest.raises(UserError, match="other anchoring settings"):
        train_anchored(base_run, cfg, AnchorConfig(anchor_kl=0.5, anchor_contexts=8), "cut", device="cpu",
                       resume=True, progress=False, lm=lm)
    again = train_anchored(base_run, cfg, anchor, "cut", device="cpu", resume=True, progress=False, lm=lm)
    assert again.step_i == ref.step_i and again.tokens_seen == ref.tokens_seen
    for k, v in ref.dictionary.state_dict().items():
        assert torch.allclose(again.dictionary.state_dict()[k], v, atol=1e-5), k
    assert not partial.exists()


def test_refusals(base_run, tmp_path, lm):
    cfg = TrainConfig(kind="relu-l1", epochs=1, **FAST)
    with pytest.raises(UserError, match="sparse-coding"):
        AnchoredTrainer(base_run, TrainConfig(kind="sparse-coding", epochs=1, **FAST), AnchorConfig(anchor_kl=1), "x",
                        device="cpu", lm=lm)
    no_tokens = tmp_path / "no_tokens"
    shutil.copytree(base_run, no_tokens)
    (no_tokens / "tokens.parquet").unlink()
    with pytest.raises(UserError, match="tokens.parquet"):
        AnchoredTrainer(no_tokens, cfg, AnchorConfig(anchor_kl=1), "x", device="cpu", lm=lm)
    mlp_hook = tmp_path / "mlp_hook"
    shutil.copytree(base_run, mlp_hook)
    meta = json.loads((mlp_hook / "run.json").read_text())
    (mlp_hook / "run.json").write_text(json.dumps({**meta, "hook": "blocks.1.hook_mlp_out"}))
    with pytest.raises(UserError, match="cannot splice at blocks.1.hook_mlp_out"):
        AnchoredTrainer(mlp_hook, cfg, AnchorConfig(anchor_kl=1), "x", device="cpu", lm=lm)
    with pytest.raises(UserError, match="--task-loss needs task items"):
        AnchoredTrainer(base_run, cfg, AnchorConfig(task_loss=1), "x", device="cpu", lm=lm)
    with pytest.raises(UserError, match="trained with other settings: pass --d-sae 96"):
        train_anchored(base_run, TrainConfig(kind="relu-l1", epochs=1, **{**FAST, "d_sae": 64}),
                       AnchorConfig(init_from="plain"), "x", device="cpu", progress=False)
    with pytest.raises(UserError, match="is a relu-l1 dictionary, not topk"):
        train_anchored(base_run, TrainConfig(kind="topk", epochs=1, d_sae=96, batch_size=256), AnchorConfig(init_from="plain"), "x",
                       device="cpu", progress=False)
    with pytest.raises(UserError, match="anchor_kl"):
        AnchorConfig(anchor_kl=-1)


def test_cli_anchored_train_records_every_coefficient(base_run, capsys):
    rc = main(["train", "--run", str(base_run), "--kind", "relu-l1", "--d-sae", "96", "--batch-size", "256",
               "--epochs", "0.5", "--l1-coeff", "0.05", "--anchor-kl", "0.8", "--init-from", "plain", "--no-ce",
               "--device", "cpu"])
    assert rc == 0
    cfg = json.loads((base_run / "dictionaries" / "relu-l1-anchored" / "cfg.json").read_text())
    a = cfg["training"]["anchor"]
    assert (a["anchor_kl"], a["task_loss"], a["mse_coeff"], a["b_sparsity"], a["init_from"]) == (0.8, 0.0, 1.0, 0.05, "plain")
    assert cfg["kind"] == "relu-l1" and cfg["training"]["lr"] == 1e-3 and cfg["training"]["tokens"] > 0
    assert main(["train", "--run", str(base_run), "--kind", "sparse-coding", "--anchor-kl", "1", "--no-ce"]) == 2
    assert "--anchor-kl is not an option of --kind sparse-coding" in capsys.readouterr().err
