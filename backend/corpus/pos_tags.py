"""Part-of-speech tags of a run's tokens, from the Brown Corpus annotations the default corpus keeps.

The default corpus stores each Brown word's character span and tag beside its text (`pos_start`, `pos_end`,
`pos_tag`, backend/corpus/default_corpus.py). A run holds token ids, not character offsets, so the tags are
put on the tokens by packing the same documents in the same order again with the tokenizer's offset mapping
(`contexts.iter_contexts(offsets=True)`): a token gets the tag of the word its span overlaps. The ids of the
re-packed contexts must equal tokens.parquet's, or the alignment is refused (another corpus, seed or tokenizer).

Brown's ~80 tags (plus -tl/-hl/-nc suffixes, fw- prefixes, negated `*` and possessive `$` forms, and `+`
contractions) are mapped to the 12 universal tags of Petrov, Das & McDonald 2012 (NOUN VERB ADJ ADV PRON DET
ADP NUM CONJ PRT . X), following their en-brown mapping (as NLTK ships it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backend.common.errors import UserError

UNIVERSAL = ("NOUN", "VERB", "ADJ", "ADV", "PRON", "DET", "ADP", "NUM", "CONJ", "PRT", ".", "X")
_BASE = {
    **dict.fromkeys(["nn", "nns", "np", "nps", "nr", "nrs"], "NOUN"),
    **dict.fromkeys(["vb", "vbd", "vbg", "vbn", "vbz", "be", "bed", "bedz", "beg", "bem", "ben", "ber", "bez",
                     "do", "dod", "doz", "hv", "hvd", "hvg", "hvn", "hvz", "md"], "VERB"),
    **dict.fromkeys(["jj", "jjr", "jjs", "jjt"], "ADJ"),
    **dict.fromkeys(["rb", "rbr", "rbt", "rn", "ql", "qlp", "wrb", "abl"], "ADV"),
    **dict.fromkeys(["pn", "pp$", "pp$$", "ppl", "ppls", "ppo", "pps", "ppss", "wp$", "wpo", "wps"], "PRON"),
    **dict.fromkeys(["at", "ap", "abn", "abx", "dt", "dti", "dts", "dtx", "wdt", "ex"], "DET"),
    "in": "ADP",
    **dict.fromkeys(["cd", "od"], "NUM"),
    **dict.fromkeys(["cc", "cs"], "CONJ"),
    **dict.fromkeys(["rp", "to"], "PRT"),
    **dict.fromkeys([".", ",", ":", "(", ")", "--", "'", "`", "``", "''", "*"], "."),
    **dict.fromkeys(["uh", "nil", ""], "X"),
}


def universal_tag(brown: str) -> str:
    """The universal tag of a Brown tag: `nn-tl` -> NOUN, `fw-in` -> X, `ppss+md` -> PRON, `doz*` -> VERB."""
    t = brown.lower()
    if t.startswith("fw-"):
        return "X"
    if t in _BASE:
        return _BASE[t]
    t = t.split("+")[0]
    for suffix in ("-tl", "-hl", "-nc"):
        t = t.replace(suffix, "")
    t = t.rstrip("*") or t
    if t in _BASE:
        return _BASE[t]
    if t.endswith("$") and t[:-1] in _BASE:  # possessives: nn$ -> NOUN
        return _BASE[t[:-1]]
    return "X"


def corpus_spans(corpus_path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """{document text: (starts, ends, Brown tags)} of the documents of a corpus Parquet that carries tags."""
    import pyarrow.parquet as pq

    path = Path(corpus_path)
    names = pq.ParquetFile(path).schema_arrow.names
    if "pos_tag" not in names:
        raise UserError(f"{path} has no part-of-speech columns: rebuild the default corpus with "
                        "`python -m backend.corpus.default_corpus --force` (same text, adds the Brown tags)")
    t = pq.read_table(path, columns=["text", "pos_start", "pos_end", "pos_tag"]).to_pydict()
    out = {}
    for text, a, b, tags in zip(t["text"], t["pos_start"], t["pos_end"], t["pos_tag"]):
        if tags:
            out[text] = (np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64), list(tags))
    return out


def align(docs, tokenizer, ctx_len: int, n_seqs: int, expected_ids: np.ndarray, spans: dict) -> dict[str, np.ndarray]:
    """Tags on the tokens of contexts 0..n_seqs-1 packed from `docs` (the run's document stream): columns
    `token_index`, `brown_tag`, `pos` (universal), `last_of_word` (the word's last token: the model has read all of
    it) for every token that overlaps a tagged word. `expected_ids` [n_seqs, ctx_len] are the run's token ids."""
    from backend.corpus.contexts import iter_contexts

    texts: list[str] = []
    stream = (texts.append(d.text) or d for d in docs)  # remember each document's text by its ordinal
    cols: dict[str, list] = {"token_index": [], "brown_tag": [], "word": []}
    n = 0
    for ctx in iter_contexts(stream, tokenizer, ctx_len, offsets=True):
        if n >= n_seqs:
            break
        if not np.array_equal(ctx.token_ids, expected_ids[n]):
            raise UserError(f"context {n} re-packed from the corpus differs from the run's tokens: the run was not "
                            "cached from this corpus with this tokenizer and seed, so its tokens cannot be tagged")
        for p in np.flatnonzero(ctx.doc >= 0):
            doc = int(ctx.doc[p])
            tagged = spans.get(texts[doc])
            if tagged is None:
                continue
            starts, ends, tags = tagged
            w = int(np.searchsorted(ends, ctx.start[p], side="right"))  # first word ending after the token starts
            if w < len(tags) and starts[w] < ctx.end[p]:
                cols["token_index"].append(n * ctx_len + int(p))
                cols["brown_tag"].append(tags[w])
                cols["word"].append((doc, w))
        n += 1
    if n < n_seqs:
        raise UserError(f"the corpus gives {n} contexts, the run has {n_seqs}: it was cached from other text")
    word = cols.pop("word")
    last = [i + 1 == len(word) or word[i + 1] != word[i] for i in range(len(word))]
    return {"token_index": np.asarray(cols["token_index"], dtype=np.int64), "brown_tag": np.asarray(cols["brown_tag"]),
            "pos": np.asarray([universal_tag(t) for t in cols["brown_tag"]]), "last_of_word": np.asarray(last, dtype=bool)}
