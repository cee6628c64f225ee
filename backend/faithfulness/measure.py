"""One item's comprehensiveness and sufficiency: the feature side (from the hook) and the token side (full model).

    p(y|x)  = softmax_j(L_j)[y]      L_j the summed log-probability of choice j (the task suite's scoring), y the
                                     correct choice: the probability of the correct answer among the item's choices

Feature side: one attribution-patching pass ranks the prompt's active (feature, position) pairs by their attribution
to log p(y|x); every row then zero-ablates a set of pairs with the error term kept (so the only change is the removed
codes: "keep only the top q%" ablates every other active pair, and never measures reconstruction error), one
downstream pass per chunk of rows. Token side: integrated gradients rank the prompt's tokens (BOS kept); a removed
token's embedding becomes the zero baseline. Occlusion side: the same tokens ranked by their leave-one-out score
(backend/attribution/occlusion.py), removed the same way, without random draws of its own (the token side's random
tokens are its baseline too). Each side is compared with its own clean pass, and with `draws` random
rankings of the same units. The prediction after removing the top q% gives the ablated accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from backend.attribution.features import ablated_logprobs, attribute_features, selection_weights
from backend.attribution.integrated_gradients import integrated_gradients, removed_token_logprobs
from backend.attribution.occlusion import occlusion
from backend.attribution.targets import Packed, Target, prompt_positions
from backend.faithfulness.selection import n_top, random_orders, ranking, removal_sets
from backend.model.hooks import HookPoint


@dataclass
class SideResult:
    """One side of one item; arrays are over the q's."""

    p_clean: float  # p(y|x) of this side's clean pass
    correct_clean: bool
    n_units: int  # active pairs, or attributed tokens
    k: np.ndarray  # [Q] units removed (comprehensiveness) or kept (sufficiency) at each q
    comp: np.ndarray  # [Q] p(y|x) - p(y | top q% removed)
    suff: np.ndarray  # [Q] p(y|x) - p(y | only the top q% kept)
    correct: np.ndarray  # [Q] bool: still correct with the top q% removed
    comp_random: np.ndarray  # [Q] the same for random rankings, averaged over the draws (NaN without draws)
    suff_random: np.ndarray
    correct_random: np.ndarray  # [Q] fraction of the draws still correct
    extra: dict = field(default_factory=dict)


def _prob(L: np.ndarray, y: int) -> np.ndarray:
    L = np.asarray(L, dtype=np.float64)
    z = L - L.max(-1, keepdims=True)
    return np.exp(z[..., y]) / np.exp(z).sum(-1)


def summarize_side(L_clean: np.ndarray, L_rows: np.ndarray, y: int, correct: tuple[int, ...], qs, draws: int,
                   n_units: int) -> SideResult:
    """SideResult from the clean log-probs [k] and the rows [(1 + draws) * 2Q, k] ordered as `removal_sets` gives
    them (comp, suff per q), the attribution's ranking first, then each random draw's."""
    Q = len(qs)
    p0 = float(_prob(L_clean, y))
    p = _prob(L_rows, y).reshape(1 + draws, Q, 2)  # [group, q, comp | suff]
    right = np.isin(np.asarray(L_rows).argmax(-1), correct).reshape(1 + draws, Q, 2)[..., 0]
    nan = np.full(Q, np.nan)
    rand = draws > 0
    return SideResult(
        p_clean=p0, correct_clean=bool(int(np.argmax(L_clean)) in correct), n_units=n_units,
        k=np.array([n_top(q, n_units) for q in qs]), comp=p0 - p[0, :, 0], suff=p0 - p[0, :, 1], correct=right[0],
        comp_random=(p0 - p[1:, :, 0]).mean(0) if rand else nan, suff_random=(p0 - p[1:, :, 1]).mean(0) if rand else nan,
        correct_random=right[1:].mean(0) if rand else nan)


def _sets(scores: np.ndarray, qs, rng: np.random.Generator, draws: int) -> list[np.ndarray]:
    n = len(scores)
    out = removal_sets(ranking(scores), qs)
    for order in random_orders(rng, n, draws):
        out += removal_sets(order, qs)
    return out


def feature_side(lm, dictionary, hp: HookPoint, packed: Packed, y: int, correct: tuple[int, ...], special: set[int],
                 qs, draws: int, rng: np.random.Generator, batch_rows: int = 16) -> SideResult:
    """Comprehensiveness and sufficiency of the features ranked by attribution patching, and of random pairs."""
    fa = attribute_features(lm, dictionary, hp, packed, Target("choice", y), special)
    sets = _sets(fa.attribution, qs, rng, draws)
    L = ablated_logprobs(lm, hp, packed, fa, selection_weights(fa.n_pairs, sets), batch_rows)
    return summarize_side(fa.logprobs, L, y, correct, qs, draws, fa.n_pairs)


def _removed_rows(packed: Packed, positions: np.ndarray, sets: list[np.ndarray]) -> torch.Tensor:
    """[R, T] bool: row r removes positions[sets[r]]."""
    removed = torch.zeros(len(sets), packed.T, dtype=torch.bool)
    for r, s in enumerate(sets):
        removed[r, torch.as_tensor(positions[s], dtype=torch.long)] = True
    return removed


def token_side(lm, packed: Packed, y: int, correct: tuple[int, ...], special: set[int], qs, draws: int,
               rng: np.random.Generator, ig_steps: int, batch_rows: int = 10) -> SideResult:
    """Comprehensiveness and sufficiency of the tokens ranked by integrated gradients, and of random tokens."""
    ta = integrated_gradients(lm, packed, Target("choice", y), prompt_positions(packed, special), steps=ig_steps,
                              batch_rows=batch_rows)
    sets = _sets(ta.attribution, qs, rng, draws)
    L = removed_token_logprobs(lm, packed, _removed_rows(packed, ta.positions, sets), batch_rows)
    res = summarize_side(ta.logprobs, L, y, correct, qs, draws, len(ta.positions))
    res.extra = {"ig_error": ta.completeness_error, "ig_gap": ta.metric - ta.metric_baseline}
    return res


def occlusion_side(lm, packed: Packed, y: int, correct: tuple[int, ...], special: set[int], qs,
                   batch_rows: int = 10) -> SideResult:
    """Comprehensiveness and sufficiency of the tokens ranked by occlusion (leave-one-out); no random draws."""
    oc = occlusion(lm, packed, Target("choice", y), prompt_positions(packed, special), batch_rows)
    sets = removal_sets(ranking(oc.attribution), qs)
    L = removed_token_logprobs(lm, packed, _removed_rows(packed, oc.positions, sets), batch_rows)
    return summarize_side(oc.logprobs, L, y, correct, qs, 0, len(oc.positions))
