"""AppTest of the Compare page on the fake contract store (tests/fake_run.py) plus a second, permuted dictionary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.test_app_pages import (
    APP,
    FAKE_DICT,
    SCRIPT_FEATURE,
    make_fake_store,
    page_text,
)

PERMUTED = "relu-l1-permuted"


@pytest.fixture(scope="module")
def two_dict_store(tmp_path_factory, tiny_model_dir) -> Path:
    """Run `fake` with relu-l1 and a copy whose features are a known permutation of it (and a worse EV)."""
    root = make_fake_store(tmp_path_factory.mktemp("cmp_data"), model_dir=str(tiny_model_dir))
    src = root / "fake" / "dictionaries" / FAKE_DICT
    dst = src.parent / PERMUTED
    shutil.copytree(src, dst)
    t = load_file(str(dst / "sae_weights.safetensors"))
    perm = torch.from_numpy(np.random.default_rng(3).permutation(t["W_dec"].shape[0]))
    t["W_dec"], t["W_enc"], t["b_enc"] = t["W_dec"][perm].contiguous(), t["W_enc"][:, perm].contiguous(), t["b_enc"][perm]
    save_file(t, str(dst / "sae_weights.safetensors"))
    m = json.loads((dst / "metrics.json").read_text())
    m.update(l0=9.5, explained_variance=0.7)
    (dst / "metrics.json").write_text(json.dumps(m))
    return root


@pytest.fixture
def compare_app(two_dict_store, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FEATURE_EXPLORER_DATA", str(two_dict_store))
    return AppTest.from_file(APP, default_timeout=120)


def test_compare_page_metrics_pareto_and_matches(compare_app):
    at = compare_app.switch_page("app_pages/compare.py").run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    table = at.dataframe[0].value
    assert list(table["dictionary"]) == [FAKE_DICT, PERMUTED]
    assert table.set_index("dictionary").loc[PERMUTED, "explained_variance"] == pytest.approx(0.7)
    assert (table["encode_mflops"] > 0).all()
    assert len(at.get("plotly_chart")) == 1  # the Pareto scatter (no synthetic results yet)
    # a permuted copy: every feature has a partner at cosine 1
    metric = next(m for m in at.metric if m.label.startswith("matched with cos"))
    assert metric.value == "100.0%"
    text = page_text(at)
    assert "1.00" in text and "cosine" in text
    assert "python -m backend synth" in text
    # worst matches first: still cosine 1 everywhere, and the cards link to both dictionaries' feature pages
    at.selectbox(key="cmp_order").set_value("worst matches").run()
    assert not at.exception
    md = "\n".join(m.value for m in at.markdown)
    assert f"dict={FAKE_DICT}" in md and f"dict={PERMUTED}" in md


def test_compare_page_escapes_labels_and_contexts(compare_app):
    at = compare_app.switch_page("app_pages/compare.py").run()
    # page through until the script feature of A is shown; its label and contexts must stay text
    for page in range(1, 8):
        at.number_input(key="cmp_page").set_value(page).run()
        md = "\n".join(m.value for m in at.markdown)
        if f"{FAKE_DICT} #{SCRIPT_FEATURE}**]" in md:
            break
    else:
        pytest.fail("script feature never shown")
    html = "\n".join(h.proto.body for h in at.get("html"))
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "html tags &lt;b&gt;" in md


def test_compare_page_needs_two_dictionaries(tmp_path, monkeypatch, tiny_model_dir):
    from streamlit.testing.v1 import AppTest

    root = make_fake_store(tmp_path, model_dir=str(tiny_model_dir))
    monkeypatch.setenv("FEATURE_EXPLORER_DATA", str(root))
    at = AppTest.from_file(APP, default_timeout=60).switch_page("app_pages/compare.py").run()
    assert not at.exception
    assert "at least two analysed dictionaries" in page_text(at)


def test_compare_page_shows_the_synthetic_benchmark(two_dict_store, tmp_path, monkeypatch):
    """With `python -m backend synth` results in the data root, every benchmark figure is drawn after the Pareto view."""
    from streamlit.testing.v1 import AppTest

    from backend.synth.plots import synth_figures
    from tests.test_synth import fake_results

    root = tmp_path / "data"
    shutil.copytree(two_dict_store, root)
    (root / "synth").mkdir()
    fake_results().to_parquet(root / "synth" / "results.parquet", index=False)
    monkeypatch.setenv("FEATURE_EXPLORER_DATA", str(root))
    at = AppTest.from_file(APP, default_timeout=120).switch_page("app_pages/compare.py").run()
    assert not at.exception, at.exception
    n_figures = len(synth_figures(fake_results()))
    assert n_figures >= 2 and len(at.get("plotly_chart")) == 1 + n_figures
    assert "python -m backend synth" not in page_text(at)
