"""Sparse dictionary with an MLP encoder and the usual linear, unit-norm decoder.

    h     = 0.1 * ReLU(W_hid0^T (x - b_dec) + b_hid0)    # [B, hidden]  (optionally a second layer W_hid1)
    pre   = W_enc^T (x - b_dec) + b_enc + W_lat^T h      # [B, d_sae]: a linear skip + the MLP branch
    f     = ReLU(pre)   or   ReLU(TopK_k(pre))           # L1-penalised, or top-k when cfg k > 0
    x_hat = W_dec^T f + b_dec                            # [B, d_in]

A more expressive encoder narrows the amortisation gap of a one-layer SAE encoder (O'Neill et al.
2024, "Compute optimal inference and provable amortisation gap in sparse autoencoders") while the
dictionary stays linear, so features are read the same way. The skip connection, with W_lat = 0 at
init, makes the model start as exactly relu-l1's tied init and learn the nonlinear correction (a plain
MLP encoder from a random or least-squares start lost most latents to the L1 penalty on a demo-shaped
run: 91% dead after two epochs). Loss: ||x - x_hat||^2 + l1 * sum_i f_i
(decoder rows are unit norm) or, with top-k, the MSE alone. The hidden layers go through plain
autograd (they are small); the latent layer and decoder touch only active pairs once latents are
sparse (backend/dictionaries/sparse_ops.py), with a dense fallback while they are not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from backend.dictionaries.base import (
    Dictionary,
    random_unit_rows,
    register_kind,
)
from backend.dictionaries.relu_l1 import ReluL1Config
from backend.dictionaries.sparse_ops import Pairs, pair_linear, sparse_decode
from backend.dictionaries.topk import AuxKConfig, auxk_loss

BRANCH_SCALE = 0.1  # hidden output x 0.1: Adam moves W_lat as fast as W_enc; unscaled, the branch swamped the skip
# and 46% of latents died within two epochs on a demo-shaped synthetic run (3% with the scale; relu-l1: 0%)
DENSE_ABOVE = 0.08  # fraction of active latents above which the dense autograd path is faster on CPU


def hidden_width(hidden: int | None, d_in: int) -> int:
    """The encoder's hidden width: `hidden`, or for None the default d_in // 2 (see MLPConfig.hidden)."""
    return int(hidden or d_in // 2)


@dataclass
class MLPConfig(ReluL1Config, AuxKConfig):
    """mlp's settings: relu-l1's L1 penalty (and AuxK's settings for the top-k variant) plus the encoder's shape."""

    hidden: int | None = None
    """Width of the encoder's hidden layer(s); None = d_in / 2, so encoding costs ~1.5x relu-l1."""
    mlp_layers: int = 1
    """Hidden layers in the encoder, 1 or 2: one is the cheapest nonlinear correction; a second costs another
    hidden x hidden matmul per token."""
    k: int = 0
    """Keep only the k largest latents (the top-k variant, trained with AuxK); 0 = ReLU + L1 as relu-l1, so the
    two differ only in the encoder."""
    epochs: float = 6.0
    """A step costs ~1.8x relu-l1's (measured on a demo-shaped synthetic run), so fewer passes to train in about
    relu-l1's time."""

    def checks(self):
        return super().checks() + [
            (self.hidden is None or self.hidden >= 1, f"hidden must be >= 1, got {self.hidden}"),
            (self.mlp_layers in (1, 2), f"mlp_layers must be 1 or 2, got {self.mlp_layers}"),
            (self.k >= 0, f"k must be >= 0, got {self.k}"),
        ]

    def cfg_fields(self, d_in: int) -> dict:
        return {"hidden": hidden_width(self.hidden, d_in), "mlp_layers": self.mlp_layers, "k": self.k,
                "k_aux": self.resolved_k_aux(d_in) if self.k else 0}


@register_kind
class MLPEncoderDictionary(Dictionary):
    """Tensors: W_enc [d_in, d_sae], b_enc [d_sae] (the skip), W_hid0 [d_in, hidden], b_hid0 [hidden],
    (W_hid1 [hidden, hidden], b_hid1), W_lat [hidden, d_sae], W_dec [d_sae, d_in] (unit-norm rows), b_dec [d_in].
    cfg: hidden, mlp_layers, k (0 = ReLU + L1; with k, AuxK as topk)."""

    kind = "mlp"
    architecture = "mlp_encoder"  # not a SAELens architecture
    config_class = MLPConfig

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.hidden = hidden_width(cfg.get("hidden"), self.d_in)
        self.n_layers = int(cfg.get("mlp_layers") or MLPConfig.mlp_layers)
        self.k = int(cfg.get("k") or 0)
        if self.n_layers not in (1, 2) or self.hidden < 1 or not 0 <= self.k <= self.d_sae:
            raise ValueError(f"mlp needs mlp_layers 1 or 2, hidden >= 1, 0 <= k <= d_sae; got "
                             f"{self.n_layers}, {self.hidden}, {self.k}")
        self.cfg.update(hidden=self.hidden, mlp_layers=self.n_layers, k=self.k)
        self.W_enc = nn.Parameter(torch.zeros(self.d_in, self.d_sae))
        self.b_enc = nn.Parameter(torch.zeros(self.d_sae))
        widths = [self.d_in] + [self.hidden] * self.n_layers
        for i in range(self.n_layers):
            setattr(self, f"W_hid{i}", nn.Parameter(torch.zeros(widths[i], widths[i + 1])))
            setattr(self, f"b_hid{i}", nn.Parameter(torch.zeros(widths[i + 1])))
        self.W_lat = nn.Parameter(torch.zeros(self.hidden, self.d_sae))
        self.W_dec = nn.Parameter(torch.zeros(self.d_sae, self.d_in))
        self.b_dec = nn.Parameter(torch.zeros(self.d_in))

    def _hidden_layers(self):
        return [(getattr(self, f"W_hid{i}"), getattr(self, f"b_hid{i}")) for i in range(self.n_layers)]

    # --- init -----------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights_(self, b_dec: torch.Tensor | None = None, enc_norm: float = 0.1,
                      generator: torch.Generator | None = None) -> None:
        """relu-l1's tied init for the skip (random unit decoder rows, W_enc = enc_norm W_dec^T), He-initialised
        hidden layers, W_lat = 0 (the MLP branch starts silent), zero biases, b_dec given."""
        self.W_dec.copy_(random_unit_rows(self.d_sae, self.d_in, generator))
        self.W_enc.copy_(enc_norm * self.W_dec.T)
        self.b_enc.zero_()
        for W, b in self._hidden_layers():
            W.copy_(torch.randn(W.shape, generator=generator) * math.sqrt(2.0 / W.shape[0]))
            b.zero_()
        self.W_lat.zero_()
        self.b_dec.copy_(b_dec if b_dec is not None else torch.zeros(self.d_in))

    # --- inference ------------------------------------------------------------------------
    def hidden_of(self, xc: torch.Tensor) -> torch.Tensor:  # centred input [B, d_in] -> [B, hidden]
        h = xc
        for W, b in self._hidden_layers():
            h = torch.relu(torch.addmm(b, h, W))
        return h * BRANCH_SCALE

    def pre_acts(self, xc: torch.Tensor, h: torch.Tensor) -> torch.Tensor:  # [B, d_sae]
        return torch.addmm(self.b_enc, xc, self.W_enc).addmm_(h, self.W_lat)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        xc = x - self.b_dec
        pre = self.pre_acts(xc, self.hidden_of(xc))  # [B, d_sae]
        if self.k:
            v, i = pre.topk(self.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, i, v.relu())
        return torch.relu(pre)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b_dec, f, self.W_dec)

    def flops_per_token(self) -> dict[str, int]:
        """Encode: subtract b_dec (d_in), each hidden layer 2 w_in w_out + 2 w_out (bias, ReLU), BRANCH_SCALE (hidden), skip
        2 d_in d_sae + d_sae (bias), MLP branch 2 hidden d_sae, ReLU/top-k d_sae. Decode: dense
        2 d_sae d_in + d_in (only k rows with top-k)."""
        enc = self.d_in + self.hidden
        for W, _ in self._hidden_layers():
            enc += 2 * W.shape[0] * W.shape[1] + 2 * W.shape[1]
        enc += 2 * self.d_in * self.d_sae + 2 * self.hidden * self.d_sae + 2 * self.d_sae
        rows = self.k if self.k else self.d_sae
        return {"encode": enc, "decode": 2 * rows * self.d_in + self.d_in}

    def train_flops_per_token(self) -> int:
        """Hidden layers 6 x their parameters (dense forward and backward), latent layer forward
        2 (d_in + hidden) d_sae, then per active pair for top-k: decode, value and W_dec-row gradients (6 d_in),
        W_enc column and skip-input gradients (4 d_in), W_lat column and hidden-input gradients (4 hidden);
        with L1 (data-dependent L0) the dense count 6 x parameters."""
        hid = sum(W.numel() + b.numel() for W, b in self._hidden_layers())
        if not self.k:
            return 6 * sum(p.numel() for p in self.parameters())
        return 6 * hid + 2 * (self.d_in + self.hidden) * self.d_sae + self.k * (4 * self.hidden + 10 * self.d_in)

    @torch.no_grad()
    def fold_scale_(self, scale: float) -> None:
        # trained on s*x: every layer is positively homogeneous once all biases are divided by s
        for _, b in self._hidden_layers():
            b.div_(scale)
        self.b_enc.div_(scale)
        self.b_dec.div_(scale)

    # --- training -------------------------------------------------------------------------
    def loss_and_backward(self, x: torch.Tensor, coeffs: dict) -> tuple[dict[str, float], torch.Tensor]:
        B = x.shape[0]
        xc = x - self.b_dec  # [B, d_in]
        h = self.hidden_of(xc)  # [B, hidden], autograd
        with torch.no_grad():
            pre = self.pre_acts(xc, h)  # [B, d_sae]
            if self.k:
                pairs = Pairs.from_topk(pre.topk(self.k, dim=1, sorted=False).indices, self.d_sae)
                pairs = pairs.select(pre[pairs.rows, pairs.cols] > 0)
                dense = False
            else:
                dense = float((pre > 0).float().mean()) > DENSE_ABOVE
                if not dense:
                    r, c = (pre > 0).nonzero(as_tuple=True)
                    pairs = Pairs.build(r, c, B, self.d_sae, sorted_rows=True)
        l1_coeff = 0.0 if self.k else coeffs["l1"]
        if dense:
            f = torch.relu(self.pre_acts(xc, h))
            x_hat = torch.addmm(self.b_dec, f, self.W_dec)
            l1 = (f * self.W_dec.norm(dim=1)).sum() / B
            fired = (f > 0).sum(0)
            nnz = int((f > 0).sum())
        else:
            zero = torch.zeros(1, 1).expand(B, self.d_sae)  # the MLP branch adds gradients; values come from pre
            vals = pair_linear(xc, self.W_enc, self.b_enc, pre, pairs) + pair_linear(h, self.W_lat, None, zero, pairs)
            x_hat = sparse_decode(pairs, vals, self.W_dec) + self.b_dec
            l1 = (vals * self.W_dec.norm(dim=1)[pairs.cols]).sum() / B
            fired, nnz = pairs.col_counts, pairs.nnz
        err = x - x_hat
        mse = err.pow(2).sum() / B
        loss = mse + l1_coeff * l1
        if self.k and coeffs.get("dead") is not None and coeffs.get("aux_coeff", 0) > 0:  # AuxK as topk
            aux = auxk_loss(xc, self.W_enc, self.b_enc, self.W_dec, pre, err.detach(), coeffs["dead"],
                            int(coeffs.get("k_aux", 0)))  # through the skip only: dead latents revive linearly
            if aux is not None:
                loss = loss + coeffs["aux_coeff"] * aux
        loss.backward()
        stats = {"loss": float(loss.detach()), "mse": float(mse.detach()), "l1": float(l1.detach()), "l0": nnz / B}
        return stats, fired
