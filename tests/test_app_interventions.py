"""AppTests of the interventions UI on the contract store of tests/test_app_pages.py (tiny model, no activation
shards, so every pass also runs the upstream layers): the feature page's Effects panel and Steer box, the
prompt inspector's edits, the Features table sorted by ablation effect, and errors shown as messages."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.test_app_pages import APP, FAKE_DICT, FAKE_RUN, SCRIPT_FEATURE, make_fake_store, page_text


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_model_dir) -> Path:
    return make_fake_store(tmp_path_factory.mktemp("iv_data"), model_dir=str(tiny_model_dir))


def _page(root: Path, monkeypatch, page: str, **params):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FEATURE_EXPLORER_DATA", str(root))
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params.update({"run": FAKE_RUN, "dict": FAKE_DICT, **{k: str(v) for k, v in params.items()}})
    return at.switch_page(page)


def _html(at) -> str:
    return "\n".join(h.proto.body for h in at.get("html"))


def test_effects_panel_ablates_on_top_contexts(root, monkeypatch):
    at = _page(root, monkeypatch, "app_pages/feature.py", feature=SCRIPT_FEATURE).run()
    assert not at.exception, at.exception
    assert "What this feature does" in page_text(at) and "fx-effects" not in _html(at)  # nothing runs before the click
    at.button(key="fx_ablate").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    html = _html(at)
    assert html.count('class="fx-ctx fx-effect"') == 20  # the 20 top contexts
    assert "mean loss change at the peak" in page_text(at)
    assert "rgba(214,39,40" in html or "rgba(31,119,180" in html  # tokens shaded by loss change
    assert "loss " in html and "KL " in html and "promoted: " in html  # details on hover
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script" not in html and "<b>" not in html
    # the next feature starts without running anything, a rerun of this one is served from the cache
    at.button(key="next").click().run()
    assert "fx-effects" not in _html(at)


def test_steer_box_one_strength_and_sweep(root, monkeypatch):
    at = _page(root, monkeypatch, "app_pages/feature.py", feature=3).run()
    at.button_group(key="fx_do_view").set_value("Steer").run()
    assert not at.exception, at.exception
    at.text_area(key="steer_prompt").input("the cat sat on the")
    at.slider(key="steer_tokens").set_value(6)
    at.slider(key="steer_strength").set_value(8.0)  # the tiny model needs a push to change its text
    at.button(key="FormSubmitter:fx_steer_form-Steer").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    gens = [h for h in at.get("html") if "fx-gen" in h.proto.body]
    assert len(gens) == 2 and all("the cat sat on the" in g.proto.body for g in gens)
    assert "**Clean**" in page_text(at) and "Steered: #3 +8 x max act" in page_text(at)
    assert "tokens/s each" in page_text(at)
    at.radio(key="steer_mode").set_value("sweep of 5")
    at.button(key="FormSubmitter:fx_steer_form-Steer").click().run()
    assert not at.exception, at.exception
    table = next(df.value for df in at.dataframe if "kl_first" in df.value.columns)
    assert len(table) == 6 and table["strength"].iloc[0] == "clean" and table["kl_first"].iloc[0] == 0
    # a bad prompt is a message, not a traceback
    at.text_area(key="steer_prompt").input("   ")
    at.radio(key="steer_mode").set_value("one")
    at.button(key="FormSubmitter:fx_steer_form-Steer").click().run()
    assert not at.exception, at.exception
    assert at.error and "empty" in at.error[0].value


def test_prompt_inspector_edits(root, monkeypatch):
    at = _page(root, monkeypatch, "app_pages/inspect.py").run()
    at.text_area[0].input("the cat sat on the mat and <b>bold</b> are literal tokens here")
    at.button[0].click().run()
    assert not at.exception, at.exception
    if "No feature fires" in page_text(at):
        pytest.skip("no feature fires on this prompt in the fake dictionary")
    assert "Intervene on this text" in page_text(at)
    chosen = at.selectbox(key="p_feature").value
    assert at.multiselect(key="p_edit_feats").value == [chosen]
    at.selectbox(key="p_edit_op").set_value("steer: add value x W_dec")
    at.number_input(key="p_edit_value").set_value(6.0)
    at.button(key="FormSubmitter:p_edit_form-Apply edit").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert f"steer 6 on #{chosen}" in page_text(at)
    html = _html(at)
    assert "rgba(214,39,40" in html or "rgba(31,119,180" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "<b>" not in html
    charts = [c for c in at.get("plotly_chart") if "Next token after" in str(c.proto.spec)]
    assert len(charts) == 1 and '"clean"' in charts[0].proto.spec and '"edited"' in charts[0].proto.spec
    table = next(df.value for df in at.dataframe if "loss_change" in df.value.columns)
    assert len(table) == len(at.session_state["p_text"].split())  # every token after BOS
    # another position's distribution
    at.selectbox(key="p_edit_dist_pos").set_value(3).run()
    assert not at.exception
    # an absurd value is a message
    at.number_input(key="p_edit_value").set_value(1e9)
    at.button(key="FormSubmitter:p_edit_form-Apply edit").click().run()
    assert not at.exception, at.exception
    assert at.error and "absurd" in at.error[0].value


def test_features_table_sorts_by_ablation_effect(root, monkeypatch, tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "data"
    shutil.copytree(root / FAKE_RUN, data / FAKE_RUN)
    feats = np.array([4, 9, 2], dtype=np.int32)
    pq.write_table(pa.table({"feature": feats, "loss_change_peak": np.array([0.5, 0.9, -0.1], np.float32),
                             "loss_change_after": np.array([0.1, 0.2, 0.0], np.float32),
                             "n_contexts": np.array([20, 20, 20], np.int32)}),
                   data / FAKE_RUN / "dictionaries" / FAKE_DICT / "effects.parquet")
    at = _page(data, monkeypatch, "app_pages/features.py").run()
    at.selectbox(key="f_sort").set_value("ablation: loss change at peak").run()
    at.toggle(key="f_desc").set_value(True).run()
    assert not at.exception, at.exception
    df = at.dataframe[0].value
    assert df["feature"].tolist()[:3] == [9, 4, 2] and "loss_change_peak" in df.columns
    assert df["loss_change_peak"].iloc[3:].isna().all()
