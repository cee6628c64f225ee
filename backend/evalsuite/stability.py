"""Stability of the top features under paraphrase (AnchorX): do other words for the same problem light up the
same features?

For a text, top-k sets (k = 10) of units: at the answer position (the last token, where the answer would be
predicted), by activation; pooled over the prompt (positions >= 1), by summed activation. Stability is the
Jaccard overlap |A & B| / |A | B| of a text's set with each of its paraphrases' (same problem, other wording:
backend/evalsuite/paraphrases.py, plus LLM rewrites when a back-end is configured), against the same overlap
with an unrelated text of about the same length (another family's problem, nearest token count): the gap is
what the wording-invariance is worth above the overlap any two math questions share.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

TOP_K = 10


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def top_sets(codes: np.ndarray, k: int = TOP_K) -> tuple[set, set]:
    """(top-k units at the last position, top-k by sum over positions) of codes [T, F] (positions >= 1 only),
    only units that are active."""
    def top(v):
        idx = np.argsort(-v, kind="stable")[:k]
        return {int(i) for i in idx if v[i] > 0}

    return top(codes[-1]), top(codes.sum(0))


def stability(texts: list[tuple[str, ...]], families: list[str], codes_of: Callable[[str], np.ndarray],
              n_tokens: Callable[[str], int], k: int = TOP_K) -> dict:
    """Mean Jaccard at the answer position and pooled, paraphrase vs unrelated, over problems `texts` (each a tuple
    of wordings, the first the reference) of `families`. `codes_of(text) -> [T, F]`, `n_tokens(text) -> int`."""
    sets = [[top_sets(codes_of(t), k) for t in group] for group in texts]
    lengths = [n_tokens(g[0]) for g in texts]
    rows = {"answer": {"paraphrase": [], "unrelated": []}, "pooled": {"paraphrase": [], "unrelated": []}}
    for i, group in enumerate(sets):
        others = [j for j in range(len(texts)) if families[j] != families[i]]
        if not others:
            continue
        j = min(others, key=lambda o: (abs(lengths[o] - lengths[i]), o))  # unrelated, nearest length
        for w, name in enumerate(("answer", "pooled")):
            rows[name]["paraphrase"] += [jaccard(group[0][w], s[w]) for s in group[1:]]
            rows[name]["unrelated"].append(jaccard(group[0][w], sets[j][0][w]))
    out = {"k": k, "n_problems": len(texts), "n_paraphrases": sum(len(g) - 1 for g in texts)}
    for name, r in rows.items():
        out[name] = {key: float(np.mean(v)) if v else None for key, v in r.items()}
        out[name]["gap"] = (out[name]["paraphrase"] - out[name]["unrelated"]) if r["unrelated"] else None
        out[name]["paraphrase_values"] = [round(v, 4) for v in r["paraphrase"]]
        out[name]["unrelated_values"] = [round(v, 4) for v in r["unrelated"]]
    return out
