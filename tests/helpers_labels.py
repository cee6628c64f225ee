"""A small analysed store over real English text with planted features, for explanation and scoring tests.

Tokens are words split like SmolLM2 splits them (a leading space on words, every digit its own token).
Planted features, written by tests/fake_run.py (through the analysis writers, so the Parquet files are
what `backend.analysis.analyze` writes for the same firings):
  0  fires on every digit token and nowhere else (value 1 + digit/3), promotes digits
  1  fires on " the" (value 2), promotes nouns
  2  never fires (dead)
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from tests.fake_run import write_analysis, write_dictionary, write_run

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
    from backend.analysis.analyze import AnalyzeConfig

    rng = random.Random(seed)
    toks: list[str] = []
    for _ in range(n_seqs):
        seq = ["<s>"]
        while len(seq) < ctx_len:
            seq += tokenize(rng.choice(NUMERIC if rng.random() < p_numeric else PROSE))
        toks += seq[:ctx_len]
    vocab = sorted(set(toks))
    ids = np.array([vocab.index(t) for t in toks], np.int32).reshape(n_seqs, ctx_len)
    run = write_run(Path(root) / name, ids, vocab, "planted", d_in=8, heldout_from=n_seqs - heldout_seqs,
                    model="planted", corpus="planted", bos_token_id=vocab.index("<s>"), seed=seed)
    d_sae = 3
    write_dictionary(run, "planted", 8, d_sae, kind=None, architecture="planted")
    write_analysis(run, "planted", planted_firings(toks, ctx_len), d_sae, cfg=AnalyzeConfig(n_top=10),
                   logits=LOGITS, token_text=dict(enumerate(LOGIT_WORDS)),
                   neighbours=(np.array([[1, 2], [0, 2], [0, 1]], np.int32), np.zeros((d_sae, 2), np.float32)))
    return run, "planted"


def planted_firings(toks: list[str], ctx_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(feature, token_index, value) of features 0 (digits, 1 + digit/3) and 1 (" the", 2.0); never position 0."""
    ti = np.arange(len(toks), dtype=np.int64)
    pos = ti % ctx_len
    strs = np.array(toks, dtype=object)
    f0 = ti[np.array([t.strip().isdigit() for t in toks]) & (pos > 0)]
    f1 = ti[(strs == " the") & (pos > 0)]
    feat = np.concatenate([np.zeros(len(f0), np.int32), np.ones(len(f1), np.int32)])
    val = np.concatenate([[1.0 + int(toks[t].strip()) / 3.0 for t in f0], np.full(len(f1), 2.0)]).astype(np.float32)
    return feat, np.concatenate([f0, f1]), val


LOGIT_WORDS = [" 0", " 1", " 2", " 5", "0", " house", " river", " ship", " dog", " morning", " and", " of", " to"]
_TOP = np.array([[0, 1, 2, 3], [5, 6, 7, 8], [9, 10, 11, 12]], np.int32)  # digits, nouns, function words
LOGITS = {"top_ids": _TOP, "top_values": np.tile(np.linspace(2, 1, 4, dtype=np.float32), (3, 1)),
          "bottom_ids": _TOP[::-1].copy(), "bottom_values": -np.tile(np.linspace(2, 1, 4, dtype=np.float32), (3, 1)),
          "hist_edges": np.tile(np.linspace(-2, 2, 11), (3, 1)), "hist_counts": np.ones((3, 10), np.int64)}
