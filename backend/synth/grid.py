"""The benchmark grid: `SynthConfig` (what `python -m backend synth` runs) and `run_benchmark`.

The reference cell in every setting, then a grid over (M, K); the problems and scores are in problems.py.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field

import pandas as pd
import torch

from backend.common.errors import UserError
from backend.synth.problems import RESULT_COLUMNS, SETTINGS, l0, make_problem, mcc, nmse


@dataclass
class SynthConfig:
    """What `python -m backend synth` runs: the reference cell in every setting, then a grid over (M, K)."""

    n: int = 16
    """number of sources N (fixed over the grid)"""
    ref: tuple[int, int] = field(default=(8, 3), metadata={"metavar": "M,K"})
    """reference cell (M, K), run in every setting: the paper's reference setting, M=8 dimensions and K=3 active
    sources"""
    ms: list[int] = field(default_factory=lambda: [4, 6, 8, 10, 12], metadata={"flag": "m"})
    """grid of dimensions M"""
    ks: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5], metadata={"flag": "k"})
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
    """None = every method in backend.synth.methods.METHODS"""
    sklearn_on_grid: bool = False
    """run the scikit-learn baselines on the whole grid too (MiniBatchDictionaryLearning costs ~2-3 s a problem,
    so by default they run at the reference cell only)"""
    steps_scale: float = 1.0
    """multiplies every training budget (the --quick grid uses less)"""

    def __post_init__(self):
        from backend.synth.methods import METHODS

        self.ref = tuple(self.ref)
        if len(self.ref) != 2:
            raise UserError(f"the reference cell must be M,K, got {self.ref}")
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
        for m in [self.ref[0], *self.ms]:
            if not (1 <= m <= self.n):
                raise UserError(f"M must be between 1 and N={self.n}, got {m}")
        for k in [self.ref[1], *self.ks]:
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
        if (m, k) == self.ref or self.sklearn_on_grid:
            return list(self.methods)
        return [x for x in self.methods if not x.startswith("sk_")]

    def cells(self) -> list[tuple[str, int, int]]:
        """(setting, M, K) in run order: the reference cell in every setting first, then the grid, no repeats."""
        out = [(s, *self.ref) for s in self.settings]
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

    from backend.synth.methods import pretrain_encoders, run_method

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
