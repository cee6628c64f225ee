"""A small analysed store over real English text with planted features, for explanation and scoring tests.

Tokens are words split like SmolLM2 splits them (a leading space on words, every digit its own token).
Planted features, written through the analysis writers (`write_sparse_store`, `features_table`) so the
Parquet files are exactly what `backend.analysis.analyze` writes:
  0  fires on every digit token and nowhere else (value 1 + digit/3), promotes digits
  1  fires on " the" (value 2), promotes nouns
  2  never fires (dead)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd

PROSE = [
    "The river ran quietly past the old mill under a grey sky.",
    "She read the letter twice and then put it away in the drawer.",
    "A small boat drifted toward the harbour as the light faded.",
    "He argued that the committee should meet again before winter.",
    "The children walked home through the park after school.",
    "Nobody knew why the lighthouse keeper had left so suddenly.",
    "The whale rose from the sea and the sailors shouted in fear.",
    "Our nation must remain strong, free and united in purpose.",
    "The garden was full of roses, tulips and tall green grass.",
    "Each morning the baker opened his shop before sunrise.",
    "They listened to the rain on the roof and said nothing.",
    "The professor explained the theory with great patience.",
    "Import the module and call the function with a path argument.",
    "The old house at the end of the street was empty for years.",
    "Freedom of speech is a right that every citizen should defend.",
    "The captain studied the chart while the crew waited on deck.",
    "A quiet village lay beyond the hills where the road ended.",
    "The dog slept by the fire while the storm raged outside.",
]
NUMERIC = [
    "The ship carried 240 barrels of oil and 35 men.",
    "If 12 apples cost 6 dollars then one apple costs 50 cents.",
    "In 1848 the congress passed 17 new laws.",
    "The answer is 42 and the remainder is 7.",
    "She bought 3 books for 19 dollars each.",
    "The train left at 9 and arrived 45 minutes later.",
    "Tom has 8 marbles and gives away 5 of them.",
    "The budget grew by 250 million in 1962.",
]


def tokenize(text: str) -> list[str]:
    """Words with a leading space, punctuation on its own, each digit a separate token (as SmolLM2 does)."""
    out: list[str] = []
    for word in text.split():
        core, tail = word.rstrip(".,;:"), word[len(word.rstrip(".,;:")):]
        if core.isdigit():
            out += [" " + core[0]] + list(core[1:])
        elif core:
            out.append(" " + core)
        out += list(tail)
    return out


def make_planted_store(root: str | Path, n_seqs: int = 48, ctx_len: int = 64, heldout_seqs: int = 12,
                       p_numeric: float = 0.25, seed: int = 0, name: str = "planted") -> tuple[Path, str]:
    """Write run `<root>/<name>` with an analysed dictionary `planted`; return (run folder, dictionary name)."""
    from backend.analysis.analyze import (
        AnalyzeConfig,
        features_table,
        write_sparse_store,
    )

    rng = random.Random(seed)
    run = Path(root) / name
    (run / "dictionaries" / "planted").mkdir(parents=True, exist_ok=True)
    toks: list[str] = []
    sources: list[str] = []
    for _ in range(n_seqs):
        seq = ["<s>"]
        while len(seq) < ctx_len:
            seq += tokenize(rng.choice(NUMERIC if rng.random() < p_numeric else PROSE))
        toks += seq[:ctx_len]
        sources += ["planted"] * ctx_len
    vocab = {t: i for i, t in enumerate(sorted(set(toks)))}
    n_tok = n_seqs * ctx_len
    ti = np.arange(n_tok, dtype=np.int64)
    pd.DataFrame({"token_index": ti, "seq": (ti // ctx_len).astype(np.int32), "pos": (ti % ctx_len).astype(np.int16),
                  "token_id": np.array([vocab[t] for t in toks], np.int32), "token_str": toks,
                  "source": sources}).to_parquet(run / "tokens.parquet", index=False)
    meta = {"model": "planted", "model_source": "planted", "hook": "blocks.0.hook_resid_post", "corpus": "planted",
            "ctx_len": ctx_len, "n_seqs": n_seqs, "n_tokens": n_tok, "d_in": 8, "seed": seed, "dtype": "float16",
            "bos_token_id": vocab["<s>"], "heldout_from": n_seqs - heldout_seqs, "shards": [], "sources": [],
            "versions": {}, "created": "test"}
    (run / "run.json").write_text(json.dumps(meta))

    # firings, sorted by (feature, token_index); position 0 never fires (analysis drops it)
    pos = ti % ctx_len
    strs = np.array(toks, dtype=object)
    digit = np.array([t.strip().isdigit() for t in toks]) & (pos > 0)
    the = (strs == " the") & (pos > 0)
    f0 = ti[digit]
    v0 = np.array([1.0 + int(toks[t].strip()) / 3.0 for t in f0], np.float32)
    f1 = ti[the]
    feat = np.concatenate([np.zeros(len(f0), np.int32), np.ones(len(f1), np.int32)])
    tok = np.concatenate([f0, f1])
    val = np.concatenate([v0, np.full(len(f1), 2.0, np.float32)])
    d_sae = 3
    cfg = AnalyzeConfig(n_top=10)
    out = run / "dictionaries" / "planted"
    (out / "cfg.json").write_text(json.dumps({"architecture": "planted", "d_sae": d_sae, "d_in": 8}))
    st = write_sparse_store(out, iter([(0, d_sae, feat, tok, val)]), d_sae, ctx_len, cfg)
    words = [" 0", " 1", " 2", " 5", "0", " house", " river", " ship", " dog", " morning", " and", " of", " to"]
    text = dict(enumerate(words))
    k = 4
    top = np.array([[0, 1, 2, 3], [5, 6, 7, 8], [9, 10, 11, 12]], np.int32)
    logits = {"top_ids": top, "top_values": np.tile(np.linspace(2, 1, k, dtype=np.float32), (d_sae, 1)),
              "bottom_ids": top[::-1].copy(), "bottom_values": -np.tile(np.linspace(2, 1, k, dtype=np.float32), (d_sae, 1)),
              "hist_edges": np.tile(np.linspace(-2, 2, 11), (d_sae, 1)), "hist_counts": np.ones((d_sae, 10), np.int64)}
    nb = np.array([[1, 2], [0, 2], [0, 1]], np.int32)
    table = features_table(n_tok, st["n_fires"], st["max_act"], st["sum_act"], st["hist_counts"], logits, text,
                           nb, np.zeros((d_sae, 2), np.float32))
    import pyarrow.parquet as pq

    pq.write_table(table, out / "features.parquet")
    return run, "planted"
