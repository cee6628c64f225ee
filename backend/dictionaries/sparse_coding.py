"""Sparse coding: a learned dictionary whose codes are inferred per sample by FISTA, with an amortised warm start.

    z*(x) = argmin_z 0.5 ||(x - b_dec) - z W_dec||^2 + l1 ||z||_1  (z >= 0 by default)   # [B, d_sae]
    x_hat = W_dec^T z + b_dec

Inference (`encode`): a ReLU encoder f0 = ReLU(W_enc^T (x - b_dec) + b_enc) proposes a pool of the
`pool` latents with the largest pre-activations and the starting point; FISTA (`n_iter` steps) then
solves the problem restricted to that pool exactly (backend/sparse_inference.py, pooled_inference);
with cfg k > 0 only the k largest codes are kept (the top-k variant). pool = 0 runs FISTA over all atoms.

Training alternates per batch (Olshausen & Field 1996; Mairal et al. 2009 style, with SGD): infer z by
FISTA without gradients, then one optimizer step on
    ||x - W_dec^T z - b_dec||^2                                (the dictionary, given the codes)
  + ||x - W_dec^T f0 - b_dec||^2 + 2 l1 sum_i f0_i             (the encoder, decoder detached)
The encoder term is the same objective (times 2) amortised, so the encoder learns to warm-start FISTA
(in the spirit of LISTA, Gregor & LeCun 2010). l1 = SparseCodingConfig.l1_coeff / 2 in training units; it is
divided by the activation scale at save time like every other bias-like quantity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from backend.dictionaries.base import (
    Dictionary,
    random_unit_rows,
    register_kind,
)
from backend.dictionaries.mlp import DENSE_ABOVE
from backend.dictionaries.relu_l1 import ReluL1Config
from backend.dictionaries.sparse_inference import (
    fista,
    fista_flops,
    pooled_fista_flops,
    pooled_inference,
    select_pool,
)
from backend.dictionaries.sparse_ops import Pairs, pair_linear, sparse_decode


@dataclass
class SparseCodingConfig(ReluL1Config):
    """sparse-coding's settings: relu-l1's L1 penalty (FISTA's weight is l1_coeff / 2) plus the inference's."""

    n_iter: int = 20
    """FISTA iterations per sample (warm-started from the learned encoder, over its pool)."""
    pool: int = 48
    """Candidate atoms per token for FISTA (the encoder's largest pre-activations), so at most `pool` codes are
    non-zero; 0 = all atoms (exact, but ~n_iter dense matmuls per token: far too slow for the demo on a CPU).
    Cost grows ~pool^2 (the per-token Gram matrix): 48 encodes at ~3x relu-l1's time."""
    nonneg: bool = True
    """Non-negative codes (as SAE latents; analysis counts a latent as firing when > 0)."""
    k: int = 0
    """Keep only the k largest codes (the top-k variant); 0 = no top-k: the L1 penalty alone sets the sparsity."""
    epochs: float = 4.0
    """A step costs ~5x relu-l1's (FISTA per token; measured on a demo-shaped synthetic run), so fewer passes to
    train in about relu-l1's time."""

    def checks(self):
        return super().checks() + [
            (self.n_iter >= 0, f"n_iter must be >= 0, got {self.n_iter}"),
            (self.pool >= 0, f"pool must be >= 0, got {self.pool}"),
            (self.k >= 0, f"k must be >= 0, got {self.k}"),
        ]

    def cfg_fields(self, d_in: int) -> dict:
        return {"fista_l1": self.l1_coeff / 2, "n_iter": self.n_iter, "pool": self.pool, "nonneg": self.nonneg,
                "k": self.k}


@register_kind
class SparseCodingDictionary(Dictionary):
    """Tensors: W_enc [d_in, d_sae], b_enc [d_sae] (the warm-start encoder), W_dec [d_sae, d_in] (unit rows),
    b_dec [d_in]. cfg: fista_l1 (raw units), n_iter, pool, nonneg, k (0 = no top-k)."""

    kind = "sparse-coding"
    architecture = "sparse_coding"  # not a SAELens architecture: codes need FISTA, not one matmul
    config_class = SparseCodingConfig

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.fista_l1 = float(cfg.get("fista_l1", 0.0))
        self.n_iter = int(cfg.get("n_iter", SparseCodingConfig.n_iter))
        self.pool = int(cfg.get("pool", SparseCodingConfig.pool))
        self.nonneg = bool(cfg.get("nonneg", SparseCodingConfig.nonneg))
        self.k = int(cfg.get("k") or 0)
        if self.fista_l1 < 0 or self.n_iter < 0 or self.pool < 0 or not 0 <= self.k <= self.d_sae:
            raise ValueError("sparse-coding needs fista_l1 >= 0, n_iter >= 0, pool >= 0, 0 <= k <= d_sae")
        if self.pool and self.k > self.pool:
            raise ValueError(f"sparse-coding top-k k={self.k} exceeds the pool of {self.pool} atoms")
        self.cfg.update(fista_l1=self.fista_l1, n_iter=self.n_iter, pool=self.pool, nonneg=self.nonneg, k=self.k)
        d_in, d_sae = self.d_in, self.d_sae
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    @torch.no_grad()
    def init_weights_(self, b_dec: torch.Tensor | None = None, enc_norm: float = 0.1,
                      generator: torch.Generator | None = None) -> None:
        """As relu-l1: random unit decoder rows, W_enc = enc_norm * W_dec^T, b_enc = 0, b_dec given."""
        self.W_dec.copy_(random_unit_rows(self.d_sae, self.d_in, generator))
        self.W_enc.copy_(enc_norm * self.W_dec.T)
        self.b_enc.zero_()
        self.b_dec.copy_(b_dec if b_dec is not None else torch.zeros(self.d_in))

    # --- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def infer(self, xc: torch.Tensor, pre: torch.Tensor, l1: float) -> torch.Tensor:
        """Codes [B, d_sae] for centred inputs xc [B, d_in] given the encoder's pre-activations pre [B, d_sae]."""
        W = self.W_dec.detach()
        z0 = pre.clamp_min(0.0) if self.nonneg else pre
        if self.pool:
            P = select_pool(pre, self.pool, nonneg=True)  # the encoder's favourites
            return pooled_inference(xc, W, P, "fista", nonneg=self.nonneg, l1=l1, n_iter=self.n_iter, z0=z0,
                                    topk=self.k or None)
        return fista(xc, W, l1, n_iter=self.n_iter, nonneg=self.nonneg, z0=z0, topk=self.k or None)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        xc = x - self.b_dec
        pre = torch.addmm(self.b_enc, xc, self.W_enc)
        return self.infer(xc, pre, self.fista_l1)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b_dec, f, self.W_dec)

    def flops_per_token(self) -> dict[str, int]:
        """Encode: the warm-start encoder (d_in + 2 d_in d_sae + 2 d_sae), then FISTA: pooled
        (sparse_inference.pooled_fista_flops with the pool chosen from the encoder: d_sae) or over all atoms
        (fista_flops). Decode: dense 2 d_sae d_in + d_in (k rows with top-k)."""
        n, d = self.d_sae, self.d_in
        enc = d + 2 * d * n + 2 * n
        if self.pool:
            enc += pooled_fista_flops(n, d, min(self.pool, n), self.n_iter, select=n)
        else:
            enc += fista_flops(n, d, self.n_iter, topk=bool(self.k))
        rows = self.k if self.k else n
        return {"encode": enc, "decode": 2 * rows * d + d}

    def train_flops_per_token(self) -> int:
        """Encode (above) + the gradients, counted dense-equivalent as one more 2 d_in d_sae each for the
        dictionary term and the encoder term (both only touch active pairs, so this is an upper bound)."""
        return self.flops_per_token()["encode"] + 2 * (2 * self.d_in * self.d_sae)

    @torch.no_grad()
    def fold_scale_(self, scale: float) -> None:
        # trained on s*x: biases, codes and the L1 weight all scale by 1/s (FISTA's iterates are homogeneous)
        self.b_enc.div_(scale)
        self.b_dec.div_(scale)
        self.fista_l1 /= scale
        self.cfg["fista_l1"] = self.fista_l1

    # --- training -------------------------------------------------------------------------
    def loss_and_backward(self, x: torch.Tensor, coeffs: dict) -> tuple[dict[str, float], torch.Tensor]:
        B = x.shape[0]
        l1 = coeffs["l1"] / 2  # FISTA's 0.5 ||.||^2 + l1 |z| is half the SAE objective ||.||^2 + l1_coeff |f|
        W_dec_d, b_dec_d = self.W_dec.detach(), self.b_dec.detach()
        h = x - b_dec_d  # [B, d_in]
        with torch.no_grad():
            pre = torch.addmm(self.b_enc, h, self.W_enc)  # [B, d_sae]
            z = self.infer(h, pre, l1)  # [B, d_sae], the codes
            zr, zc = z.nonzero(as_tuple=True)
            zpairs = Pairs.build(zr, zc, B, self.d_sae, sorted_rows=True)
            zvals = z[zr, zc]
            dense = float((pre > 0).float().mean()) > DENSE_ABOVE
            if not dense:
                r, c = (pre > 0).nonzero(as_tuple=True)
                fpairs = Pairs.build(r, c, B, self.d_sae, sorted_rows=True)
        # the dictionary, given the codes
        x_hat = sparse_decode(zpairs, zvals, self.W_dec) + self.b_dec
        mse = (x - x_hat).pow(2).sum() / B
        # the warm-start encoder, decoder detached
        if dense:
            f = torch.relu(torch.addmm(self.b_enc, h, self.W_enc))
            x_hat0 = torch.addmm(b_dec_d, f, W_dec_d)
            l1_sum = f.sum() / B
        else:
            vals = pair_linear(h, self.W_enc, self.b_enc, pre, fpairs)
            x_hat0 = sparse_decode(fpairs, vals, W_dec_d) + b_dec_d
            l1_sum = vals.sum() / B
        enc_mse = (x - x_hat0).pow(2).sum() / B
        loss = mse + enc_mse + 2 * l1 * l1_sum
        loss.backward()
        stats = {"loss": float(loss.detach()), "mse": float(mse.detach()), "enc_mse": float(enc_mse.detach()),
                 "l0": zpairs.nnz / B, "enc_l0": float((pre > 0).sum()) / B}
        return stats, zpairs.col_counts
