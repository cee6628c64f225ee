"""Prompt diagnosis: feature domains on planted firings, detection on a planted dictionary over the tiny model,
the experiment's conditions end to end on the tiny model, and the CLI's one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from backend.common.errors import UserError
from backend.diagnosis import domains as dom
from tests.fake_run import write_analysis, write_dictionary, write_run
from tests.tiny import make_tokenizer

HOOK = "blocks.1.hook_resid_post"
CTX = 16


# ------------------------------------------------------------------ domains from planted firings


def _planted_run(root, labels: dict[int, str] | None):
    """8 sequences (code, math, prose, code, math, prose | held out: math, code) and 4 features:
    0 fires on code tokens only, 1 on math only, 2 everywhere alike, 3 only on the held-out math sequence."""
    from backend.store.label_store import LabelStore

    sources = ["code", "math", "prose", "code", "math", "prose", "math", "code"]
    ids = np.arange(8 * CTX).reshape(8, CTX) % 7
    run = write_run(root / "run", ids, [f"t{i}" for i in range(7)], sources, d_in=8, heldout_from=6, hook=HOOK)
    write_dictionary(run, "d", 8, 4)
    f, t, v = [], [], []
    for s, src in enumerate(sources):
        for p in range(1, CTX):
            ti = s * CTX + p
            if src == "code" and s < 6:
                f, t, v = f + [0], t + [ti], v + [2.0]
            if src == "math" and s < 6:
                f, t, v = f + [1], t + [ti], v + [1.0]
            f, t, v = f + [2], t + [ti], v + [0.5]
            if s == 6:
                f, t, v = f + [3], t + [ti], v + [3.0]
    write_analysis(run, "d", (np.array(f), np.array(t), np.array(v)), 4)
    if labels:
        LabelStore(run).save_many([{"dict_name": "d", "feature": k, "text": txt, "author": "test", "source": "human"}
                                   for k, txt in labels.items()])
    return run


def test_domains_from_where_features_fire_and_what_their_labels_say(tmp_path):
    run = _planted_run(tmp_path, {2: "Python source code: def, return, import and self", 0: "the token def"})
    dom.compute_domains(run, "d", dom.DomainsConfig(label_weight=0.25), calibrate=False)
    fd = dom.load_domains(run, "d")
    assert fd.domains == ["code", "math", "prose"]
    fires = fd.table[["fires_code", "fires_math", "fires_prose"]].to_numpy()
    np.testing.assert_allclose(fires[0], [1, 0, 0], atol=1e-6)  # fires on code only
    np.testing.assert_allclose(fires[1], [0, 1, 0], atol=1e-6)
    np.testing.assert_allclose(fires[2], [1 / 3] * 3, atol=1e-6)  # everywhere at the base rate: uniform, not "mostly X"
    np.testing.assert_allclose(fires[3], [1 / 3] * 3, atol=1e-6)  # its only firings are held out: never counted
    assert fd.table["fire_mass"][3] == 0 and fd.table["domain"][3] == ""  # unlabelled and never fired in training
    # the label moves the uniform feature 2 to code (a human label counts), by w = 0.25 of its label distribution
    p2 = fd.p[2]
    label2 = fd.table.loc[2, ["label_code", "label_math", "label_prose"]].to_numpy(np.float64)
    assert label2.argmax() == 0
    np.testing.assert_allclose(p2, 0.75 / 3 + 0.25 * label2, atol=1e-5)
    assert fd.table["domain"][2] == "code" and fd.table["domain"][0] == "code" and fd.table["domain"][1] == "math"
    assert bool(fd.table["has_label"][2]) and not bool(fd.table["has_label"][1])
    np.testing.assert_allclose(fd.p[1], [0, 1, 0], atol=1e-6)  # no label: fires only
    meta = json.loads((run / "dictionaries/d/domains.json").read_text())
    assert meta["label_weight"] == 0.25 and meta["n_labelled"] == 2
    # the Features page's filter: features whose main domain is code
    from backend.store import query

    assert query.list_features(run, "d", domain="code")["feature"].tolist() == [0, 2]
    assert query.count_features(run, "d", domain="math") == 1


def test_domains_need_labels_and_valid_settings(tmp_path):
    run = _planted_run(tmp_path, None)
    with pytest.raises(UserError, match="run `python -m backend explain"):
        dom.compute_domains(run, "d", calibrate=False)
    with pytest.raises(UserError, match="label-weight"):
        dom.compute_domains(run, "d", dom.DomainsConfig(label_weight=1.5))
    with pytest.raises(UserError, match="python -m backend domains"):
        dom.load_domains(run, "d")
    from backend.store import query

    with pytest.raises(UserError, match="python -m backend domains"):
        query.list_features(run, "d", domain="code")
    assert dom.source_domain("brown:romance") == "fiction" and dom.source_domain("brown:news") == "prose"
    assert dom.source_domain("python-stdlib") == "code" and dom.source_domain("my-genre") == "my-genre"


# ------------------------------------------------------------------ detection: a planted dictionary on the tiny model

PROMPT = "if 12 apples cost 6 dollars then def add ( a , b )"
CODE_WORDS = {"def", "add", "(", ",", ")"}


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_model_dir):
    """A run folder with a dictionary of one feature per token of PROMPT (its encoder is that token's hook activation,
    its bias lets it fire there alone) and planted domains: code for the code words, math for the others."""
    from backend.diagnosis.detect import tokenize_with_offsets
    from backend.model import hooks
    from backend.model.loading import load_model

    lm = load_model(str(tiny_model_dir), device="cpu")
    ids, _ = tokenize_with_offsets(lm.tokenizer, PROMPT)
    with torch.no_grad():
        acts = hooks.capture(lm.model, hooks.parse_hook(HOOK, hooks.n_layers(lm.model)), torch.tensor([ids]))[0]
    x = acts[1:].double()  # [T-1, d]
    w = x / x.norm(dim=1, keepdim=True)  # feature j reads the direction of token j
    proj = x @ w.T  # [token, feature]
    own = proj.diagonal()
    other = torch.where(torch.eye(len(x), dtype=torch.bool), -torch.inf, proj).amax(0)
    assert (own > other).all()  # each token is the best match of its own feature
    b = -(own + other) / 2
    root = tmp_path_factory.mktemp("planted")
    words = PROMPT.split()
    tok = make_tokenizer()
    run = write_run(root / "run", np.array([ids]), [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])],
                    "math", d_in=x.shape[1], model=str(tiny_model_dir), hook=HOOK, heldout_from=1)
    d = len(words)
    write_dictionary(run, "planted", x.shape[1], d, tensors={"W_enc": w.T.float(), "b_enc": b.float(),
                                                              "W_dec": w.float(), "b_dec": np.zeros(x.shape[1])})
    p = np.array([[1.0, 0.0] if wd in CODE_WORDS else [0.0, 1.0] for wd in words])
    table = dom.domain_table(p, p, np.full_like(p, 0.5), np.zeros(d, bool), np.ones((d, 2)), ["code", "math"])
    fd = dom.FeatureDomains(["code", "math"], p.astype(np.float32), table, {"thresholds": {"math": {"threshold": 0.5}}})
    from backend.dictionaries import load_dictionary

    return lm, load_dictionary(run / "dictionaries" / "planted"), fd, words


def test_planted_off_domain_tokens_are_flagged_and_in_domain_ones_are_not(planted):
    from backend.diagnosis.detect import diagnose_text

    lm, dictionary, fd, words = planted
    labels = {j: f"the word {wd}" for j, wd in enumerate(words)}
    diag = diagnose_text(lm, dictionary, HOOK, PROMPT, fd, "math", labels)
    t = diag.table.set_index("token")
    for wd in words:
        assert t.loc[wd, "features"][0] == words.index(wd)  # the planted feature is the token's top feature
    assert set(diag.flagged["token"]) == CODE_WORDS
    assert t.loc["def", "ood"] == pytest.approx(1.0) and t.loc["apples", "ood"] == pytest.approx(0.0)
    assert not t.loc["apples", "flagged"] and not t.loc["12", "flagged"]
    assert diag.score == pytest.approx(1.0) and diag.summary()["n_flagged"] == 5
    assert diag.features.query("pos == 8")["label"].tolist()[0] == "the word def"  # position 0 is BOS
    assert diag.features.query("pos == 8")["domain"].tolist()[0] == "code"
    feats, pos = diag.ablation()
    assert pos == [8, 9, 10, 12, 14] and feats == [7, 8, 9, 11, 13]  # the code features at the code tokens
    # the same prompt read as code: the math words are flagged instead
    as_code = diagnose_text(lm, dictionary, HOOK, PROMPT, fd, "code", labels, threshold=0.5)
    assert set(as_code.flagged["token"]) == set(words) - CODE_WORDS
    # a region: only the first six words may be flagged
    region = diagnose_text(lm, dictionary, HOOK, PROMPT, fd, "math", labels, region=(0, PROMPT.index(" then")))
    assert region.flagged.empty and region.table["in_region"].sum() == 6
    json.dumps(diag.to_json())  # the CLI's --json record is plain JSON


def test_detection_errors(planted):
    from backend.diagnosis.detect import diagnose_text

    lm, dictionary, fd, _ = planted
    with pytest.raises(UserError, match="unknown domain 'poetry'.*code, math"):
        diagnose_text(lm, dictionary, HOOK, PROMPT, fd, "poetry", threshold=0.5)
    with pytest.raises(UserError, match="empty"):
        diagnose_text(lm, dictionary, HOOK, "   ", fd, "math")
    with pytest.raises(UserError, match="region"):
        diagnose_text(lm, dictionary, HOOK, PROMPT, fd, "math", region=(5, 500))
    with pytest.raises(UserError, match="no flag threshold for domain 'code'"):
        diagnose_text(lm, dictionary, HOOK, PROMPT, fd, "code")


# ------------------------------------------------------------------ the pipeline on the tiny store


@pytest.fixture(scope="module")
def diag_store(tmp_path_factory, tiny_store):
    """A copy of the tiny store (cache -> train -> analyze) with deterministic labels and domains."""
    from backend.labels.explain import explain_features

    root = tmp_path_factory.mktemp("diag_data")
    shutil.copytree(tiny_store, root, dirs_exist_ok=True)
    run = root / "runs" / "tiny"
    explain_features(run, "relu-l1")
    dom.compute_domains(run, "relu-l1", progress=False)
    return run


def test_cross_fitted_rate_of_a_quantile_threshold_is_the_asked_rate_on_exchangeable_tokens():
    from backend.diagnosis.calibrate import _cross_fit

    rng = np.random.default_rng(0)
    ood, seq = rng.random(20 * 500), np.repeat(np.arange(20), 500)  # 20 sequences, no shift between them
    tok_rate, win_rate, n_a, n_b = _cross_fit(ood, seq, 0.99)
    assert 0.005 <= tok_rate <= 0.02 and n_a == n_b == 5000
    shifted = ood + (seq % 2) * 0.5  # one half reads higher: its threshold flags far more of the other half's tokens
    assert _cross_fit(shifted, seq, 0.99)[0] > 0.2


def test_thresholds_are_calibrated_on_heldout_in_domain_tokens(diag_store):
    fd = dom.load_domains(diag_store, "relu-l1")
    thr = fd.meta["thresholds"]
    assert set(thr) <= set(fd.domains) and thr  # the tiny run's held-out sequences cover some domains
    for d, r in thr.items():
        assert 0 <= r["threshold"] <= 1 and r["n_tokens"] > 0 and r["n_seqs"] >= 1
        assert 0 <= r["crossfit_token_rate"] <= 1  # 2 tiny held-out sequences: the rate itself is planted below
    assert np.allclose(fd.p.sum(1), 1, atol=1e-5)


def test_experiment_conditions_on_the_tiny_model(diag_store, tiny_model_dir, tmp_path):
    """Conditions a-d and the ablation end to end: every condition scored on the same items, the rules applied
    only where their condition says, the paired tests present, and the files written and read back."""
    from backend.diagnosis import report
    from backend.diagnosis.commands import load_labels
    from backend.diagnosis.experiment import DictionaryDetector, run_experiment
    from backend.diagnosis.rules import load_rules
    from backend.dictionaries import load_dictionary
    from backend.model.loading import load_model
    from backend.tasks.schema import Item, Task

    lm = load_model(str(tiny_model_dir), device="cpu")
    fd = dom.load_domains(diag_store, "relu-l1")
    det = DictionaryDetector("relu-l1", load_dictionary(diag_store / "dictionaries/relu-l1"), fd,
                             load_labels(diag_store, "relu-l1"), threshold=0.0)  # flag everything with mass
    texts = ["3 + 4 = 7 and 7 * 2 = 14 so the answer is", "if 12 apples cost 6 dollars then 1 apple costs",
             "7 * 2 = 14 and 3 + 4 ="]
    items = [Item(i, t, ("14", "7", "6"), (1.0, 0.0, 0.0)) for i, t in enumerate(texts)]
    task = Task("toy_math", items)
    res = run_experiment(lm, HOOK, [det], [task], "math", load_rules(), seed=1, ablate=True, n_resamples=1000,
                         progress=False)
    df = res.items
    assert set(df["condition"]) == {"original", "flagged", "all", "random", "ablate"}
    assert (df.groupby("condition").size() == 3).all()
    every = df[df["condition"] == "all"].set_index("item")
    assert every.loc[0, "input"] == "3 + 4 = 7 and 7 times 2 = 14 so the answer is"  # rules at every match
    assert not every.loc[1, "changed"]  # nothing to rewrite
    flagged = df[df["condition"] == "flagged"].set_index("item")
    assert flagged.loc[0, "changed"] and flagged.loc[0, "input"] == every.loc[0, "input"]  # all tokens flagged
    orig = df[df["condition"] == "original"].set_index("item")
    assert (orig["input"] == texts).all() and (orig["n_flagged"] > 0).all()
    for _, r in df.iterrows():
        assert 0 <= r["p_correct"] <= 1 and r["correct"] == (r["pred"] == 0)
        assert r["p_pred"] >= r["p_correct"] - 1e-12
    s = res.summary
    assert set(s["condition"]) == set(df["condition"]) and (s["flag_rate"] == 1.0).all()
    assert set(zip(res.tests["a"], res.tests["b"])) >= {("original", "flagged"), ("all", "flagged"), ("random", "flagged")}
    report.write_results(res, tmp_path / "eval")
    back = report.read_results(tmp_path / "eval")
    assert len(back["items"]) == len(df) and back["config"]["tasks"] == {"toy_math": 3}
    assert (tmp_path / "eval" / "chart.html").stat().st_size > 10_000
    assert "original" in report.format_table(res)


def test_cli_errors_are_one_line(diag_store, tmp_path, capsys):
    from backend.cli import main

    run = str(diag_store)
    assert main(["diagnose", "--run", run, "--dict", "relu-l1", "--text", "  "]) == 2
    assert "--text is empty" in capsys.readouterr().err
    assert main(["diagnose", "--run", run, "--dict", "relu-l1", "--text", "3 + 4", "--domain", "poetry"]) == 2
    err = capsys.readouterr().err
    assert "unknown domain 'poetry'" in err and err.count("\n") == 1
    bare = tmp_path / "bare"
    shutil.copytree(diag_store, bare)
    (bare / "labels.duckdb").unlink()
    for f in ("domains.parquet", "domains.json", "label_embeddings.npz"):
        (bare / "dictionaries/relu-l1" / f).unlink(missing_ok=True)
    assert main(["diagnose", "--run", str(bare), "--dict", "relu-l1", "--text", "3 + 4"]) == 2
    assert "run `python -m backend explain" in capsys.readouterr().err
    assert main(["domains", "--run", run, "--dict", "nope"]) == 2
    assert "no dictionary 'nope'" in capsys.readouterr().err
    assert main(["diagnose-eval", "--run", run, "--n", "0"]) == 2
    assert "--n must be at least 1" in capsys.readouterr().err
