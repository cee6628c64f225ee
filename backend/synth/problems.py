"""Synthetic amortisation-gap benchmark: planted sparse codes, three settings, recovery metrics.

Data as sparse coding defines it (O'Neill, Gumran & Klindt 2024, "Compute optimal inference and provable
amortisation gap in sparse autoencoders", arXiv:2411.13117): N sources per sample with exactly K non-zero
entries drawn from N(0, 1), mixed by a random dictionary D [N, M] whose rows (atoms) have unit norm, so
x = z D + noise lives in M < N dimensions. By default the non-zero entries are |N(0, 1)| as in the paper's
code: a ReLU encoder with N latents cannot represent a negative source at all, so signed sources
(`signed=True`) would measure the sign limit of ReLU rather than the amortisation gap.

Three settings separate what is learned from how codes are inferred:
- `known_codes`: the training codes are given; amortised encoders are fitted to them (supervised), the
  dictionary is their least-squares fit, iterative methods infer with that dictionary.
- `known_dict`: the true dictionary is given; encoders learn codes by reconstruction + L1 through it,
  iterative methods infer with it directly.
- `unknown`: nothing is given; every method learns its own dictionary and codes.

Metrics (all on the held-out half): `mcc_latent` (inferred codes vs the true codes) and `mcc_dict` (learned
atoms vs true atoms), each the mean absolute Pearson correlation over pairs matched by the Hungarian
algorithm; `nmse` = sum |x - x_hat|^2 / sum |x|^2; `l0` = non-zero codes per sample.
Problems and scores are here; the method runners live in methods.py, the grid in grid.py, the figures
in plots.py, the summary in report.py, the files in outputs.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from backend.common.errors import UserError

SETTINGS = ("known_codes", "known_dict", "unknown")
RESULT_COLUMNS = ["setting", "n", "m", "k", "seed", "method", "mcc_latent", "mcc_dict", "nmse", "l0",
                  "train_flops", "infer_flops_per_sample", "seconds"]


@dataclass
class SynthProblem:
    """One planted sparse-coding problem, split evenly into train and test samples."""

    z_train: torch.Tensor  # [n_train, N] true codes
    x_train: torch.Tensor  # [n_train, M] observations
    z_test: torch.Tensor  # [n_test, N]
    x_test: torch.Tensor  # [n_test, M]
    D: torch.Tensor  # [N, M] true dictionary, unit-norm rows
    k: int  # non-zeros per sample
    nonneg: bool  # codes are non-negative

    @property
    def n(self) -> int:
        return self.D.shape[0]

    @property
    def m(self) -> int:
        return self.D.shape[1]


def make_problem(n: int, m: int, k: int, samples: int = 1024, noise: float = 0.01, seed: int = 0,
                 signed: bool = False) -> SynthProblem:
    """Draw codes with exactly k non-zeros, a random unit-row dictionary, and x = z D + noise."""
    if not (1 <= k <= n):
        raise UserError(f"K must be between 1 and N={n}, got {k}")
    if not (1 <= m):
        raise UserError(f"M must be at least 1, got {m}")
    if samples < 4:
        raise UserError(f"need at least 4 samples, got {samples}")
    g = torch.Generator().manual_seed(int(seed))
    support = torch.rand(samples, n, generator=g).argsort(dim=1)[:, :k]  # [S, k] k distinct sources per sample
    vals = torch.randn(samples, k, generator=g)
    if not signed:
        vals = vals.abs()
    z = torch.zeros(samples, n).scatter_(1, support, vals)  # [S, N]
    D = torch.randn(n, m, generator=g)
    D = D / D.norm(dim=1, keepdim=True)  # unit-norm atoms
    x = z @ D + noise * torch.randn(samples, m, generator=g)  # [S, M]
    half = samples // 2
    return SynthProblem(z[:half], x[:half], z[half:], x[half:], D, k, not signed)


def mcc(true: np.ndarray | torch.Tensor, est: np.ndarray | torch.Tensor) -> float:
    """Mean absolute Pearson correlation of columns matched one-to-one (Hungarian) over the true columns.

    true [S, A], est [S, B]. A constant column correlates 0 with everything. With B < A the unmatched true
    columns count as 0, so dropping latents is penalised; with B > A the extra estimated columns are ignored.
    """
    t = np.asarray(true, dtype=np.float64)
    e = np.asarray(est, dtype=np.float64)
    if t.ndim != 2 or e.ndim != 2 or t.shape[0] != e.shape[0]:
        raise ValueError(f"mcc needs two [S, *] arrays with the same S, got {t.shape} and {e.shape}")
    t = t - t.mean(0)
    e = e - e.mean(0)
    tn = np.linalg.norm(t, axis=0)
    en = np.linalg.norm(e, axis=0)
    tn[tn < 1e-12] = np.inf  # constant column -> correlation 0
    en[en < 1e-12] = np.inf
    corr = np.abs((t / tn).T @ (e / en))  # [A, B]
    rows, cols = linear_sum_assignment(corr, maximize=True)
    return float(corr[rows, cols].sum() / t.shape[1])


def nmse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """sum |x - x_hat|^2 / sum |x|^2 (1 for an all-zero reconstruction)."""
    return float(((x - x_hat) ** 2).sum() / (x ** 2).sum().clamp_min(1e-12))


def l0(z: torch.Tensor, eps: float = 1e-8) -> float:
    """Mean number of codes per sample with |z| > eps."""
    return float((z.abs() > eps).float().sum(1).mean())


def cs_bound(n: int, k: float) -> float:
    """Compressed-sensing measurement count M = K log(N/K) (natural log) above which recovery is expected."""
    return float(k * math.log(n / k))
