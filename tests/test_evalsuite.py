"""The evaluation suite's parts on planted cases: NMI, sparse probing, stability, POS alignment, paraphrases;
then `evaluate` end to end on the tiny run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from backend.corpus.contexts import Context, iter_contexts
from backend.corpus.pos_tags import align, universal_tag
from backend.corpus.readers import Document
from backend.evalsuite import monosemanticity as mono
from backend.evalsuite import probing, stability
from backend.evalsuite.paraphrases import FAMILIES, WORDINGS, paraphrase_problems


def planted_tokens(n=6000, seed=0):
    """Tokens with one of 4 tags; unit 0 fires exactly on tag 2, unit 1 at random (same density), unit 2 on tags
    1 and 2, unit 3 never; 60 contexts of 100 tokens."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    fires = np.zeros((n, 4))
    fires[:, 0] = labels == 2
    fires[:, 1] = rng.random(n) < (labels == 2).mean()
    fires[:, 2] = (labels == 1) | (labels == 2)
    return labels, fires, np.arange(n) // 100


def test_nmi_is_one_for_a_feature_that_fires_exactly_on_one_tag():
    labels, fires, _ = planted_tokens()
    nmi = mono.tag_nmi(sp.csr_matrix(fires), labels, 4)
    assert nmi.shape == (4, 4)
    assert nmi[0, 2] == pytest.approx(1.0, abs=1e-9) and nmi[0, [0, 1, 3]].max() < 0.2
    assert nmi[1].max() < 0.01  # random firing says nothing
    assert 0.3 < nmi[2, 2] < 0.9 and nmi[3].max() == 0  # two tags: partial; never fires: 0
    from sklearn.metrics import normalized_mutual_info_score

    for j, c in ((0, 2), (1, 2), (2, 1)):  # the closed form equals scikit-learn's on the binary pair
        assert nmi[j, c] == pytest.approx(normalized_mutual_info_score(labels == c, fires[:, j] > 0), abs=1e-9)


def test_direction_fires_matches_the_density_and_finds_a_planted_direction():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4000, 8)).astype(np.float32)
    labels = (x[:, 3] > np.quantile(x[:, 3], 0.9)).astype(int)  # top 10% along basis direction 3
    fires = mono.direction_fires(x, np.eye(8, dtype=np.float32), np.full(8, 0.1))
    assert np.allclose(np.asarray(fires.sum(0)).ravel() / 4000, 0.1, atol=0.002)
    nmi = mono.tag_nmi(fires, labels, 2)
    assert nmi[3, 1] > 0.99 and np.delete(nmi[:, 1], 3).max() < 0.05
    d = mono.matched_densities(np.array([0.0, 0.01, 0.02, 0.5]), 3)
    assert d.min() >= 0.01 and d.max() <= 0.5 and len(d) == 3


def test_sparse_probe_reads_a_planted_feature_with_one_latent():
    labels, fires, groups = planted_tokens()
    rng = np.random.default_rng(2)
    X = np.hstack([fires * rng.uniform(0.5, 2.0, fires.shape), rng.random((len(labels), 16))])  # + noise units
    r = probing.probe_task(sp.csr_matrix(X), (labels == 2).astype(int), groups, ks=(1, 2), full=True)
    assert r["1"] > 0.99 and r["all"] > 0.97
    noise = probing.probe_task(X[:, 4:], (labels == 2).astype(int), groups, ks=(1,))
    assert 0.4 < noise["1"] < 0.6  # chance on the balanced test set
    tr, te = probing.balanced_split((labels == 2).astype(int), groups)
    assert not set(groups[tr]) & set(groups[te])  # no context on both sides
    assert (labels[te] == 2).sum() == (labels[te] != 2).sum()
    ids, pooled = probing.pool_contexts(sp.csr_matrix(X), groups)
    assert pooled.shape == (60, X.shape[1]) and np.allclose(pooled[0].toarray(), X[:100].mean(0))


def test_jaccard_and_stability_on_identical_and_disjoint_texts():
    assert stability.jaccard({1, 2}, {1, 2}) == 1 and stability.jaccard({1, 2}, {3}) == 0
    assert stability.jaccard({1, 2, 3}, {2, 3, 4}) == pytest.approx(0.5)
    # each family's texts light up the family's own 10 units, whatever the wording: paraphrase 1, unrelated 0
    families = ["a", "a", "b", "b"]
    texts = [(f"{f}{i}",) * 3 for i, f in enumerate(families)]

    def codes_of(t):
        c = np.zeros((5, 40))
        base = 0 if t.startswith("a") else 20
        c[:, base:base + 10] = np.arange(1, 11)
        return c

    r = stability.stability(texts, families, codes_of, len)
    assert r["answer"]["paraphrase"] == 1.0 and r["answer"]["unrelated"] == 0.0 and r["pooled"]["gap"] == 1.0


def test_paraphrases_keep_the_numbers():
    import re

    probs = paraphrase_problems(per_family=3, seed=0)
    assert len(probs) == 3 * len(FAMILIES) and all(len(p.wordings) == WORDINGS for p in probs)
    for p in probs:
        nums = [sorted(re.findall(r"\d+", w)) for w in p.wordings]
        assert all(n == nums[0] for n in nums), p
        assert len(set(p.wordings)) == WORDINGS and all(w.endswith("\nAnswer:") for w in p.wordings)
    assert paraphrase_problems(3, 0) == probs and paraphrase_problems(3, 1) != probs


def test_universal_tags():
    assert [universal_tag(t) for t in ("nn-tl", "np$", "vbd", "ppss+md", "doz*", "fw-in", "at", "in", "cd", ".", "rp",
                                       "jjt", "ql", "wdt", "zz")] == \
        ["NOUN", "NOUN", "VERB", "PRON", "VERB", "X", "DET", "ADP", "NUM", ".", "PRT", "ADJ", "ADV", "DET", "X"]


def word_spans(text: str, tags: list[str]):
    starts, pos = [], 0
    for w in text.split():
        pos = text.index(w, pos)
        starts.append(pos)
        pos += len(w)
    return np.array(starts), np.array([s + len(w) for s, w in zip(starts, text.split())]), tags


def test_pos_alignment_puts_each_word_tag_on_its_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    docs = [Document("the cat sat on the mat", "brown:news"), Document("def add ( a , b ) : return a + b", "code"),
            Document("a quiet river ran past the old mill", "brown:news")]
    spans = {docs[0].text: word_spans(docs[0].text, ["at", "nn", "vbd", "in", "at", "nn"]),
             docs[2].text: word_spans(docs[2].text, ["at", "jj", "nn", "vbd", "in", "at", "jj", "nn"])}
    ctx = list(iter_contexts(docs, tok, 8))  # per source: [BOS] + 7 tokens; "mill" and the last EOS are cut off
    ids = np.stack([c.token_ids for c in ctx])
    with_offsets = list(iter_contexts(docs, tok, 8, offsets=True))
    assert all(np.array_equal(a.token_ids, b.token_ids) for a, b in zip(ctx, with_offsets))
    assert isinstance(with_offsets[0], Context) and with_offsets[0].doc[0] == -1  # BOS
    cols = align(docs, tok, 8, len(ctx), ids, spans)
    words = [tok.convert_ids_to_tokens(int(ids.reshape(-1)[t])) for t in cols["token_index"]]
    assert list(zip(words, cols["pos"])) == [
        ("the", "DET"), ("cat", "NOUN"), ("sat", "VERB"), ("on", "ADP"), ("the", "DET"), ("mat", "NOUN"),
        ("a", "DET"), ("quiet", "ADJ"), ("river", "NOUN"), ("ran", "VERB"), ("past", "ADP"), ("the", "DET"), ("old", "ADJ")]
    assert cols["last_of_word"].all() and set(cols["token_index"] // 8) == {0, 2}  # the code context has no tags
    with pytest.raises(Exception, match="differs from the run's tokens"):
        align(docs, tok, 8, len(ctx), ids[::-1].copy(), spans)


@pytest.mark.slow
def test_evaluate_cli_on_the_tiny_run(tiny_store, capsys):
    from backend.cli import main

    run = tiny_store / "runs" / "tiny"
    rc = main(["evaluate", "--run", str(run), "--dict", "relu-l1", "--only", "core,probing,nmi,stability",
               "--contexts", "64", "--random-directions", "64", "--paraphrase-problems", "1", "--device", "cpu"])
    assert rc == 0
    ev = json.loads((run / "dictionaries" / "relu-l1" / "evaluation.json").read_text())
    assert set(ev["parts"]) == {"core", "probing", "nmi", "stability"} and ev["display_kind"] == "relu-l1"
    assert "pos_note" in ev["parts"]["probing"]  # a folder corpus has no POS tags: said, not failed
    src = ev["parts"]["probing"]["source"]["mean"]
    assert src["1"] > 0.7 and ev["parts"]["probing"]["raw"]["source"]["mean"]["all"] > 0.7  # 3 separable genres, ~8 test contexts
    assert set(ev["parts"]["nmi"]["source"]) == {"dictionary", "random directions", "residual basis"}
    tags = pd.read_parquet(run / "dictionaries" / "relu-l1" / "feature_tags.parquet")
    assert set(tags["category"]) == {"source"} and tags["nmi"].between(0, 1).all()
    out = capsys.readouterr().out
    assert "probing:" in out and "nmi:" in out
