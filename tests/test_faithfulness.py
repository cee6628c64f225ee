"""Faithfulness: what each q removes, a planted case where one feature carries the answer (its comprehensiveness is
the maximum, random is near zero at small q), the CLI end to end on the tiny run (Parquet, summary, chart, the token
side reused by a second dictionary) and its bad inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from backend.common.errors import UserError
from backend.faithfulness import selection, store
from backend.faithfulness.evaluate import FaithfulnessOptions
from tests.test_tasks import assert_one_line_error, run_cli

TASK = {"name": "tiny_fixture", "example_input_prefix": "Q: ", "example_output_prefix": "\nA: ",
        "examples": [{"input": "the cat sat on the", "target_scores": {"mat": 1, "rug": 0, "sky": 0}},
                     {"input": "a quiet river ran past the old", "target_scores": {"mill": 1.0, "dog": 0.0}},
                     {"input": "x = [ 1 , 2 , 3 ] ; y =", "target_scores": {"sum": 1, "len": 1, "print": 0, "def": 0}}]}


# ------------------------------------------------------------------------------------------ selection


def test_top_q_counts_and_nested_sets():
    assert [selection.n_top(q, 50) for q in selection.QS] == [1, 3, 5, 10, 25]  # ceil, at least one
    assert selection.n_top(1, 3) == 1 and selection.n_top(50, 3) == 2 and selection.n_top(5, 0) == 0
    order = selection.ranking(np.array([0.1, 0.9, -0.5, 0.9, 0.3]))
    assert order.tolist() == [1, 3, 4, 0, 2]  # highest first, ties in order
    sets = selection.removal_sets(order, [20, 60])
    assert [s.tolist() for s in sets] == [[1], [3, 4, 0, 2], [1, 3, 4], [0, 2]]
    a = selection.random_orders(selection.item_rng(0, "t", 3, 0), 10, 2)
    b = selection.random_orders(selection.item_rng(0, "t", 3, 0), 10, 2)
    assert all((x == y).all() for x, y in zip(a, b)) and not (a[0] == a[1]).all()  # seeded, draws differ


# ------------------------------------------------------------------------------------------ planted case


@pytest.fixture(scope="module")
def planted(tiny_model_dir):
    """The tiny model hooked after its last block (downstream = final norm + unembedding), an exact dictionary of
    +-an orthonormal basis whose first vector is the last prompt position's activation u, and an unembedding where
    choice 'mat' reads +2u and 'rug' -2u: feature 0 at the last position alone carries the answer."""
    from backend.attribution.features import hook_acts
    from backend.attribution.targets import continuation_ids, pack_item
    from backend.dictionaries import KINDS
    from backend.interventions.inputs import tokenize_text
    from backend.model.hooks import parse_hook
    from backend.model.loading import load_model
    from backend.tasks.scoring import EncodedItem

    lm = load_model(str(tiny_model_dir), device="cpu")  # this module's own copy: its unembedding is changed
    hp_name = "blocks.3.hook_resid_post"
    hp = parse_hook(hp_name)
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    choices = [continuation_ids(lm.tokenizer, w, "target", vocab) for w in ("rug", "mat")]  # correct = 1
    packed = pack_item(EncodedItem(tokenize_text(lm.tokenizer, "the cat sat on the"), choices))
    x = hook_acts(lm.model, hp, packed)[0, packed.n_prompt - 1]
    u = x / x.norm()
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.cat([u[:, None], torch.randn(len(u), len(u) - 1, generator=g)], 1))
    basis = Q.T.clone()  # rows orthonormal, the first +-u
    basis[0] = u
    W_dec = torch.cat([basis, -basis])  # [2d, d]: codes relu(+-basis x) reconstruct x exactly
    d = KINDS["relu-l1"]({"d_in": len(u), "d_sae": 2 * len(u), "metadata": {"hook_name": hp_name}})
    d.load_state_dict({"W_enc": W_dec.T.contiguous(), "b_enc": torch.zeros(2 * len(u)), "W_dec": W_dec,
                       "b_dec": torch.zeros(len(u))})
    with torch.no_grad():
        W_U = lm.model.get_output_embeddings().weight
        W_U[choices[1][0]] = 2 * u
        W_U[choices[0][0]] = -2 * u
    return lm, d.eval(), hp, packed


def test_planted_feature_gets_maximal_comprehensiveness_and_random_stays_low(planted):
    from backend.attribution.features import attribute_features
    from backend.attribution.targets import Target
    from backend.faithfulness.measure import feature_side
    from backend.interventions.inputs import special_ids

    lm, d, hp, packed = planted
    special = special_ids(lm.tokenizer)
    fa = attribute_features(lm, d, hp, packed, Target("choice", 1), special)
    first = int(np.argmax(fa.attribution))
    assert (fa.feature[first], fa.pos[first]) == (0, packed.n_prompt - 1)  # ranked first
    res = feature_side(lm, d, hp, packed, 1, (1,), special, selection.QS, draws=20, rng=np.random.default_rng(0))
    best = res.p_clean - 0.5  # without u the last position is 0: both choices' logits are 0
    assert res.p_clean > 0.99 and res.correct_clean and res.n_units > 200
    np.testing.assert_allclose(res.comp, best, atol=1e-3)  # every q removes the carrier: the maximum
    np.testing.assert_allclose(res.suff, 0.0, atol=1e-3)  # the carrier alone keeps the answer
    # random pairs rarely hit the one carrier: near zero at small q, ~q * best on average
    assert res.comp_random[:2].max() < 0.1 * best
    assert 0 <= res.comp_random.mean() < 0.4 * best
    assert res.suff_random.mean() > 0.6 * best
    assert res.comp.mean() - res.comp_random.mean() > 0.6 * best


# ------------------------------------------------------------------------------------------ CLI end to end


@pytest.fixture(scope="module")
def run_copy(tiny_store, tmp_path_factory):
    """A copy of the tiny run with a second dictionary (the first's weights under another name)."""
    src = tiny_store / "runs" / "tiny"
    dst = tmp_path_factory.mktemp("faith") / "tiny"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("labels.duckdb*", "faithfulness", "tasks"))
    shutil.copytree(dst / "dictionaries" / "relu-l1", dst / "dictionaries" / "second")
    task = dst.parent / "task.json"
    task.write_text(json.dumps(TASK))
    return dst, task


def test_cli_writes_items_summary_chart_and_reuses_the_token_side(run_copy, monkeypatch):
    run, task = run_copy
    code, out, err = run_cli("faithfulness", "--run", run, "--dict", "relu-l1", "--task-file", task, "--random-draws", "2",
                             "--device", "cpu")
    assert code == 0, err
    assert "comprehensiveness" in out and "random_tokens" in out
    df = pd.read_parquet(run / "faithfulness" / "relu-l1" / "tiny_fixture.parquet")
    assert len(df) == 3 * 5 and sorted(df["q"].unique()) == list(selection.QS)
    assert set(store.COLUMNS["ig"][:3]) <= set(df.columns) and (df["kind"] == "relu-l1").all()
    assert set(store.COLUMNS["occlusion"][:3]) <= set(df.columns) and df["comp_occlusion"].notna().all()
    assert (df.loc[df["q"] == 1.0, "comp_occlusion"] >= df.loc[df["q"] == 1.0, "comp_random_tokens"] - 1e-9).all()
    assert ((df["k_pairs"] >= 1) & (df["k_pairs"] <= df["n_pairs"])).all() and (df["ig_error"] < 0.01).all()
    clean = df.groupby("item")["p_clean"].first()
    assert ((clean > 0) & (clean < 1)).all()
    assert np.allclose(df["p_clean"], df["p_clean_tokens"], atol=1e-4)  # the splice with its error term is clean
    summary = json.loads((run / "faithfulness" / "relu-l1" / "summary.json").read_text())
    rows = {r["method"]: r for r in summary["summary"]}
    assert set(rows) == set(store.METHODS) and summary["config"]["tiny_fixture"]["ig_steps"] == 20
    per_item = df.groupby("item")["comp_features"].mean()
    assert rows["features"]["aopc_comp"] == pytest.approx(per_item.mean())
    assert rows["features"]["aopc_comp_low"] <= rows["features"]["aopc_comp"] <= rows["features"]["aopc_comp_high"]
    assert (run / "faithfulness" / "aopc.html").stat().st_size > 100_000  # plotly.js inlined: opens offline
    # a second dictionary reuses the cached token side (IG is never run again)
    import backend.faithfulness.evaluate as ev

    monkeypatch.setattr(ev, "token_side", lambda *a, **k: pytest.fail("the token side was recomputed"))
    monkeypatch.setattr(ev, "occlusion_side", lambda *a, **k: pytest.fail("the occlusion side was recomputed"))
    code, out, err = run_cli("faithfulness", "--run", run, "--dict", "second", "--task-file", task, "--random-draws", "2",
                             "--device", "cpu")
    assert code == 0, err
    again = pd.read_parquet(run / "faithfulness" / "second" / "tiny_fixture.parquet")
    assert np.allclose(again["comp_ig"], df["comp_ig"]) and np.allclose(again["comp_features"], df["comp_features"])
    assert np.allclose(again["comp_occlusion"], df["comp_occlusion"])
    both = store.read_all(run)
    assert set(both["dictionary"]) == {"relu-l1", "second"}
    pts = store.curves(both)
    assert len(pts[pts["method"] == "ig"]) == 5  # the model's token side once per task, not per dictionary
    assert len(pts[pts["method"] == "occlusion"]) == 5


def test_results_from_before_occlusion_read_it_from_the_cache(run_copy, monkeypatch):
    """A dictionary measured before occlusion existed (no occlusion columns or summary rows, no cache): `faithfulness`
    without --dict computes the occlusion side alone (IG reused), and the dictionary's results read it in while
    their files stay as they were."""
    import backend.faithfulness.evaluate as ev

    run, task = run_copy
    folder = run / "faithfulness" / "second"
    old = pd.read_parquet(folder / "tiny_fixture.parquet")
    full = old.copy()
    old.drop(columns=[c for c in old if "occlusion" in c]).to_parquet(folder / "tiny_fixture.parquet", index=False)
    summary = json.loads((folder / "summary.json").read_text())
    summary["summary"] = [r for r in summary["summary"] if r["method"] != "occlusion"]
    (folder / "summary.json").write_text(json.dumps(summary))
    shutil.rmtree(run / "faithfulness" / store.OCCLUSION_DIR)
    assert not store.has_method(store.read_items(run, "second"), "occlusion")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(ev, "token_side", lambda *a, **k: pytest.fail("the IG side was recomputed"))
    code, out, err = run_cli("faithfulness", "--run", run, "--task-file", task, "--random-draws", "2", "--device", "cpu")
    assert code == 0, err
    assert "occlusion" in out and "features minus tokens" in out and "second" in out and "McNemar" in out
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no dictionary's file rewritten
    items = store.read_items(run, "second")
    assert np.allclose(items["comp_occlusion"], full["comp_occlusion"], atol=1e-6)
    s = store.read_summary(run)
    occl = s[(s["dictionary"] == "second") & (s["method"] == "occlusion")]
    assert len(occl) == 1 and occl["aopc_comp"].iloc[0] == pytest.approx(items.groupby("item")["comp_occlusion"].mean().mean())
    # a cache made with other q's is not read in
    key = run / "faithfulness" / store.OCCLUSION_DIR / "tiny_fixture.json"
    key.write_text(json.dumps({**json.loads(key.read_text()), "qs": [5.0]}))
    assert not store.has_method(store.read_items(run, "second"), "occlusion")


def test_paired_comparison_of_two_methods():
    rows = pd.DataFrame({"task": "t", "item": np.repeat([0, 1, 2, 3], 2), "q": [5.0, 50.0] * 4,
                         "comp_features": [0.5, 0.7, 0.2, 0.4, 0.6, 0.6, 0.1, 0.3], "suff_features": 0.0,
                         "correct_features": [0, 1, 0, 1, 1, 1, 0, 0],
                         "comp_occlusion": [0.1, 0.3, 0.2, 0.2, 0.1, 0.1, 0.0, 0.2], "suff_occlusion": 0.1,
                         "correct_occlusion": [1, 1, 1, 1, 1, 1, 0, 0]})
    p = store.paired(rows, "occlusion", "features")
    # per-item AOPC comp: features 0.6, 0.3, 0.6, 0.2 against occlusion 0.2, 0.2, 0.1, 0.1 -> differences .4 .1 .5 .1
    assert p["n_items"] == 4 and p["comp_diff"] == pytest.approx(0.275)
    assert 0.1 - 1e-9 <= p["comp_diff_low"] <= p["comp_diff"] <= p["comp_diff_high"] <= 0.5 + 1e-9
    assert p["suff_diff"] == pytest.approx(-0.1) and 0 < p["comp_p"] < 1
    assert np.isnan(store.paired(rows, "features", "features")["comp_p"])  # no difference: no test
    assert p["correct_top5_p"] == pytest.approx(0.5)  # McNemar exact: 2 items flip, both the same way
    assert p["correct_top5_diff"] == pytest.approx(-0.5)  # with the top 5% removed: 1 of 4 still correct against 3


def test_options_are_checked():
    with pytest.raises(UserError, match="--qs"):
        FaithfulnessOptions(qs=[0.0, 5.0])
    with pytest.raises(UserError, match="--ig-steps"):
        FaithfulnessOptions(ig_steps=0)
    assert FaithfulnessOptions(qs=[50, 1, 5, 5]).qs == [1.0, 5.0, 50.0]


def test_cli_bad_inputs_are_one_line(run_copy, tmp_path):
    run, task = run_copy
    assert_one_line_error(run_cli("faithfulness", "--run", run, "--dict", "relu-l1", "--task", "no_such_task"),
                          "unknown task 'no_such_task'")
    long = dict(TASK, examples=[{"input": " ".join(["the cat sat on the mat"] * 60), "target_scores": {"mat": 1, "rug": 0}}])
    (tmp_path / "long.json").write_text(json.dumps(long))
    assert_one_line_error(run_cli("faithfulness", "--run", run, "--dict", "relu-l1", "--task-file", tmp_path / "long.json",
                                  "--device", "cpu"), "more than the model's context length 256")
    assert_one_line_error(run_cli("faithfulness", "--run", run, "--dict", "nope", "--task-file", task), "no dictionary 'nope'")
    assert_one_line_error(run_cli("faithfulness", "--run", run, "--dict", "relu-l1", "--qs", "5,200"), "--qs")
    assert_one_line_error(run_cli("attribute", "--run", run, "--dict", "relu-l1", "--prompt", "the cat sat on the",
                                  "--target", "zebra", "--device", "cpu"), "target 'zebra' is not in the model's vocabulary")
    code, out, err = run_cli("attribute", "--run", run, "--dict", "relu-l1", "--prompt", "the cat sat on the",
                             "--target", "mat", "--contrast", "rug", "--top", "3", "--device", "cpu")
    assert code == 0, err
    assert "log p(target) - log p(contrast)" in out and "completeness error" in out
