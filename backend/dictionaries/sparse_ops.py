"""Pieces for training dictionaries whose latents are sparse (top-k, ReLU+L1 once sparse, codes).

Only the encoder's pre-activation matmul is dense; everything downstream touches only the active
(token, latent) pairs. With F [B, n] the sparse latent matrix held as `Pairs` (CSR order):

    pairs = Pairs.build(rows, cols, B, n)              # active pairs, any order in, CSR order kept
    vals  = pair_dots(pairs, h, W) + b[pairs.cols]      # [nnz] = (h @ W + b)[rows, cols], exact float32
    x_hat = sparse_decode(pairs, vals, W_dec) + b_dec   # [B, d] = F @ W_dec: per row, sum of vals * W_dec[col]
    gW    = col_scatter(pairs, w, D)                    # [n, d] = F_w^T @ D: per col, sum of w * D[row]

Every product is one of those three: the decoder is F @ W_dec, the gradient of a pair's value is a dot
product (`pair_dots`: a sampled matmul, SDDMM), and the gradients of W_dec rows and W_enc columns are F^T @ D
(`col_scatter`: `embedding_bag` over the pairs in column-major (CSC) order). The CSC order is the only
sort, done once per pattern as a stable LSD radix sort on 16-bit digits (`stable_order`): torch's
comparison sort of 65k int64 keys took 2-40 ms single-threaded and up to 0.8 s with two threads on a loaded
2-core machine, the radix sort ~0.5 ms either way.

Mixed precision where it is safe (`select_preacts`): the dense matmul only chooses the pairs (top-k or
ReLU > 0), so it can run in bfloat16 where the hardware multiplies that natively (CUDA, CPUs with AMX:
~7x the float32 matmul on this project's Xeon); the values of the chosen pairs are then recomputed exactly in
float32 (`pair_dots`), so the loss and every gradient are the float32 ones for that choice. Only near-ties
at the selection boundary can differ (99% of top-32 pairs agree on random data, more on trained weights).

`pair_linear` wraps the pair values in autograd (mlp, sparse-coding): its backward is dh = F_g @ W^T
(embedding_bag over W^T), dW^T = `col_scatter`, db = index_add. `sparse_decode` is `F.embedding_bag`, whose
autograd gives the gradients of vals and of W_dec's active rows.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

SELECT_DTYPES = ("auto", "float32", "bfloat16")
PAIR_DOTS_CHUNK = 1 << 16  # pairs per gather chunk off CPU: [chunk, d] float32 stays ~150 MB at d = 576


def fast_select_dtype(device: torch.device | str, choice: str = "auto") -> torch.dtype:
    """The dtype of the selection matmul: `choice` if explicit; "auto" = bfloat16 where it is multiplied natively
    (CUDA with bf16, a CPU with AMX tiles), else float32 (emulated bfloat16 is slower than float32)."""
    if choice != "auto":
        return getattr(torch, choice)
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch >= 2.3; absent = assume not
        return torch.bfloat16 if amx is not None and amx() else torch.float32
    return torch.float32


def select_preacts(h: torch.Tensor, W: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(h @ W + b) [B, n] for choosing the active latents only, in `dtype` (see the module docstring)."""
    if dtype == h.dtype:
        return torch.addmm(b, h, W)
    return torch.addmm(b.to(dtype), h.to(dtype), W.to(dtype))


def stable_order(keys: torch.Tensor, bound: int) -> torch.Tensor:
    """The stable sorting permutation of int keys [N] in [0, bound): LSD radix on 16-bit digits (numpy's stable
    sort is a radix sort for 16-bit types) on CPU, torch's stable sort elsewhere."""
    if keys.device.type != "cpu":
        return torch.argsort(keys, stable=True)
    k = keys.numpy()
    order = np.arange(len(k))
    for shift in range(0, max(1, int(bound - 1).bit_length()), 16):
        digit = (k[order] >> shift).astype(np.uint16)  # the next 16 bits, in the order so far
        order = order[np.argsort(digit, kind="stable")]
    return torch.from_numpy(order)


@dataclass
class Pairs:
    """Active (row, col) pairs of a [B, n] latent matrix, sorted by row (CSR order). The column-major (CSC)
    view, needed only by `col_scatter`, is built on first use."""

    rows: torch.Tensor  # [nnz] int64
    cols: torch.Tensor  # [nnz] int64
    offsets: torch.Tensor  # [B] start of each row's pairs
    B: int
    n: int
    _csc: tuple | None = field(default=None, repr=False)
    _counts: torch.Tensor | None = field(default=None, repr=False)

    @staticmethod
    def build(rows: torch.Tensor, cols: torch.Tensor, B: int, n: int, sorted_rows: bool = False) -> "Pairs":
        if not sorted_rows:
            o = stable_order(rows * n + cols, B * n)
            rows, cols = rows[o], cols[o]
        per_row = torch.bincount(rows, minlength=B)
        return Pairs(rows, cols, torch.cumsum(per_row, 0) - per_row, B, n)

    @staticmethod
    def from_topk(idx: torch.Tensor, n: int) -> "Pairs":
        """From top-k indices idx [B, k] (rows already in order)."""
        B, k = idx.shape
        rows = torch.arange(B, device=idx.device).repeat_interleave(k)
        return Pairs(rows, idx.reshape(-1), torch.arange(0, B * k, k, device=idx.device), B, n)

    def select(self, keep: torch.Tensor) -> "Pairs":
        """The pairs where keep [nnz] bool is true (order kept)."""
        if bool(keep.all()):  # the usual case for top-k (all k pre-activations > 0): nothing to rebuild
            return self
        return Pairs.build(self.rows[keep], self.cols[keep], self.B, self.n, sorted_rows=True)

    @property
    def nnz(self) -> int:
        return int(self.rows.numel())

    @property
    def order(self) -> torch.Tensor:
        """[nnz] permutation into column-major (CSC) order, rows ascending within a column."""
        return self._csc_view()[0]

    @property
    def col_offsets(self) -> torch.Tensor:
        """[n] start of each column's pairs in CSC order."""
        return self._csc_view()[1]

    @property
    def col_counts(self) -> torch.Tensor:
        """[n] pairs per column (= how many tokens each latent is active on)."""
        if self._counts is None:
            self._counts = torch.bincount(self.cols, minlength=self.n)
        return self._counts

    def _csc_view(self) -> tuple:
        if self._csc is None:
            counts = self.col_counts
            self._csc = (stable_order(self.cols, self.n), torch.cumsum(counts, 0) - counts)
        return self._csc

    def crow(self) -> torch.Tensor:
        """[B + 1] CSR row pointers."""
        return torch.cat([self.offsets, self.offsets.new_tensor([self.nnz])])


def pair_dots(pairs: Pairs, A: torch.Tensor, M: torch.Tensor, chunk: int = PAIR_DOTS_CHUNK,
              sampled: bool | None = None) -> torch.Tensor:
    """[nnz]: (A @ M)[rows, cols] for A [B, m], M [m, n] (M may be a transposed view). On CPU a sampled matmul
    (no [nnz, m] temporary); elsewhere (or `sampled=False`) row gathers in chunks of `chunk` pairs."""
    if sampled is None:
        sampled = A.device.type == "cpu"
    if sampled:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            mask = torch.sparse_csr_tensor(pairs.crow(), pairs.cols, torch.ones(pairs.nnz, dtype=A.dtype, device=A.device),
                                           size=(pairs.B, pairs.n))
            return torch.sparse.sampled_addmm(mask, A, M, beta=0.0).values()
    Mt = M.T  # [n, m]
    out = torch.empty(pairs.nnz, dtype=A.dtype, device=A.device)
    for s in range(0, pairs.nnz, chunk):
        r, c = pairs.rows[s:s + chunk], pairs.cols[s:s + chunk]
        out[s:s + chunk] = (A[r] * Mt[c]).sum(1)
    return out


def sparse_decode(pairs: Pairs, vals: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """[B, d]: row r = sum over its pairs of vals * W_dec[col] (no bias)."""
    return F.embedding_bag(pairs.cols, W_dec, pairs.offsets, mode="sum", per_sample_weights=vals)


def col_scatter(pairs: Pairs, w: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """[n, d]: row c = sum over the pairs in column c of w * D[row], i.e. F_w^T @ D for D [B, d]."""
    o = pairs.order
    return F.embedding_bag(pairs.rows[o], D, pairs.col_offsets, mode="sum", per_sample_weights=w[o])


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
            gW = col_scatter(p, g, h).T  # [m, n]
        if ctx.needs_input_grad[2]:
            gb = torch.zeros(p.n, dtype=g.dtype, device=g.device).index_add_(0, p.cols, g)
        return gh, gW, gb, None, None


def pair_linear(h: torch.Tensor, W: torch.Tensor, b: torch.Tensor, pre: torch.Tensor, pairs: Pairs) -> torch.Tensor:
    """(h @ W + b)[rows, cols] [nnz], differentiable in h, W, b; `pre` [B, n] is that product, already
    computed without grad (it was needed to choose the pairs)."""
    return _PairLinear.apply(h, W, b, pre[pairs.rows, pairs.cols], pairs)


def set_grads(params_grads) -> None:
    """Accumulate (param, grad) pairs into .grad (for hand-computed gradients)."""
    for p, g in params_grads:
        if p.grad is None:
            p.grad = g.contiguous()
        else:
            p.grad.add_(g)
