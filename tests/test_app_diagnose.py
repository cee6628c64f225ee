"""AppTest of the Diagnose page, the feature page's domain line and the Features page's domain filter, on a copy of
the tiny store (cache -> train -> analyze) with deterministic labels and feature domains."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

APP = str(Path(__file__).resolve().parent.parent / "explorer" / "app.py")


@pytest.fixture(scope="module")
def domain_root(tmp_path_factory, tiny_store) -> Path:
    from backend.diagnosis.domains import compute_domains
    from backend.labels.explain import explain_features

    root = tmp_path_factory.mktemp("app_diag")
    shutil.copytree(tiny_store, root, dirs_exist_ok=True)
    run = root / "runs" / "tiny"
    explain_features(run, "relu-l1")
    compute_domains(run, "relu-l1", progress=False)
    return root


def _app(root: Path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FEATURE_EXPLORER_DATA", str(root))
    return AppTest.from_file(APP, default_timeout=180)


def _text(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [t.value for t in at.title]
    parts += [h.proto.body for h in at.get("html")] + [e.value for e in at.info] + [e.value for e in at.success]
    parts += [e.value for e in at.warning] + [e.value for e in at.error]
    return "\n".join(str(p) for p in parts)


def test_diagnose_page_flags_tokens_and_proposes_a_checked_reformulation(domain_root, monkeypatch):
    at = _app(domain_root, monkeypatch).switch_page("app_pages/diagnose.py").run()
    assert not at.exception, at.exception
    at.radio(key="dg_source").set_value("Your own text").run()
    assert not at.exception, at.exception
    at.text_area(key="dg_input").set_value("3 + 4 = 7 and 7 * 2 = 14 so the answer is 14")
    next(b for b in at.button if b.label == "Diagnose").click().run()  # the text area sits in a form
    at.selectbox(key="dg_domain").set_value("math").run()
    at.number_input(key="dg_thr_math").set_value(0.0).run()  # every token with features is flagged
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    text = _text(at)
    assert "tokens flagged" in text and "outline:" in text  # the shaded text with flagged tokens outlined
    feats = at.dataframe[0].value
    assert list(feats.columns) == ["page", "label", "domain", "p_expected", "weight", "activation"] and len(feats) > 0
    assert feats["page"].str.contains("feature=").all()  # each id links to its feature page
    assert "Rules (times)" in text and "7 times 2" in text  # the flagged "*" spelled out
    assert at.success and "accepted" in at.success[0].value  # same numbers, same operations
    # a threshold no token reaches: nothing flagged, nothing to reformulate
    at.number_input(key="dg_thr_math").set_value(1.0).run()
    assert not at.exception
    assert "No token is flagged" in _text(at)


def test_diagnose_page_without_domains_says_what_to_run(tiny_store, monkeypatch):
    at = _app(tiny_store, monkeypatch).switch_page("app_pages/diagnose.py").run()
    assert not at.exception, at.exception
    text = _text(at)
    assert "python -m backend domains" in text and "python -m backend explain" in text


def test_feature_page_shows_the_domain_and_features_filter_by_it(domain_root, monkeypatch):
    from backend.diagnosis.domains import load_domains

    fd = load_domains(domain_root / "runs" / "tiny", "relu-l1")
    live = fd.table[fd.table["domain"] != ""]
    feature, domain = int(live["feature"].iloc[0]), str(live["domain"].iloc[0])
    at = _app(domain_root, monkeypatch)
    at.query_params["feature"] = str(feature)
    at = at.switch_page("app_pages/feature.py").run()
    assert not at.exception, at.exception
    assert f"domain **{domain}**" in _text(at)
    at = _app(domain_root, monkeypatch).switch_page("app_pages/features.py").run()
    at.radio(key="f_domain").set_value(domain).run()
    assert not at.exception, at.exception
    shown = at.dataframe[0].value["feature"].tolist()
    assert shown and set(shown) <= set(fd.table.loc[fd.table["domain"] == domain, "feature"].tolist())
