"""Autograd pieces for training dictionaries whose latents are sparse (top-k, ReLU+L1 once sparse, codes).

Only the encoder's pre-activation matmul is dense; everything downstream touches only the active
(token, latent) pairs, as in relu_l1's fast path but composable with autograd:

    pairs = Pairs.build(rows, cols, B, n)              # active pairs, any order in, CSR order kept
    vals  = pair_linear(h, W, b, pre_vals, pairs)       # [nnz] = (h @ W + b)[rows, cols] with sparse backward
    x_hat = sparse_decode(pairs, vals, W_dec) + b_dec   # [B, d] = sum over a row's pairs of vals * W_dec[col]

`pair_linear`'s backward: dh = sum over a row's pairs of g * W[:, col] (embedding_bag over W^T), dW^T = sum
over a column's pairs of g * h[row] (embedding_bag in CSC order), db = index_add. `sparse_decode` is
`F.embedding_bag`, whose autograd already gives the gradients of vals and of W_dec's active rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Pairs:
    """Active (row, col) pairs of a [B, n] latent matrix, sorted by row (CSR order)."""

    rows: torch.Tensor  # [nnz] int64
    cols: torch.Tensor  # [nnz] int64
    offsets: torch.Tensor  # [B] start of each row's pairs
    order: torch.Tensor  # [nnz] permutation into column-major (CSC) order
    col_offsets: torch.Tensor  # [n] start of each column's pairs in CSC order
    col_counts: torch.Tensor  # [n] pairs per column (= how many tokens each latent fired on)
    B: int
    n: int

    @staticmethod
    def build(rows: torch.Tensor, cols: torch.Tensor, B: int, n: int, sorted_rows: bool = False) -> "Pairs":
        if not sorted_rows:
            o = torch.argsort(rows * n + cols)
            rows, cols = rows[o], cols[o]
        per_row = torch.bincount(rows, minlength=B)
        offsets = torch.cumsum(per_row, 0) - per_row
        counts = torch.bincount(cols, minlength=n)
        order = torch.argsort(cols * B + rows)
        return Pairs(rows, cols, offsets, order, torch.cumsum(counts, 0) - counts, counts, B, n)

    @staticmethod
    def from_topk(idx: torch.Tensor, n: int) -> "Pairs":
        """From top-k indices idx [B, k] (rows already in order)."""
        B, k = idx.shape
        rows = torch.arange(B, device=idx.device).repeat_interleave(k)
        return Pairs.build(rows, idx.reshape(-1), B, n, sorted_rows=True)

    def select(self, keep: torch.Tensor) -> "Pairs":
        """The pairs where keep [nnz] bool is true (order kept)."""
        if bool(keep.all()):  # the usual case for top-k (all k pre-activations > 0): no second sort
            return self
        return Pairs.build(self.rows[keep], self.cols[keep], self.B, self.n, sorted_rows=True)

    @property
    def nnz(self) -> int:
        return int(self.rows.numel())


class _PairLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, W, b, vals, pairs: Pairs):  # h [B, m], W [m, n], b [n], vals [nnz] precomputed
        ctx.save_for_backward(h, W)
        ctx.pairs = pairs
        return vals.clone()

    @staticmethod
    def backward(ctx, g):  # g [nnz]
        h, W = ctx.saved_tensors
        p: Pairs = ctx.pairs
        gh = gW = gb = None
        if ctx.needs_input_grad[0]:
            gh = F.embedding_bag(p.cols, W.T.contiguous(), p.offsets, mode="sum", per_sample_weights=g)  # [B, m]
        if ctx.needs_input_grad[1]:
            gW = F.embedding_bag(p.rows[p.order], h, p.col_offsets, mode="sum",
                                 per_sample_weights=g[p.order]).T  # [m, n]
        if ctx.needs_input_grad[2]:
            gb = torch.zeros(p.n, dtype=g.dtype, device=g.device).index_add_(0, p.cols, g)
        return gh, gW, gb, None, None


def pair_linear(h: torch.Tensor, W: torch.Tensor, b: torch.Tensor, pre: torch.Tensor, pairs: Pairs) -> torch.Tensor:
    """(h @ W + b)[rows, cols] [nnz], differentiable in h, W, b; `pre` [B, n] is that product, already
    computed without grad (it was needed to choose the pairs)."""
    return _PairLinear.apply(h, W, b, pre[pairs.rows, pairs.cols], pairs)


def sparse_decode(pairs: Pairs, vals: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """[B, d]: row r = sum over its pairs of vals * W_dec[col] (no bias)."""
    return F.embedding_bag(pairs.cols, W_dec, pairs.offsets, mode="sum", per_sample_weights=vals)


def set_grads(params_grads) -> None:
    """Accumulate (param, grad) pairs into .grad (for hand-computed gradients)."""
    for p, g in params_grads:
        if p.grad is None:
            p.grad = g.contiguous()
        else:
            p.grad.add_(g)
