"""The engine: clean and edited passes of a batch of sequences, and what changed at chosen positions.

    act    [B, T, d]  hook activations (cached in the run, or captured by an upstream pass for new text)
    delta  [T', d]    x' - x of one edit of one sequence, from `edits.edit_delta`, from its first change on

Residual hooks of Llama/GPT-2/NeoX models run only the layers after the hook (`backend.model.forward`):
one clean pass per sequence fills a KV cache, and each edit of it runs again only from the first position
it changes (causal attention: an edit cannot change what comes before it), from that cache. Other hooks
run the full model with the change spliced in by a hook. Every pass takes `HOOK_LOCK`.

Per kept position (reduce_logits), with p = softmax(clean logits), q = softmax(edited logits), y the
actual next token: loss change = -log q_y + log p_y (nats; > 0 = the model got worse), KL(p || q),
the tokens whose logit rose or fell most, and those whose probability rose or fell most.
"""

from __future__ import annotations

import numpy as np
import torch

from backend.model import forward, hooks
from backend.model.forward import HOOK_LOCK

N_TOKENS = 5  # promoted / suppressed tokens reported per position
N_DIST = 10  # tokens of the clean and edited next-token distributions reported per position


@torch.no_grad()
def capture_acts(model, hp: hooks.HookPoint, ids: torch.Tensor) -> torch.Tensor:
    """Hook activations [B, T, d] of token ids [B, T]: the upstream pass, stopped after the hook."""
    with HOOK_LOCK:
        return hooks.capture(model, hp, ids).float()


def _device(model) -> torch.device:
    return next(model.parameters()).device


def first_changed(delta: torch.Tensor) -> torch.Tensor:
    """[B] int64: the first position each row's delta [B, T, d] changes (T when it changes nothing)."""
    changed = delta.abs().amax(-1) > 0  # [B, T]
    T = delta.shape[1]
    idx = torch.where(changed, torch.arange(T, device=delta.device), T)
    return idx.amin(1)


@torch.no_grad()
def clean_pass(model, hp: hooks.HookPoint, act: torch.Tensor):
    """(final-norm hidden [B, T, d], KV cache of the downstream layers) of hook activations act [B, T, d]."""
    cache = forward.new_cache(model)
    with HOOK_LOCK:
        h = forward.run_downstream(model, hp, act.float().to(_device(model)), cache)
    return h, cache


@torch.no_grad()
def edited_pass(model, hp: hooks.HookPoint, cache, rows: torch.Tensor, start: int, act: torch.Tensor) -> torch.Tensor:
    """Final-norm hidden [G, T', d] of batch rows `rows` continued from the clean cache's first `start` positions
    with the (edited) hook activations act [G, T', d] of positions start .. start + T' - 1."""
    with HOOK_LOCK:
        prefix = forward.prefix_cache(model, hp, cache, start, rows=rows.to(_device(model)))
        return forward.run_downstream(model, hp, act.float().to(_device(model)), prefix)


@torch.no_grad()
def full_logits(model, hp: hooks.HookPoint, ids: torch.Tensor, delta: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [B, T, V] of the full model, with delta [B, T, d] added at the hook (the fallback for hooks and
    architectures without a downstream pass)."""
    ids = ids.to(_device(model))
    with HOOK_LOCK:
        if delta is None:
            return model(input_ids=ids, use_cache=False).logits
        with hooks.splice(model, hp, lambda a: a + delta.to(a.device, a.dtype)):
            return model(input_ids=ids, use_cache=False).logits


def next_targets(ids: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """[K] the token after each kept position of a sequence ids [T] (-1 after the last one)."""
    nxt = keep + 1
    return np.where(nxt < len(ids), ids[np.minimum(nxt, len(ids) - 1)], -1).astype(np.int64)


@torch.no_grad()
def reduce_logits(clean: torch.Tensor, edited: torch.Tensor, changed: torch.Tensor, targets: torch.Tensor,
                  n_tokens: int = N_TOKENS, n_dist: int = N_DIST) -> dict[str, np.ndarray]:
    """What changed at P positions: clean logits [P, V], edited logits [M, V] of the `changed` [P] bool positions
    (elsewhere edited = clean), next tokens targets [P] (-1: none) -> arrays [P, ...]. Unchanged positions get
    loss change 0, KL 0, promoted/suppressed ids -1 with values 0, and the clean distribution twice."""
    dev = clean.device
    changed, targets = changed.to(dev), targets.to(dev)
    P, M = clean.shape[0], int(changed.sum())
    lp_c = torch.log_softmax(clean.float(), -1)
    has = targets >= 0
    t = targets.clamp_min(0)[:, None]
    nan = torch.tensor(float("nan"), device=dev)
    loss_c = torch.where(has, -lp_c.gather(-1, t)[:, 0], nan)
    top = lp_c.topk(n_dist, -1)
    out = {"loss_clean": loss_c, "loss_edited": loss_c.clone(), "loss_change": torch.where(has, 0.0, nan),
           "kl": torch.zeros(P, device=dev), "top_clean_ids": top.indices, "top_clean_probs": top.values.exp(),
           "top_edited_ids": top.indices.clone(), "top_edited_probs": top.values.exp()}
    for name in ("promoted_logit", "suppressed_logit", "promoted_prob", "suppressed_prob"):
        out[f"{name}_ids"] = torch.full((P, n_tokens), -1, dtype=torch.long, device=dev)
        out[f"{name}_values"] = torch.zeros(P, n_tokens, device=dev)
    if M:
        lc = lp_c[changed]  # [M, V]
        le = torch.log_softmax(edited.float(), -1)
        loss_e = torch.where(has[changed], -le.gather(-1, t[changed])[:, 0], nan)
        out["loss_edited"][changed] = loss_e
        out["loss_change"][changed] = loss_e - loss_c[changed]
        pc, pe = lc.exp(), le.exp()
        out["kl"][changed] = (pc * (lc - le)).sum(-1).clamp_min(0.0)
        for name, diff in (("logit", edited.float() - clean[changed].float()), ("prob", pe - pc)):
            up, down = diff.topk(n_tokens, -1), diff.topk(n_tokens, -1, largest=False)  # most negative first
            out[f"promoted_{name}_ids"][changed], out[f"promoted_{name}_values"][changed] = up.indices, up.values
            out[f"suppressed_{name}_ids"][changed], out[f"suppressed_{name}_values"][changed] = down.indices, down.values
        te = le.topk(n_dist, -1)
        out["top_edited_ids"][changed], out["top_edited_probs"][changed] = te.indices, te.values.exp()
    return {k: v.cpu().numpy() for k, v in out.items()}


@torch.no_grad()
def reduce_losses(clean: torch.Tensor, edited: torch.Tensor, changed: torch.Tensor, targets: torch.Tensor) -> dict[str, np.ndarray]:
    """Only loss_clean, loss_edited, loss_change and kl of `reduce_logits` (the per-feature effects table needs no
    more): a third of its time."""
    dev = clean.device
    changed, targets = changed.to(dev), targets.to(dev)
    lp_c = torch.log_softmax(clean.float(), -1)
    has = targets >= 0
    t = targets.clamp_min(0)[:, None]
    nan = torch.tensor(float("nan"), device=dev)
    loss_c = torch.where(has, -lp_c.gather(-1, t)[:, 0], nan)
    out = {"loss_clean": loss_c, "loss_edited": loss_c.clone(), "loss_change": torch.where(has, 0.0, nan),
           "kl": torch.zeros(clean.shape[0], device=dev)}
    if int(changed.sum()):
        lc, le = lp_c[changed], torch.log_softmax(edited.float(), -1)
        loss_e = torch.where(has[changed], -le.gather(-1, t[changed])[:, 0], nan)
        out["loss_edited"][changed] = loss_e
        out["loss_change"][changed] = loss_e - loss_c[changed]
        out["kl"][changed] = (lc.exp() * (lc - le)).sum(-1).clamp_min(0.0)
    return {k: v.cpu().numpy() for k, v in out.items()}
