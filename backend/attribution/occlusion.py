"""Occlusion (leave-one-out) over input tokens: the token ranking that does not depend on a path.

    score_t = m(e) - m(e with e_t replaced by the baseline b_t)      # b = 0, the baseline of integrated gradients
                                                                     # and of "removing a token" in faithfulness

(Zeiler & Fergus 2014 occlude image patches; Li et al. 2016, "Understanding neural networks through representation
erasure", erase words.) Each attributed position's score is the change in the metric when that token alone is
removed, so it is exact for single-token removal by construction: no quadrature, no completeness error. Integrated
gradients integrate along a straight path from the baseline, which on SmolLM2 crosses attention-sink switches
(integrated_gradients.py, known limit); occlusion only ever evaluates the clean input and the input with one token
removed. It ignores interactions between removed tokens (removing two is not the sum of removing each), which is
what comprehensiveness at q > 1 token measures. Cost: one forward pass per attributed position (batched), no
backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from backend.attribution.integrated_gradients import BATCH_ROWS, removed_token_logprobs
from backend.attribution.targets import Packed, Target


@dataclass
class TokenOcclusion:
    """Leave-one-out scores of the attributed prompt positions."""

    positions: np.ndarray  # [M] int64 attributed positions (the prompt's, BOS and special tokens excluded)
    attribution: np.ndarray  # [M] float64 m(e) - m(e with that position at the baseline)
    metric: float  # m(e): the clean metric
    logprobs: np.ndarray  # [k] clean summed log-probabilities


def occlusion(lm, packed: Packed, target: Target, keep: torch.Tensor, batch_rows: int = BATCH_ROWS) -> TokenOcclusion:
    """Leave-one-out scores of metric `target` for positions `keep` [P] bool (prompt positions) of the packed row:
    the clean row and one row per position, `batch_rows` rows per forward pass."""
    where = keep.nonzero()[:, 0]
    removed = torch.zeros(1 + len(where), packed.T, dtype=torch.bool)  # row 0: nothing removed (the clean pass)
    removed[torch.arange(1, 1 + len(where)), where] = True
    L = removed_token_logprobs(lm, packed, removed, batch_rows)  # [1 + M, k]
    m = target.metric(torch.from_numpy(L)).numpy()  # [1 + M] float64
    return TokenOcclusion(where.numpy().astype(np.int64), m[0] - m[1:], float(m[0]), L[0])
