"""AppTests of the attribution view (prompt inspector) and the Faithfulness page, on the contract store of
tests/test_app_pages.py with the tiny model: results written by the real CLI, read back by the page."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.test_app_interventions import _html, _page
from tests.test_app_pages import FAKE_DICT, FAKE_RUN, make_fake_store, page_text
from tests.test_faithfulness import TASK
from tests.test_tasks import run_cli


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_model_dir) -> Path:
    return make_fake_store(tmp_path_factory.mktemp("fa_data"), model_dir=str(tiny_model_dir))


def test_attribution_view(root, monkeypatch):
    at = _page(root, monkeypatch, "app_pages/inspect.py").run()
    at.text_area[0].input("the cat sat on the <b>bold</b> and the")
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert "Attribute a prediction" in page_text(at)
    at.text_input(key="p_attr_target").input("mat")
    at.number_input(key="p_attr_top").set_value(5)
    at.button(key="FormSubmitter:p_attr_form-Attribute").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    table = next(df.value for df in at.dataframe if "attribution" in df.value.columns)
    assert table["exact_effect"].notna().sum() == 5 and table["exact_effect"].head(5).notna().all()
    assert table["page"].str.startswith("feature?run=").all() and table["page"].str.contains(f"dict={FAKE_DICT}").all()
    assert table["attribution"].abs().is_monotonic_decreasing
    text = page_text(at)
    assert "log p(target)" in text and "completeness error" in text
    html = _html(at)
    assert 'title="IG ' in html and "&lt;b&gt;bold&lt;/b&gt;" in html and "<b>bold" not in html
    charts = [c for c in at.get("plotly_chart") if "Attribution patching vs exact ablation" in str(c.proto.spec)]
    assert len(charts) == 1
    # a target the vocabulary lacks is a message
    at.text_input(key="p_attr_target").input("zebra")
    at.button(key="FormSubmitter:p_attr_form-Attribute").click().run()
    assert not at.exception, at.exception
    assert at.error and "not in the model's vocabulary" in at.error[0].value


def test_faithfulness_page_before_any_result(root, monkeypatch):
    at = _page(root, monkeypatch, "app_pages/faithfulness.py").run()
    assert not at.exception, at.exception
    assert "No faithfulness results" in page_text(at)
    assert any("python -m backend faithfulness" in c.value for c in at.code)
    assert "tasks eval" in page_text(at)


def test_faithfulness_page_with_results(root, monkeypatch, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(root / FAKE_RUN, data / FAKE_RUN)
    run = data / FAKE_RUN
    task = tmp_path / "task.json"
    task.write_text(json.dumps(TASK))
    code, _, err = run_cli("faithfulness", "--run", run, "--dict", FAKE_DICT, "--task-file", task, "--random-draws", "1",
                           "--qs", "5,50", "--device", "cpu")
    assert code == 0, err
    code, _, err = run_cli("tasks", "eval", "--run", run, "--dict", FAKE_DICT, "--task-file", task, "--device", "cpu")
    assert code == 0, err
    at = _page(data, monkeypatch, "app_pages/faithfulness.py").run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    specs = [str(c.proto.spec) for c in at.get("plotly_chart")]
    assert any("comprehensiveness" in s and "IG tokens" in s and "occlusion tokens" in s for s in specs)
    assert any("AnchorX SAE features: 27.4" in s for s in specs)
    table = next(df.value for df in at.dataframe if "comprehensiveness (AOPC)" in df.value.columns)
    assert set(table["method"]) == {"features", "ig", "occlusion", "random_features", "random_tokens"}
    assert table.loc[table["method"] == "occlusion", "features of"].tolist() == ["model"]
    assert "AnchorX (Shah 2025) reports 27.4" in page_text(at) and "points vs IG" in page_text(at)
    assert "; vs occlusion" in page_text(at)
    ret = next(df.value for df in at.dataframe if "spliced + error term" in df.value.columns)
    assert ret["task"].tolist() == ["tiny_fixture"] and ret["spliced + error term"].str.match(r"\d\.\d{3} \[").all()
