"""What is removed at each q: the top q% of a ranking, everything but it, and random subsets of the same size.

    k(q, N)    = ceil(q / 100 * N), at least 1 when N > 0       # N ranked units: active (feature, position) pairs
                                                                 # of the prompt, or the prompt's tokens (BOS excluded)
    comp rows  = remove ranking[:k]                              # comprehensiveness: the rationale taken out
    suff rows  = remove ranking[k:]                              # sufficiency: only the rationale left

The unit of removal is the (feature, position) pair, not a feature across all positions: attribution patching
scores pairs, and a feature that fires on ten tokens carries ten separate pieces of evidence. Rankings are by
signed attribution, descending (the units that most support the correct choice first); ties keep the
units' order (stable). Random rankings are seeded permutations, one per draw, so the removed sets are nested
across q exactly as the attribution's are.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

QS = (1.0, 5.0, 10.0, 20.0, 50.0)  # ERASER's bins (percent of the units)


def n_top(q: float, n: int) -> int:
    """Units in the top q% of n (at least one when there are any)."""
    return 0 if n == 0 else min(n, max(1, math.ceil(q / 100.0 * n - 1e-9)))


def ranking(scores: np.ndarray) -> np.ndarray:
    """Indices by score, highest first (stable)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def removal_sets(order: np.ndarray, qs) -> list[np.ndarray]:
    """[comp(q1), suff(q1), comp(q2), suff(q2), ...]: the indices removed by each row."""
    out = []
    for q in qs:
        k = n_top(q, len(order))
        out += [order[:k], order[k:]]
    return out


def item_rng(seed: int, task: str, item: int, stream: int) -> np.random.Generator:
    """The random baselines' generator of one item: the same for every dictionary (stream 0: features, 1: tokens)."""
    return np.random.default_rng([int(seed), zlib.crc32(task.encode()), int(item), int(stream)])


def random_orders(rng: np.random.Generator, n: int, draws: int) -> list[np.ndarray]:
    return [rng.permutation(n) for _ in range(draws)]
