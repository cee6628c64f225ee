"""SAE with inference-time optimisation (ITO): a trained dictionary's decoder, codes found per token.

    z(x)  = pursuit over the base decoder W_dec [d_sae, d_in] of (x - b_dec) with target_l0 atoms   # [B, d_sae]
    x_hat = W_dec^T z + b_dec                                                                      # base decoder

Methods (backend/sparse_inference.py), all non-negative, as SAE latents are:
- "gp": gradient pursuit (Blumensath & Davies 2008), target_l0 atoms exactly;
- "mp": matching pursuit, target_l0 steps (an atom may repeat, so L0 <= target_l0);
- "fista": FISTA on 0.5||x - zD||^2 + l1 |z| warm-started from the base SAE's own codes, then the
  target_l0 largest codes are kept.
The encoder is thrown away (except as FISTA's warm start): this measures how much of a dictionary's
reconstruction error is the encoder's fault (the amortisation gap). Each token is restricted to a pool
of `pool` candidate atoms (its largest correlations with the decoder rows; for FISTA the base SAE's
active latents first), which makes per-token pursuit affordable on a CPU; pool = 0 uses all atoms.
Nothing is trained: the folder stores the base dictionary's tensors under `base.` and its cfg in
cfg["base_cfg"].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backend.common.errors import UserError
from backend.dictionaries.base import KINDS, Dictionary, register_kind
from backend.dictionaries.sparse_inference import (
    fista,
    fista_flops,
    gradient_pursuit,
    gram,
    matching_pursuit,
    pooled_fista_flops,
    pooled_inference,
    pursuit_flops,
    select_pool,
)

METHODS = ("gp", "mp", "fista")


@dataclass
class ItoConfig:
    """How an sae-ito dictionary is built from a trained dictionary of the run (no training: see
    backend/training/ito.py). Lives next to the kind, as every kind's settings do."""

    base: str = "relu-l1"
    """Name of the trained dictionary whose decoder is used (any kind with a linear decoder); relu-l1 is the
    demo's first dictionary."""
    method: str = "gp"
    """gp (gradient pursuit), mp (matching pursuit) or fista (warm-started from the base's codes, then top
    target_l0); gp by default: exactly target_l0 atoms, at ~1/90 of fista's inference FLOPs on the synthetic
    benchmark's reference cell, where it edges out mp (README)."""
    target_l0: int | None = None
    """Atoms per token; None = the base's held-out l0 from its metrics.json, rounded, so the comparison with
    the base is at equal sparsity."""
    pool: int | None = None
    """Candidate atoms per token (largest correlations; FISTA: the base's active latents first); None = 2 * target_l0,
    0 = all atoms (a full pursuit streams the d_sae x d_sae Gram matrix per step: slow on a CPU)."""
    n_iter: int = 20
    """fista: iterations from the warm start (the budget sparse-coding's FISTA gets)."""
    fista_l1: float | None = None
    """fista: L1 weight in raw units; None = the base's training l1_coeff / (2 * activation_scale), or 0 without one."""

    def __post_init__(self):
        checks = [
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}, got {self.method!r}"),
            (self.target_l0 is None or self.target_l0 >= 1, f"target_l0 must be >= 1, got {self.target_l0}"),
            (self.pool is None or self.pool >= 0, f"pool must be >= 0, got {self.pool}"),
            (self.n_iter >= 0, f"n_iter must be >= 0, got {self.n_iter}"),
            (self.fista_l1 is None or self.fista_l1 >= 0, f"fista_l1 must be >= 0, got {self.fista_l1}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(f"invalid sae-ito config: {msg}")


@register_kind
class SaeItoDictionary(Dictionary):
    """cfg: base (name), base_cfg (the base's cfg.json), method, target_l0, pool, n_iter (fista), fista_l1 (raw units)."""

    kind = "sae-ito"
    architecture = "sae_ito"  # not a SAELens architecture
    config_class = ItoConfig

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        base_cfg = cfg.get("base_cfg")
        if not isinstance(base_cfg, dict) or base_cfg.get("kind") not in KINDS or base_cfg.get("kind") == self.kind:
            raise ValueError("sae-ito cfg needs base_cfg with the base dictionary's kind")
        self.base = KINDS[base_cfg["kind"]](base_cfg)
        if (self.base.d_in, self.base.d_sae) != (self.d_in, self.d_sae):
            raise ValueError("sae-ito d_in/d_sae differ from its base's")
        self.method = cfg.get("method", "gp")
        self.target_l0 = int(cfg.get("target_l0") or 0)
        self.pool = int(cfg.get("pool") or 0)
        self.n_iter = int(cfg.get("n_iter") or 0)
        self.fista_l1 = float(cfg.get("fista_l1") or 0.0)
        if self.method not in METHODS:
            raise ValueError(f"sae-ito method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 1 <= self.target_l0 <= self.d_sae:
            raise ValueError(f"sae-ito needs 1 <= target_l0 <= d_sae, got {cfg.get('target_l0')}")
        if self.pool and self.pool < self.target_l0:
            raise ValueError(f"sae-ito pool {self.pool} is smaller than target_l0 {self.target_l0}")
        self._G = None  # D D^T, only for pool = 0, computed on first use

    @property
    def W_dec(self) -> torch.Tensor:  # [d_sae, d_in], the base's unit-norm rows
        return self.base.W_dec

    @property
    def b_dec(self) -> torch.Tensor:
        return self.base.b_dec

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        D = self.W_dec.detach()
        xc = x - self.b_dec
        k = self.target_l0
        if self.method == "fista":
            z0 = self.base.encode(x).float()  # the SAE's codes: warm start and first choice for the pool
            if self.pool:
                corr = xc @ D.T  # [B, d_sae]
                scores = torch.where(z0 > 0, z0 + corr.abs().max(), corr)  # SAE support first, then correlation
                P = select_pool(scores, self.pool, nonneg=True)
                return pooled_inference(xc, D, P, "fista", nonneg=True, l1=self.fista_l1, n_iter=self.n_iter,
                                        z0=z0, topk=k)
            return fista(xc, D, self.fista_l1, n_iter=self.n_iter, nonneg=True, z0=z0, topk=k)
        pursuit = gradient_pursuit if self.method == "gp" else matching_pursuit
        if self.pool:
            return pursuit(xc, D, k, nonneg=True, pool=self.pool)
        if self._G is None:
            self._G = gram(D)
        return pursuit(xc, D, k, nonneg=True, G=self._G)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return self.base.decode(f)

    def flops_per_token(self) -> dict[str, int]:
        """Encode: subtract b_dec (d_in) + the method's count from sparse_inference (pool form when pool > 0);
        FISTA adds the base's encode and, pooled, the pool scores (2 d_in d_sae + 3 d_sae). Decode: k rows."""
        n, d, k = self.d_sae, self.d_in, self.target_l0
        if self.method == "fista":
            base = self.base.flops_per_token()["encode"]
            if self.pool:
                enc = base + pooled_fista_flops(n, d, self.pool, self.n_iter, select=2 * n * d + 3 * n)
            else:
                enc = base + fista_flops(n, d, self.n_iter, topk=True)
        else:
            enc = pursuit_flops(n, d, k, self.method, pool=self.pool or None)
        return {"encode": d + enc, "decode": 2 * k * d + d}

    def train_flops_per_token(self) -> int:
        return 0  # nothing trained here; cfg.json records the base's training FLOPs

    @torch.no_grad()
    def fold_scale_(self, scale: float) -> None:
        self.base.fold_scale_(scale)
        self.fista_l1 /= scale
        self.cfg["fista_l1"] = self.fista_l1
