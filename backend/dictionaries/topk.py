"""TopK and BatchTopK sparse autoencoders, trained with the AuxK loss.

    pre   = W_enc^T (x - b_dec) + b_enc                     # [B, d_sae]
    f     = ReLU(TopK_k(pre))                                # TopK: the k largest per token
    x_hat = W_dec^T f + b_dec                                # [B, d_in], unit-norm decoder rows
    loss  = ||x - x_hat||^2 + aux_coeff * ||e - e_aux||^2 / ||e||^2,   e = (x - x_hat) detached,
            e_aux = W_dec^T ReLU(TopK_k_aux(pre restricted to dead latents))

Gao et al. 2024, "Scaling and evaluating sparse autoencoders" (k_aux = d_in / 2, aux_coeff = 1/32,
dead = no firing for a number of training tokens). BatchTopK (Bussmann et al. 2024) keeps the B*k largest
pre-activations of the whole batch instead of k per token; at inference it is a JumpReLU with one global
threshold theta (a running mean of the smallest kept activation), so it is saved as SAELens "jumprelu"
with `threshold` = theta for every latent. Training touches only the active pairs (backend/dictionaries/sparse_ops.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backend.dictionaries.base import KindConfig, register_kind
from backend.dictionaries.relu_l1 import ReluL1SAE
from backend.dictionaries.sparse_ops import Pairs, col_scatter, pair_dots, pair_linear, select_preacts, set_grads, sparse_decode


@dataclass
class AuxKConfig(KindConfig):
    """The AuxK loss's settings, for every kind trained with it (topk, batchtopk, mlp with k > 0)."""

    k_aux: int | None = None
    """Latents in the AuxK reconstruction of the residual; None = d_in / 2 (Gao et al.)."""
    aux_coeff: float = 1 / 32
    """Weight of the normalised AuxK loss (Gao et al.: 1/32)."""
    auxk_dead_tokens: int = 200_000
    """A latent silent for this many training tokens gets the AuxK gradient (Gao et al. use 10M of billions of
    tokens; ~one pass over the demo's 190k tokens here)."""

    def checks(self):
        return super().checks() + [
            (self.k_aux is None or self.k_aux >= 0, f"k_aux must be >= 0, got {self.k_aux}"),
            (self.aux_coeff >= 0, f"aux_coeff must be >= 0, got {self.aux_coeff}"),
            (self.auxk_dead_tokens >= 1, "auxk_dead_tokens must be >= 1"),
        ]

    def resolved_k_aux(self, d_in: int) -> int:
        return self.k_aux if self.k_aux is not None else d_in // 2


@dataclass
class TopKConfig(AuxKConfig):
    """topk's settings (Gao et al. 2024)."""

    k: int = 32
    """Active latents per token: Gao et al.'s common choice."""
    # Peak Adam lr when TrainConfig.lr is None. 1e-3 (relu-l1's) left topk under-trained: on the sparsify bench
    # (400k token-steps of the demo, 195 steps, d_sae 4608) held-out FVU 0.271 at 1e-3, 0.211 at 3e-3, 0.199 at
    # 5e-3 (sparsify 0.204); 1e-2 gave 0.193 but 16% dead latents. README, "Speed against the peers".
    default_lr = 5e-3
    epochs: float = 12.0
    """As relu-l1's: a topk step costs about as much (the per-token top-k is cheap next to the encoder matmul)."""

    def checks(self):
        return super().checks() + [(self.k >= 1, f"k must be >= 1, got {self.k}")]

    def cfg_fields(self, d_in: int) -> dict:
        return {"k": self.k, "k_aux": self.resolved_k_aux(d_in)}


@dataclass
class BatchTopKConfig(TopKConfig):
    """batchtopk's settings: topk's, with its own number of passes."""

    epochs: float = 8.0
    """A step costs ~1.5x relu-l1's (the batch-wide top-k; measured on a demo-shaped synthetic run), so fewer
    passes to train in about relu-l1's time."""


def auxk_loss(h, W_enc, b_enc, W_dec, pre, err, dead, k_aux: int) -> torch.Tensor | None:
    """Normalised AuxK loss: reconstruct err [B, d_in] (detached residual) from the k_aux largest
    pre-activations among dead latents (dead [d_sae] bool). None when no latent is dead."""
    n_dead = int(dead.sum())
    if n_dead == 0 or k_aux <= 0:
        return None
    pre_dead = pre.masked_fill(~dead.to(pre.device)[None, :], -torch.inf)  # [B, d_sae]
    top = pre_dead.topk(min(k_aux, n_dead), dim=1, sorted=False)
    pairs = Pairs.from_topk(top.indices, pre.shape[1])
    keep = pre[pairs.rows, pairs.cols] > 0
    if not bool(keep.any()):
        return None
    pairs = pairs.select(keep)
    vals = pair_linear(h, W_enc, b_enc, pre, pairs)  # all > 0: ReLU is the identity here
    e_aux = sparse_decode(pairs, vals, W_dec)  # [B, d_in]
    return (e_aux - err).pow(2).sum() / err.pow(2).sum().clamp_min(1e-12)


AUX_DENSE_MAX = 8  # AuxK runs dense on the dead latents' columns while n_dead <= AUX_DENSE_MAX * k_aux


@register_kind
class TrainableTopKSAE(ReluL1SAE):
    """TopK SAE: parameters as relu-l1 (W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec), cfg `k`."""

    kind = "topk"
    architecture = "topk"  # the SAELens name: SAELens loads these folders as its TopK SAE
    loads_saelens = False  # plain SAELens topk folders load as saelens_io.TopKSAE
    config_class = TopKConfig

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.k = int(cfg.get("k") or 0)
        if not 0 < self.k <= self.d_sae:
            raise ValueError(f"topk needs 0 < k <= d_sae, got k={cfg.get('k')}")
        self.cfg["k"] = self.k
        self.use_fast_path = False  # relu-l1's fast path does not apply

    def encode(self, x):
        pre = torch.addmm(self.b_enc, x - self.b_dec, self.W_enc)
        v, i = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, i, v.relu())

    def flops_per_token(self) -> dict[str, int]:
        # encode as relu-l1 (subtract, matmul, bias, then a selection ~ d_sae comparisons); decode only k rows
        mm = 2 * self.d_in * self.d_sae
        return {"encode": mm + self.d_in + 2 * self.d_sae, "decode": 2 * self.k * self.d_in + self.d_in}

    def train_flops_per_token(self) -> int:
        """Dense encoder forward (2 d_in d_sae), then per active pair 2 d_in FLOPs each for: decode,
        grad of the value, grad of W_dec row, grad of W_enc column, grad of the input -> 10 d_in per pair
        (k pairs, plus k_aux AuxK pairs, counted as if some latent were always dead)."""
        return 2 * self.d_in * self.d_sae + 10 * (self.k + int(self.cfg.get("k_aux", 0))) * self.d_in

    # --- training -------------------------------------------------------------------------
    def select(self, pre: torch.Tensor) -> Pairs:
        """Active pairs of the batch (pre [B, d_sae], no grad): the top k per token. Pairs whose exact value
        turns out <= 0 stay in with weight 0 (ReLU), so the pattern keeps k pairs per row."""
        return Pairs.from_topk(pre.topk(self.k, dim=1, sorted=False).indices, self.d_sae)

    @torch.no_grad()
    def loss_and_backward(self, x: torch.Tensor, coeffs: dict) -> tuple[dict[str, float], torch.Tensor]:
        """MSE + AuxK with hand-written sparse gradients (tested against dense autograd): fills .grad of the
        four parameters; returns (stats, fire_counts [d_sae]).

        The one dense product chooses the pairs (in `select_dtype`); then, with F the latents on those pairs,
        x_hat = F @ W_dec + b_dec, g = dL/dx_hat = 2 (x_hat - x) / B and
            dW_dec = F^T @ g,  dv = (g @ W_dec^T)[pairs] * (v > 0),  dW_enc^T = dV^T @ h,  db_enc = colsum(dV),
            db_dec = rowsum(g) - W_enc @ db_enc   (b_dec also enters through h = x - b_dec).
        """
        B = x.shape[0]
        W_enc, b_enc, W_dec, b_dec = self.W_enc, self.b_enc, self.W_dec, self.b_dec
        h = x - b_dec  # [B, d_in]
        pre = select_preacts(h, W_enc, b_enc, self.select_dtype)  # [B, d_sae], the one dense matmul
        pairs = self.select(pre)
        if pre.dtype == torch.float32:
            vals = pre[pairs.rows, pairs.cols]  # [nnz], exact already
        else:
            vals = pair_dots(pairs, h, W_enc) + b_enc[pairs.cols]  # [nnz], recomputed in float32
        act = vals.clamp_min(0)
        err = sparse_decode(pairs, act, W_dec) + b_dec - x  # x_hat - x [B, d_in]
        mse = err.pow(2).sum() / B
        g = err * (2.0 / B)  # dL/dx_hat [B, d_in]
        gW_dec = col_scatter(pairs, act, g)  # [d_sae, d_in]
        gv = pair_dots(pairs, g, W_dec.T).mul_(vals > 0)  # [nnz]
        gW_enc_T = col_scatter(pairs, gv, h)  # [d_sae, d_in]
        gb_enc = torch.zeros_like(b_enc).index_add_(0, pairs.cols, gv)
        grads = (gW_enc_T, gb_enc, gW_dec)
        aux = None
        dead = coeffs.get("dead")
        if dead is not None and coeffs.get("aux_coeff", 0) > 0:
            aux = self._auxk_backward(h, pre, err.neg_(), dead.to(x.device), int(coeffs.get("k_aux", 0)),
                                      coeffs["aux_coeff"], grads)
        gb_dec = g.sum(0) - W_enc @ gb_enc
        set_grads(((W_enc, gW_enc_T.T), (b_enc, gb_enc), (W_dec, gW_dec), (b_dec, gb_dec)))
        kept = act > 0
        self.after_selection_(vals[kept])
        loss = mse + (coeffs["aux_coeff"] * aux if aux is not None else 0.0)
        stats = {"mse": float(mse), "l0": int(kept.sum()) / B, "auxk": float(aux) if aux is not None else 0.0,
                 "loss": float(loss)}
        return stats, torch.bincount(pairs.cols[kept], minlength=self.d_sae)

    def _auxk_backward(self, h, pre, e, dead, k_aux: int, coeff: float, grads) -> torch.Tensor | None:
        """AuxK (see `auxk_loss`): reconstruct the residual e = x - x_hat [B, d_in] from the k_aux largest
        pre-activations among dead latents; adds coeff * its gradient into grads (gW_enc^T, gb_enc, gW_dec)
        in place and returns the normalised loss (None when no latent is dead or none is active).
        Dense on the dead latents' columns while they are few (their GEMMs beat gathers), else sparse pairs."""
        dead_idx = dead.nonzero().squeeze(1)  # [n_dead]
        nd = int(dead_idx.numel())
        if nd == 0 or k_aux <= 0:
            return None
        gW_enc_T, gb_enc, gW_dec = grads
        ka = min(k_aux, nd)
        scale = e.pow(2).sum().clamp_min(1e-12)
        if nd <= AUX_DENSE_MAX * ka:
            We, Wd = self.W_enc[:, dead_idx], self.W_dec[dead_idx]  # [d_in, nd], [nd, d_in]
            pd = torch.addmm(self.b_enc[dead_idx], h, We)  # [B, nd] exact
            top = pd.topk(ka, dim=1, sorted=False)
            fa = torch.zeros_like(pd).scatter_(1, top.indices, top.values.clamp_min(0))  # [B, nd]
            if not bool((top.values > 0).any()):
                return None
            r = fa @ Wd - e  # e_aux - e [B, d_in]
            ge = r * (2 * coeff / scale)  # d(coeff * aux)/d e_aux
            gW_dec.index_add_(0, dead_idx, fa.T @ ge)
            gf = (ge @ Wd.T).mul_(fa > 0)  # [B, nd]
            gW_enc_T.index_add_(0, dead_idx, gf.T @ h)
            gb_enc.index_add_(0, dead_idx, gf.sum(0))
        else:
            top = pre.masked_fill(~dead[None, :], -torch.inf).topk(ka, dim=1, sorted=False)
            pa = Pairs.from_topk(top.indices, self.d_sae)
            va = pair_dots(pa, h, self.W_enc) + self.b_enc[pa.cols] if pre.dtype != torch.float32 \
                else top.values.reshape(-1)
            act = va.clamp_min(0)
            if not bool((act > 0).any()):
                return None
            r = sparse_decode(pa, act, self.W_dec) - e
            ge = r * (2 * coeff / scale)
            gW_dec.add_(col_scatter(pa, act, ge))
            gv = pair_dots(pa, ge, self.W_dec.T).mul_(va > 0)
            gW_enc_T.add_(col_scatter(pa, gv, h))
            gb_enc.index_add_(0, pa.cols, gv)
        return r.pow(2).sum() / scale

    def after_selection_(self, vals: torch.Tensor) -> None:
        """Hook for BatchTopK's threshold: vals [nnz] are the exact positive pre-activations kept."""


@register_kind
class BatchTopKSAE(TrainableTopKSAE):
    """BatchTopK SAE: trained with the B*k largest pre-activations per batch; inference
    f = ReLU(pre) * (pre > threshold) (JumpReLU), threshold [d_sae] = the learnt global theta."""

    kind = "batchtopk"
    architecture = "jumprelu"  # what it is at inference, loadable by SAELens as such
    loads_saelens = False  # plain SAELens jumprelu folders load as saelens_io.JumpReluSAE
    config_class = BatchTopKConfig
    threshold_momentum = 0.99  # running mean of theta over steps

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros(self.d_sae))  # [d_sae], theta in every entry
        self._theta_steps = 0

    def encode(self, x):
        pre = torch.addmm(self.b_enc, x - self.b_dec, self.W_enc)
        return torch.relu(pre) * (pre > self.threshold)

    def flops_per_token(self) -> dict[str, int]:
        # data-dependent L0: decode counted dense, as relu-l1; encode adds the threshold comparison
        mm = 2 * self.d_in * self.d_sae
        return {"encode": mm + self.d_in + 3 * self.d_sae, "decode": mm + self.d_in}

    def select(self, pre: torch.Tensor) -> Pairs:
        B, n = pre.shape
        top = pre.reshape(-1).topk(min(B * self.k, B * n), sorted=False)
        keep = top.values > 0
        flat = top.indices[keep]
        return Pairs.build(flat // n, flat % n, B, n)

    @torch.no_grad()
    def after_selection_(self, vals: torch.Tensor) -> None:
        if vals.numel() == 0:
            return
        theta = float(vals.min())
        m = self.threshold_momentum if self._theta_steps else 0.0
        self.threshold.mul_(m).add_((1 - m) * theta)
        self._theta_steps += 1

    @torch.no_grad()
    def fold_scale_(self, scale: float) -> None:
        super().fold_scale_(scale)
        self.threshold.div_(scale)
