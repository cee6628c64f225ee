"""Held-out contexts, detection scoring (embedding scorer and an LLM scorer against a local stub), the
per-dictionary summary, and semantic label search, on a planted digit feature over real English text."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from backend.labels import heldout
from backend.labels.score import best_threshold, prf, run_scoring, score_features
from backend.store.label_store import LabelStore
from tests.helpers_labels import make_planted_store
from tests.llm_stub import StubLLM


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted_store(tmp_path_factory.mktemp("planted_score"))


@pytest.fixture(scope="module")
def scorer():
    from backend.labels.score import EmbeddingScorer

    return EmbeddingScorer(device="cpu")


def test_prf_and_threshold_on_known_numbers():
    assert prf(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)) == (0.5, 0.5, 0.5)
    assert prf(np.zeros(4, bool), np.array([1, 0, 1, 0], bool)) == (0.0, 0.0, 0.0)
    # separable: the threshold is the midpoint of the gap between 0.3 and 0.7
    assert best_threshold(np.array([0.1, 0.3, 0.7, 0.9]), np.array([0, 0, 1, 1], bool)) == pytest.approx(0.5)
    # best balanced accuracy (Youden's J), not "always yes": F1 would take t below 0.2 (F1 0.8 vs 0.67 here)
    t = best_threshold(np.array([0.2, 0.25, 0.3, 0.6, 0.8, 0.1]), np.array([1, 0, 0, 1, 1, 0], bool))
    assert 0.3 < t < 0.6


def test_heldout_contexts_are_unseen_activating_and_silent(planted):
    run, d = planted
    ctx_table = pd.read_parquet(run / "dictionaries" / d / "contexts.parquet")
    seen = ctx_table.loc[ctx_table["feature"] == 0, "token_index"]  # every analysed peak of feature 0
    assert len(seen) > 0
    ctx = heldout.heldout_contexts(run, d, 0, n=10, seed=0)
    pos = [c for c in ctx if c["activating"]]
    neg = [c for c in ctx if not c["activating"]]
    assert len(pos) == 10 and len(neg) == 10
    for c in pos:
        assert c["tokens"][c["peak"]].strip().isdigit() and c["value"] > 0 and c["acts"][c["peak"]] == c["value"]
        assert not set(c["token_indices"]) & set(seen.tolist())  # no analysed peak inside a held-out window
    for c in neg:
        assert max(c["acts"]) == 0 and not any(t.strip().isdigit() for t in c["tokens"])
    heldout_from = 36 * 64
    assert sum(c["token_index"] >= heldout_from for c in ctx) >= 15  # mostly from the held-out sequences
    again = heldout.heldout_contexts(run, d, 0, n=10, seed=0)
    assert [c["token_index"] for c in again] == [c["token_index"] for c in ctx]
    other = heldout.heldout_contexts(run, d, 0, n=10, seed=1)
    assert [c["token_index"] for c in other] != [c["token_index"] for c in ctx]
    # a dead feature has no activating window, only silent ones
    assert not any(c["activating"] for c in heldout.heldout_contexts(run, d, 2, n=5))


def test_digit_feature_detected_from_its_deterministic_explanation(planted, scorer):
    from backend.labels.explain import explain_features

    run, d = planted
    text = explain_features(run, d, features=[0], progress=False)["explanations"][0]
    assert "digits" in text
    labels = pd.DataFrame({"feature": [0, 0], "version": [1, 1], "text": [text, "ships and the sea"],
                           "source": ["auto-deterministic", "human"]})
    df = score_features(run, d, labels, scorer, n=10, seed=0, progress=False)
    right, wrong = df.iloc[0], df.iloc[1]
    assert right["f1"] > 0.9 and right["n_pos"] == 10 and right["n_neg"] == 10
    assert wrong["f1"] < 0.75 and wrong["accuracy"] < right["accuracy"] - 0.3  # a wrong label does not hold


def test_run_scoring_stores_scores_and_summary(planted, scorer, monkeypatch):
    import backend.labels.score as S

    run, d = planted
    monkeypatch.setattr(S, "make_scorer", lambda *a, **k: scorer)
    ls = LabelStore(run)
    ls.save(d, 0, "digits in numbers", "ada")
    ls.save(d, 1, "names of sea animals", "ada")
    s = run_scoring(run, d, scorer="embedding", n=10, progress=False)
    assert s["n_scored"] == 2 and s["n_hold"] == 1 and s["fraction_hold"] == 0.5 and s["threshold"] == 0.75
    saved = json.loads((run / "dictionaries" / d / "label_scores.json").read_text())
    emb = saved["scorers"]["embedding"]
    assert emb["fraction_hold"] == 0.5 and emb["by_source"]["human"]["n_scored"] == 2 and emb["seconds"] >= 0
    sc = ls.scores(d).set_index("feature")
    assert sc.loc[0, "f1"] > 0.9 and sc.loc[0, "scorer"] == "embedding" and sc.loc[1, "f1"] < 0.75


def test_llm_scorer_through_a_stub(planted):
    run, d = planted
    LabelStore(run).save(d, 0, "digits in numbers", "bob")

    def answer(messages):  # a perfect judge for the digit label: yes iff the text holds a digit
        text = messages[1]["content"].split("Text: ", 1)[1].split("\n\nDoes", 1)[0]
        return "Yes" if any(ch.isdigit() for ch in text) else "No"

    with StubLLM(answer) as stub:
        s = run_scoring(run, d, scorer="openai", features=[0], llm_base_url=stub.base_url, llm_model="judge",
                        progress=False)
        n_req = len(stub.requests)
        assert n_req == 20 and stub.requests[0]["body"]["max_tokens"] == 3
        run_scoring(run, d, scorer="openai", features=[0], llm_base_url=stub.base_url, llm_model="judge", progress=False)
        assert len(stub.requests) == n_req  # cached
    assert s["n_scored"] == 1 and s["mean_f1"] == 1.0 and s["model"] == "judge"
    assert set(json.loads((run / "dictionaries" / d / "label_scores.json").read_text())["scorers"]) >= {"openai [chosen features]"}


def test_semantic_label_search(planted, scorer):
    from backend.labels.embeddings import label_embeddings, search_labels

    run, d = planted
    ls = LabelStore(run)
    ls.save(d, 0, "digits in numbers", "ada")
    ls.save(d, 1, "the definite article", "ada")
    ls.save(d, 2, "whales and ships at sea", "ada")
    hits = search_labels(run, d, "numerals and amounts", k=3, model=scorer.model)
    assert hits["feature"].tolist()[0] == 0 and list(hits.columns) == ["feature", "label", "source", "similarity"]
    assert hits["similarity"].is_monotonic_decreasing
    assert search_labels(run, d, "boats on the ocean", k=1, model=scorer.model)["feature"].tolist() == [2]
    # the on-disk cache holds one vector per label and is reused
    labels, emb = label_embeddings(run, d, model=scorer.model)
    assert emb.shape == (3, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    assert (run / "dictionaries" / d / "label_embeddings.npz").is_file()


def test_chunks_lie_on_the_sequence_grid():
    from backend.labels.score import chunks

    toks = [f" w{i}" for i in range(200)]
    a = chunks(toks[70:103], list(range(70, 103)), ctx_len=64, size=6, stride=3)  # seq 1 starts at 64: grid 64, 67, 70...
    b = chunks(toks[71:104], list(range(71, 104)), ctx_len=64, size=6, stride=3)
    assert a[0] == "w70 w71 w72 w73 w74 w75" and b[0] == "w73 w74 w75 w76 w77 w78"
    assert set(b) < set(a) and len(a) == len(b) + 1  # the shifted window reuses the chunks of the first
    # the sequence's last chunk ends at its last token (127), so a window ending there covers it
    end = chunks(toks[100:128], list(range(100, 128)), ctx_len=64, size=6, stride=3)
    assert end[-1].endswith("w127")
    assert chunks(toks[:4], list(range(4)), ctx_len=64) == ["w0 w1 w2 w3"]  # shorter than a chunk: one chunk


def test_lexical_terms_read_deterministic_and_free_text_labels():
    from backend.labels.score import lexical_match, lexical_terms

    t = lexical_terms('digits in numbers (9, 4, 1, 8); promotes 0, 1, 2')
    assert t["classes"] == {"digits"} and t["tokens"] == {"9", "4", "1", "8"}  # promoted tokens are not firing tokens
    t = lexical_terms('the token "is" (also was, "\\n"); often after it; promotes a')
    assert t["tokens"] == {"is", "was", "\n"} and not t["words"]
    assert lexical_terms('tokens such as like, ",", "\'s"')["tokens"] == {"like", ",", "'s"}
    free = lexical_terms("This feature fires on the word `whale` in sea stories")
    assert free["tokens"] == {"whale"} and free["words"] == {"sea", "stories"}
    # the peak region: the peak token and the two before it, case and space markers ignored
    toks = ["The", "Ġgreat", " Whale", " swam", " far", " away"]
    assert lexical_match(free, toks, peak=2) and lexical_match(free, toks, peak=4)
    assert not lexical_match(free, toks, peak=5) and not lexical_match(free, toks, peak=1)
    assert lexical_match(lexical_terms('the token "is"'), [" IS", "x"], peak=1)
    assert not lexical_match(lexical_terms('the token "\\n"'), [" ", "x"], peak=1)  # a space is not a line break
    assert not lexical_match(lexical_terms("never fires in the analysed corpus"), ["never", "fires"], peak=1)


def test_lexical_scorer_holds_for_the_digit_feature_not_for_a_wrong_label(planted):
    from backend.labels.explain import explain_features
    from backend.labels.score import LexicalScorer

    run, d = planted  # (other tests of this module leave human labels: explain without saving, over them)
    text = explain_features(run, d, features=[0], progress=False, overwrite_human=True, save=False)["explanations"][0]
    assert text.startswith("digits in numbers (")
    labels = pd.DataFrame({"feature": [0, 0, 0], "version": [1, 1, 1],
                           "text": [text, 'the token "the" (also a, of)', "ships and the sea"],
                           "source": ["auto-deterministic", "human", "human"]})
    df = score_features(run, d, labels, LexicalScorer(), n=10, seed=0, progress=False)
    right, article, sea = df.iloc[0], df.iloc[1], df.iloc[2]
    assert right["f1"] > 0.9 and right["accuracy"] > 0.9 and right["n_pos"] == 10 and right["n_neg"] == 10
    assert article["f1"] < 0.75 and sea["f1"] < 0.75 and sea["accuracy"] < right["accuracy"] - 0.3
