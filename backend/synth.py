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
The method runners live in backend/synth_methods.py, the figures in backend/synth_plots.py.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment

from backend.errors import UserError

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


@dataclass
class SynthConfig:
    """What `python -m backend synth` runs: the reference cell in every setting, then a grid over (M, K)."""

    n: int = 16
    """number of sources N (fixed over the grid)"""
    ref_m: int = 8
    """reference setting of the paper: M=8 dimensions"""
    ref_k: int = 3
    """... and K=3 active sources"""
    ms: list[int] = field(default_factory=lambda: [4, 6, 8, 10, 12])
    """grid of dimensions M"""
    ks: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    """grid of active sources K"""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """one problem (dictionary + data) and one initialisation per seed"""
    samples: int = 1024
    """split evenly into train and test, as in the paper"""
    noise: float = 0.01
    """std of the Gaussian noise added to every dimension (the sources have std ~0.6-1)"""
    signed: bool = False
    """signed N(0,1) sources instead of |N(0,1)|"""
    settings: list[str] = field(default_factory=lambda: list(SETTINGS))
    """settings run at the reference cell"""
    grid_settings: list[str] = field(default_factory=lambda: ["known_dict", "unknown"])
    """settings run over the whole (M, K) grid"""
    methods: list[str] | None = None
    """None = every method in backend.synth_methods.METHODS"""
    sklearn_on_grid: bool = False
    """run the scikit-learn baselines on the whole grid too (MiniBatchDictionaryLearning costs ~2-3 s a problem,
    so by default they run at the reference cell only)"""
    steps_scale: float = 1.0
    """multiplies every training budget (the --quick grid uses less)"""

    def __post_init__(self):
        from backend.synth_methods import METHODS

        self.methods = list(METHODS) if self.methods is None else list(self.methods)
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise UserError(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
        if not self.methods:
            raise UserError("no methods given")
        for s in [*self.settings, *self.grid_settings]:
            if s not in SETTINGS:
                raise UserError(f"unknown setting {s!r}; choose from {', '.join(SETTINGS)}")
        if self.n < 2:
            raise UserError(f"N must be at least 2, got {self.n}")
        for m in [self.ref_m, *self.ms]:
            if not (1 <= m <= self.n):
                raise UserError(f"M must be between 1 and N={self.n}, got {m}")
        for k in [self.ref_k, *self.ks]:
            if not (1 <= k <= self.n):
                raise UserError(f"K must be between 1 and N={self.n}, got {k}")
        if not self.seeds:
            raise UserError("no seeds given")
        if self.samples < 8:
            raise UserError(f"need at least 8 samples, got {self.samples}")
        if self.noise < 0:
            raise UserError(f"noise must be >= 0, got {self.noise}")
        if self.steps_scale <= 0:
            raise UserError(f"steps scale must be > 0, got {self.steps_scale}")

    def methods_for(self, m: int, k: int) -> list[str]:
        """The reference cell runs every method; the rest of the grid skips sklearn unless asked."""
        if (m, k) == (self.ref_m, self.ref_k) or self.sklearn_on_grid:
            return list(self.methods)
        return [x for x in self.methods if not x.startswith("sk_")]

    def cells(self) -> list[tuple[str, int, int]]:
        """(setting, M, K) in run order: the reference cell in every setting first, then the grid, no repeats."""
        out = [(s, self.ref_m, self.ref_k) for s in self.settings]
        out += [(s, m, k) for s in self.grid_settings for m in self.ms for k in self.ks]
        seen, uniq = set(), []
        for c in out:
            if c not in seen:
                seen.add(c)
                uniq.append(c)
        return uniq


def run_benchmark(cfg: SynthConfig, progress: bool = True) -> pd.DataFrame:
    """Run every (setting, M, K) cell x seed x method; one row per run with the metrics of RESULT_COLUMNS.

    The SAE and MLP encoders of all problems sharing (setting, M) train side by side first (one batched
    trainer; see synth_methods.Encoders), then every method runs problem by problem."""
    from tqdm import tqdm

    from backend.synth_methods import pretrain_encoders, run_method

    groups: dict[tuple[str, int], list[tuple[int, int]]] = {}  # (setting, M) -> [(K, seed)]
    for setting, m, k in cfg.cells():
        groups.setdefault((setting, m), []).extend((k, s) for s in cfg.seeds)
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # [512, 16] matrices: threading costs more than it saves
    bar = tqdm(total=sum(len(v) for v in groups.values()), desc="synth", disable=not progress, unit="problem")
    try:
        for (setting, m), jobs in groups.items():
            probs = [make_problem(cfg.n, m, k, cfg.samples, cfg.noise, seed, cfg.signed) for k, seed in jobs]
            caches: list[dict] = [{} for _ in jobs]
            wanted = {x for k, _ in jobs for x in cfg.methods_for(m, k)}
            kinds = [kind for kind, users in (("sae", ("sae", "ito_mp", "ito_gp", "ito_fista")), ("mlp", ("mlp",)))
                     if wanted & set(users)]
            torch.manual_seed(zlib.crc32(repr((setting, m, jobs)).encode()))  # str hash() differs per process
            bar.set_postfix_str(f"{setting} M={m}: training {'+'.join(kinds) or 'nothing'} x {len(jobs)}")
            pretrain_encoders(setting, probs, caches, kinds, steps_scale=cfg.steps_scale)
            bar.set_postfix_str(f"{setting} M={m}")
            for (k, seed), prob, cache in zip(jobs, probs, caches):
                for method in cfg.methods_for(m, k):
                    torch.manual_seed(seed)
                    t0 = time.perf_counter()
                    res = run_method(method, setting, prob, cache, steps_scale=cfg.steps_scale)
                    secs = time.perf_counter() - t0 + res.shared_seconds
                    rows.append({
                        "setting": setting, "n": cfg.n, "m": m, "k": k, "seed": seed, "method": method,
                        "mcc_latent": mcc(prob.z_test, res.codes),
                        "mcc_dict": mcc(prob.D.T, res.D.T) if res.D is not None else float("nan"),
                        "nmse": nmse(prob.x_test, res.x_hat), "l0": l0(res.codes),
                        "train_flops": int(res.train_flops), "infer_flops_per_sample": int(res.infer_flops_per_sample),
                        "seconds": secs,
                    })
                bar.update(1)
    finally:
        bar.close()
        torch.set_num_threads(threads)
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def write_outputs(results: pd.DataFrame, cfg: SynthConfig, out: str | Path) -> Path:
    """results.parquet, summary.md, config.json and figures/*.html under `out`, each written atomically."""
    from backend.atomic import atomic_path, write_json
    from backend.synth_plots import synth_figures, write_figures
    from backend.synth_report import summary_markdown

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "results.parquet") as tmp:
        results.to_parquet(tmp, index=False)
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(summary_markdown(results, cfg))
    write_json(out / "config.json", asdict(cfg))
    with atomic_path(out / "figures") as tmp:
        write_figures(synth_figures(results), tmp)
    return out
