"""AppTest of the Compare page's Evaluate tab and the feature page's "fires on" panel, on the fake store evaluated by
the real suite (probing, NMI, stability; its corpus has no POS tags, which the tab must say, not fail on)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.fake_run import write_shards
from tests.test_app_pages import APP, FAKE_DICT, FAKE_RUN, page_text
from tests.test_compare_page import PERMUTED, two_dict_store  # noqa: F401 - the fixture

ANCHORED = "relu-l1-anchored"


@pytest.fixture(scope="module")
def evaluated_store(two_dict_store, tmp_path_factory) -> Path:  # noqa: F811
    """The two-dictionary store, plus the permuted dictionary as if trained anchored; all three evaluated."""
    from backend.evalsuite.suite import EvaluateConfig, evaluate_dictionary
    from backend.model.loading import load_model

    root = tmp_path_factory.mktemp("eval_data")
    shutil.copytree(two_dict_store, root, dirs_exist_ok=True)
    run = root / FAKE_RUN
    meta = json.loads((run / "run.json").read_text())  # the fake store has no activations: random ones will do
    acts = np.random.default_rng(0).standard_normal((meta["n_seqs"], meta["ctx_len"], meta["d_in"])).astype(np.float32)
    meta["shards"] = write_shards(run, acts, 8, "float32")
    (run / "run.json").write_text(json.dumps(meta))
    src, dst = run / "dictionaries" / PERMUTED, run / "dictionaries" / ANCHORED
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "cfg.json").read_text())
    cfg["training"] = {**cfg.get("training", {}), "anchor": {"anchor_kl": 0.8, "init_from": PERMUTED}}
    (dst / "cfg.json").write_text(json.dumps(cfg))
    lm = load_model(json.loads((run / "run.json").read_text())["model"], device="cpu")
    cfg = EvaluateConfig(only=["probing", "nmi", "stability"], contexts=24, random_directions=32, paraphrase_problems=1)
    for name in (FAKE_DICT, PERMUTED, ANCHORED):
        evaluate_dictionary(run, name, cfg, lm=lm, progress=False)
    return root


@pytest.fixture
def app(evaluated_store, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FEATURE_EXPLORER_DATA", str(evaluated_store))
    return AppTest.from_file(APP, default_timeout=120)


def test_evaluate_tab_shows_the_suite_side_by_side(app):
    app.query_params.update({"run": FAKE_RUN, "view": "evaluate"})
    at = app.switch_page("app_pages/compare.py").run()
    assert not at.exception, at.exception
    at.multiselect(key="cmp_dicts").set_value([FAKE_DICT, ANCHORED]).run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table["dictionary"]) == [FAKE_DICT, ANCHORED, "raw activations"]
    assert list(table["kind"]) == ["relu-l1", "relu-l1+anchored", "baseline"]
    assert table["nmi_pos_above"].isna().all() and table["nmi_source_above"].iloc[:2].notna().all()  # no POS tags here
    assert table.set_index("dictionary").loc[FAKE_DICT, "stability_answer_paraphrase"] >= 0
    assert [c.key for c in at.get("plotly_chart")] == ["nmi_hist", "stability"]
    text = page_text(at)  # 24 contexts of 3 genres are too few for a held-out source probe; no POS tags in this corpus
    assert "Sparse probing" in text and "No source probes" in text and "No part-of-speech probes" in text
    assert "Stability" in text and "Monosemanticity" in text


def test_evaluate_tab_names_the_command_for_dictionaries_not_evaluated(app, evaluated_store):
    (evaluated_store / FAKE_RUN / "dictionaries" / PERMUTED / "evaluation.json").rename(
        evaluated_store / FAKE_RUN / "dictionaries" / PERMUTED / "evaluation.json.bak")
    try:
        app.query_params.update({"run": FAKE_RUN, "view": "evaluate"})
        at = app.switch_page("app_pages/compare.py").run()
        at.multiselect(key="cmp_dicts").set_value([FAKE_DICT, PERMUTED]).run()
        assert not at.exception, at.exception
        assert any(f"--dict {PERMUTED}" in c.value for c in at.code)
    finally:
        (evaluated_store / FAKE_RUN / "dictionaries" / PERMUTED / "evaluation.json.bak").rename(
            evaluated_store / FAKE_RUN / "dictionaries" / PERMUTED / "evaluation.json")


def test_feature_page_shows_top_tags_with_nmi(app, evaluated_store):
    import pandas as pd

    tags = pd.read_parquet(evaluated_store / FAKE_RUN / "dictionaries" / FAKE_DICT / "feature_tags.parquet")
    f = int(tags.sort_values("nmi", ascending=False)["feature"].iloc[0])
    app.query_params.update({"run": FAKE_RUN, "dict": FAKE_DICT, "feature": str(f)})
    at = app.switch_page("app_pages/feature.py").run()
    assert not at.exception, at.exception
    text = page_text(at)
    best = tags[(tags["feature"] == f) & (tags["rank"] == 1)].iloc[0]
    assert "Fires on" in text and str(best["tag"]) in text and f"{float(best['nmi']):.3f}" in text


def test_feature_tags_table_holds_every_feature_s_rows_in_order(evaluated_store, tmp_path):
    """The explorer slices a feature's tags out of `feature_tags_table`: the same rows, in the same order, as the
    per-feature read, for every feature; a dictionary never evaluated gives an empty table."""
    import numpy as np
    import pandas as pd

    from backend.store.evaluations import feature_tags, feature_tags_table

    run = evaluated_store / FAKE_RUN
    table = feature_tags_table(run, FAKE_DICT)
    assert len(table) and (np.diff(table["feature"].to_numpy()) >= 0).all()
    feats = table["feature"].to_numpy()
    for f in range(int(feats.max()) + 2):  # the last one has no rows
        lo, hi = np.searchsorted(feats, [f, f + 1])
        sliced = table.iloc[lo:hi][["category", "tag", "nmi", "rank"]].reset_index(drop=True)
        pd.testing.assert_frame_equal(sliced, feature_tags(run, FAKE_DICT, f))
    assert feature_tags_table(tmp_path, "none").empty
