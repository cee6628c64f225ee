"""Attribution patching: the first-order effect of removing each active (feature, position), and exact removals.

The dictionary is spliced with the error term kept, so the forward equals the clean one (DESIGN.md):

    x'_t = x_t + sum_{i in S_t} (f'_{t,i} - f_{t,i}) W_dec[i]          # every kind's decoder is linear
    df_{t,i} = dm / df_{t,i} = W_dec[i] . dm/dx_t                       # the error term held fixed

m is the target metric (targets.py) and dm/dx the gradient at the hook, one backward pass from the hook (the
layers after it only, backend.model.forward.downstream). For the iterative encoders (sparse-coding, sae-ito) the
codes are inputs to the linear decode, so df is defined for every kind; the encoder is never differentiated.

    attribution_{t,i} = f_{t,i} * df_{t,i}        # > 0: the pair supports the target (removing it lowers m)

Zero-ablating the pair changes m by about (0 - f) * df = -attribution, so `exact effect` is reported with the same
sign: m(clean) - m(pair zero-ablated), from a forward pass with that one pair removed (Syed et al. 2023, "Attribution
patching outperforms automated circuit discovery"; Marks et al. 2024, "Sparse feature circuits", with the SAE
error term as a fixed node). Position 0 and special tokens are never edited, as in training and the interventions.

Batched ablations (`ablated_logprobs`): each row removes a weighted set of pairs, delta_t = -sum_n w_n f_n W_dec[i_n]
at the pair's position (w = 1 zero-ablates, w = eps scales the code by 1 - eps), one downstream pass per chunk of rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from backend.attribution.targets import Packed, Target, choice_logprobs, prompt_positions
from backend.model import forward, hooks
from backend.model.forward import HOOK_LOCK

BATCH_ROWS = 16  # edited rows per downstream pass: ~16 x 100 tokens keeps a CPU's caches busy without swapping


class _Captured(Exception):
    pass


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def hook_acts(model, hp: hooks.HookPoint, packed: Packed) -> torch.Tensor:
    """Hook activations [1, T, d] of the packed row (tree mask, restarting positions), forward stopped at the hook."""
    box: list[torch.Tensor] = []

    def grab(a):
        box.append(a.detach().float())
        raise _Captured

    dev = _device(model)
    with HOOK_LOCK, hooks.splice(model, hp, grab):
        try:
            model.base_model(input_ids=packed.ids[None].to(dev), attention_mask=packed.mask(model.dtype).to(dev),
                             position_ids=packed.pos[None].to(dev), use_cache=False)
        except _Captured:
            pass
    if not box:
        raise RuntimeError(f"hook {hp.name} never fired")
    return box[0]


def forward_from_hook(model, hp: hooks.HookPoint, act: torch.Tensor, packed: Packed) -> torch.Tensor:
    """Final-norm hidden states [R, T, d] with the hook activation replaced by act [R, T, d] (differentiable).

    Residual hooks of Llama/GPT-2/NeoX models run only the layers after the hook; other hooks run the full model
    with act spliced in (same result, upstream half recomputed). The caller holds HOOK_LOCK."""
    R, dev = act.shape[0], _device(model)
    mask, pos = packed.mask(model.dtype, R).to(dev), packed.pos[None].expand(R, -1).to(dev)
    if forward.downstream_supported(model, hp):
        return forward.downstream(model, hp, act.to(dev), attention_mask=mask, position_ids=pos)
    with hooks.splice(model, hp, lambda a: act.to(a.device, a.dtype)):
        return model.base_model(input_ids=packed.ids[None].expand(R, -1).to(dev), attention_mask=mask, position_ids=pos,
                                use_cache=False).last_hidden_state


@dataclass
class FeatureAttribution:
    """Every active (feature, position) of the prompt with its attribution; what ablating them needs."""

    metric: float  # m of the clean pass
    logprobs: np.ndarray  # [k] clean summed log-probability of each choice
    pos: np.ndarray  # [N] int64 position of each active pair (prompt positions only)
    feature: np.ndarray  # [N] int64
    act: np.ndarray  # [N] float32 code f
    grad: np.ndarray  # [N] float32 dm/df
    attribution: np.ndarray  # [N] float32 f * dm/df
    x: torch.Tensor  # [1, T, d] clean hook activations (float32, model device)
    contrib: torch.Tensor  # [N, d] f * W_dec[feature]: what zero-ablating the pair subtracts at its position

    @property
    def n_pairs(self) -> int:
        return len(self.feature)


def attribute_features(lm, dictionary, hp: hooks.HookPoint, packed: Packed, target: Target,
                       special_ids: set[int]) -> FeatureAttribution:
    """Attribution patching of every active pair at the prompt's positions: one upstream pass to the hook, one
    downstream pass with its backward (the gradient at the hook), one encode."""
    model = lm.model
    x = hook_acts(model, hp, packed)  # [1, T, d]
    leaf = x.clone().requires_grad_(True)
    with HOOK_LOCK, torch.enable_grad():
        L = choice_logprobs(model, forward_from_hook(model, hp, leaf, packed), packed)  # [1, k]
        m = target.metric(L)[0]
        (grad,) = torch.autograd.grad(m, leaf)
    where = prompt_positions(packed, special_ids).nonzero()[:, 0]  # [P'] attributed positions
    ddev = dictionary.W_dec.device
    with torch.no_grad():
        f = dictionary.encode(x[0, where].to(ddev)).float()  # [P', d_sae]
        row, feat = f.nonzero(as_tuple=True)  # [N] pairs, position-major
        act = f[row, feat]
        W = dictionary.W_dec.detach()[feat].float()  # [N, d]
        g = (grad[0, where].to(ddev)[row] * W).sum(-1)  # [N] dm/df = W_dec[i] . dm/dx_t
    return FeatureAttribution(
        metric=float(m.detach()), logprobs=L.detach()[0].double().cpu().numpy(),
        pos=where[row.cpu()].numpy().astype(np.int64), feature=feat.cpu().numpy().astype(np.int64),
        act=act.cpu().numpy().astype(np.float32), grad=g.cpu().numpy().astype(np.float32),
        attribution=(act * g).cpu().numpy().astype(np.float32), x=x, contrib=(act[:, None] * W).to(x.device))


def removal_deltas(fa: FeatureAttribution, T: int, weights: torch.Tensor) -> torch.Tensor:
    """[R, T, d] changes at the hook: row r removes w[r, n] of pair n's contribution (weights [R, N])."""
    R, d = weights.shape[0], fa.contrib.shape[1]
    delta = torch.zeros(R, T, d, device=fa.contrib.device)
    if fa.n_pairs == 0:
        return delta
    pos = torch.as_tensor(fa.pos, device=fa.contrib.device)
    w = weights.to(fa.contrib.device, torch.float32)
    for t in torch.unique(pos).tolist():  # one small matmul per position: [R, n_t] @ [n_t, d]
        idx = (pos == t).nonzero()[:, 0]
        delta[:, t] = -(w[:, idx] @ fa.contrib[idx])
    return delta


@torch.no_grad()
def ablated_logprobs(lm, hp: hooks.HookPoint, packed: Packed, fa: FeatureAttribution, weights: torch.Tensor,
                     batch_rows: int = BATCH_ROWS) -> np.ndarray:
    """Summed choice log-probabilities [R, k] with each row's weighted pairs removed (error term kept)."""
    out = []
    for start in range(0, weights.shape[0], batch_rows):
        delta = removal_deltas(fa, packed.T, weights[start:start + batch_rows])
        with HOOK_LOCK:
            h = forward_from_hook(lm.model, hp, fa.x + delta, packed)
            out.append(choice_logprobs(lm.model, h, packed).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, packed.n_choices))


def selection_weights(n_pairs: int, rows: list[np.ndarray], value: float = 1.0) -> torch.Tensor:
    """[R, N] weights: `value` on the pair indices of each row, 0 elsewhere."""
    w = torch.zeros(len(rows), n_pairs)
    for r, idx in enumerate(rows):
        w[r, torch.as_tensor(np.asarray(idx, dtype=np.int64))] = value
    return w


def exact_effects(lm, hp: hooks.HookPoint, packed: Packed, target: Target, fa: FeatureAttribution, pairs: np.ndarray,
                  scale: float = 0.0, batch_rows: int = BATCH_ROWS) -> np.ndarray:
    """[len(pairs)] m(clean) - m(edited), each pair's code multiplied by `scale` alone (0: zero-ablation).

    Every pass carries an unedited row first and the effect is taken against it, so batch-size-dependent
    rounding cancels (small edits change m by ~1e-4)."""
    out = []
    per = max(1, batch_rows - 1)
    for start in range(0, len(pairs), per):
        chunk = [np.array([], dtype=np.int64)] + [np.array([p]) for p in pairs[start:start + per]]
        w = selection_weights(fa.n_pairs, chunk, value=1.0 - scale)
        m = target.metric(torch.from_numpy(ablated_logprobs(lm, hp, packed, fa, w, batch_rows=len(chunk)))).numpy()
        out.append(m[0] - m[1:])
    return np.concatenate(out) if out else np.zeros(0)
