"""AppTests of the label-quality parts of two pages: the Overview's "labels that hold" table (from
label_scores.json) and the Features page's search of labels by meaning, on the planted store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.store.label_store import LabelStore
from tests.helpers_labels import make_planted_store

APP = str(Path(__file__).resolve().parent.parent / "explorer" / "app.py")


@pytest.fixture
def app(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    run, d = make_planted_store(tmp_path)
    ls = LabelStore(run)
    ls.save(d, 0, "digits in numbers", "ada")
    ls.save(d, 1, "the definite article", "ada", source="auto-deterministic")
    monkeypatch.setenv("FEATURE_EXPLORER_DATA", str(tmp_path))
    return AppTest.from_file(APP, default_timeout=120), run, d


def test_overview_shows_the_fraction_of_labels_that_hold(app):
    at, run, d = app
    at.run()
    assert not at.exception, at.exception
    assert "No label has been scored yet" in "\n".join(c.value for c in at.caption)
    summary = {"scorers": {"embedding": {"fraction_hold": 0.5, "n_scored": 2, "n_hold": 1, "mean_f1": 0.71,
                                         "mean_accuracy": 0.8, "threshold": 0.75, "n_per_class": 10, "sampled": False,
                                         "seconds": 12.0, "created": "2026-11-24T08:00:00+0000"},
                           "lexical": {"fraction_hold": 0.25, "n_scored": 4, "n_hold": 1, "mean_f1": 0.4, "mean_accuracy": 0.6,
                                       "threshold": 0.75, "n_per_class": 10, "sampled": True, "seconds": 1.0,
                                       "shuffled_baseline": {"fraction_hold": 0.0}}}}
    (run / "dictionaries" / d / "label_scores.json").write_text(json.dumps(summary))
    at.run()
    assert not at.exception, at.exception
    tables = [t.value for t in at.dataframe if "hold" in t.value.columns]
    assert len(tables) == 1
    row = tables[0].iloc[0]
    assert row["dictionary"] == d and row["scorer"] == "embedding" and row["hold"] == 0.5 and row["n_scored"] == 2
    assert row["rule"] == "F1 >= 0.75 on 10+10 held-out contexts"
    lex = tables[0].set_index("scorer").loc["lexical"]  # every scorer of a dictionary gets its row
    assert len(tables[0]) == 2 and lex["hold"] == 0.25 and lex["shuffled"] == 0.0 and lex["rule"].endswith("(sample)")


def test_features_page_searches_labels_by_meaning(app):
    at, run, d = app
    at.switch_page("app_pages/features.py").run()
    assert not at.exception, at.exception
    at.text_input(key="f_semantic").set_value("numerals and amounts").run()
    assert not at.exception, at.exception
    hits = next(t.value for t in at.dataframe if "similarity" in t.value.columns)
    assert hits["feature"].tolist() == [0, 1] and hits["similarity"].iloc[0] > hits["similarity"].iloc[1]
    # a new label is found without restarting (the index follows labels.duckdb)
    LabelStore(run).save(d, 2, "counting money and prices in dollars", "ada")
    at.text_input(key="f_semantic").set_value("dollars and prices").run()
    hits = next(t.value for t in at.dataframe if "similarity" in t.value.columns)
    assert hits["feature"].iloc[0] == 2
