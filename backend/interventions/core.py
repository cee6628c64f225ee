"""The engine: clean and edited passes of a batch of sequences, and what changed at chosen positions.

    act    [B, T, d]  hook activations (cached in the run, or captured by an upstream pass for new text)
    delta  [B, T, d]  x' - x from `edits.edit_delta`
    keep   [B, K]     positions whose next-token predictions are compared

Residual hooks of Llama/GPT-2/NeoX models run only the layers after the hook (`backend.model.forward`),
and only once for the positions before the first one the edit changes: the clean pass over that prefix
fills a KV cache that the clean and the edited rows of the rest then share (causal attention: an edit
cannot change what comes before it). Other hooks run the full model with the change spliced in by a
hook. Every pass takes `HOOK_LOCK`.

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
FALLBACK_LOGITS = 1 << 26  # full-forward fallback: rows per chunk so that a chunk's logits stay <= 256 MiB


@torch.no_grad()
def capture_acts(model, hp: hooks.HookPoint, ids: torch.Tensor) -> torch.Tensor:
    """Hook activations [B, T, d] of token ids [B, T]: the upstream pass, stopped after the hook."""
    with HOOK_LOCK:
        return hooks.capture(model, hp, ids).float()


def first_changed(delta: torch.Tensor) -> torch.Tensor:
    """[B] int64: the first position each row's delta [B, T, d] changes (T when it changes nothing)."""
    changed = delta.abs().amax(-1) > 0  # [B, T]
    T = delta.shape[1]
    idx = torch.where(changed, torch.arange(T, device=delta.device), T)
    return idx.amin(1)


def _gather(h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return h.gather(1, keep[..., None].expand(-1, -1, h.shape[-1]))  # [B, K, d]


@torch.no_grad()
def _paired_downstream(model, hp, act, delta) -> tuple[torch.Tensor, torch.Tensor]:
    """Final-norm hidden states (clean, edited), each [B, T, d], sharing the clean prefix."""
    B, T, _ = act.shape
    s = int(first_changed(delta).min())
    if s >= T:
        h = forward.run_downstream(model, hp, act)
        return h, h
    if s == 0:
        h = forward.run_downstream(model, hp, torch.cat([act, act + delta]))
        return h[:B], h[B:]
    cache = forward.new_cache(model)
    head = forward.run_downstream(model, hp, act[:, :s], cache)  # [B, s, d]
    shared = forward.prefix_cache(model, hp, cache, s, repeats=2)
    pair = torch.stack([act[:, s:], act[:, s:] + delta[:, s:]], 1).flatten(0, 1)  # [2B, T-s, d]: clean, edited, ...
    tail = forward.run_downstream(model, hp, pair, shared).unflatten(0, (B, 2))
    return torch.cat([head, tail[:, 0]], 1), torch.cat([head, tail[:, 1]], 1)


@torch.no_grad()
def paired_logits(model, hp: hooks.HookPoint, act: torch.Tensor, ids: torch.Tensor, delta: torch.Tensor,
                  keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, edited) logits [B, K, vocab] at positions keep [B, K] of act [B, T, d] + delta."""
    act = act.float()
    if forward.downstream_supported(model, hp):
        with HOOK_LOCK:
            clean, edited = _paired_downstream(model, hp, act, delta)
        return forward.unembed(model, _gather(clean, keep)), forward.unembed(model, _gather(edited, keep))
    B, T = ids.shape
    rows = max(1, FALLBACK_LOGITS // max(1, T * model.config.vocab_size))
    outs_c, outs_e = [], []
    for i in range(0, B, rows):
        sl = slice(i, i + rows)
        d = delta[sl]
        with HOOK_LOCK:
            clean = model(input_ids=ids[sl], use_cache=False).logits
            with hooks.splice(model, hp, lambda a, d=d: a + d.to(a.dtype)):
                edited = model(input_ids=ids[sl], use_cache=False).logits
        outs_c.append(_gather(clean, keep[sl]))
        outs_e.append(_gather(edited, keep[sl]))
    return torch.cat(outs_c), torch.cat(outs_e)


def next_targets(ids: torch.Tensor, keep: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """[B, K] the token after each kept position (-1 past the end of the row, whose true length is `lengths`)."""
    T = ids.shape[1]
    n = lengths if lengths is not None else torch.full((ids.shape[0],), T)
    nxt = keep + 1
    ok = nxt < n[:, None]
    return torch.where(ok, ids.gather(1, nxt.clamp_max(T - 1)), -1)


@torch.no_grad()
def reduce_logits(clean: torch.Tensor, edited: torch.Tensor, targets: torch.Tensor, n_tokens: int = N_TOKENS,
                  n_dist: int = N_DIST) -> dict[str, np.ndarray]:
    """What changed at each position: logits [B, K, V] and targets [B, K] (-1: no next token) -> arrays [B, K, ...]."""
    lp_c = torch.log_softmax(clean.float(), -1)
    lp_e = torch.log_softmax(edited.float(), -1)
    has = targets >= 0
    t = targets.clamp_min(0)[..., None]
    nan = torch.tensor(float("nan"))
    loss_c = torch.where(has, -lp_c.gather(-1, t)[..., 0], nan)
    loss_e = torch.where(has, -lp_e.gather(-1, t)[..., 0], nan)
    p_c, p_e = lp_c.exp(), lp_e.exp()
    kl = (p_c * (lp_c - lp_e)).sum(-1).clamp_min(0.0)
    dlogit = (edited - clean).float()
    dprob = p_e - p_c
    out = {"loss_clean": loss_c, "loss_edited": loss_e, "loss_change": loss_e - loss_c, "kl": kl}
    for name, diff in (("logit", dlogit), ("prob", dprob)):
        up = diff.topk(n_tokens, -1)
        down = (-diff).topk(n_tokens, -1)
        out[f"promoted_{name}_ids"], out[f"promoted_{name}_values"] = up.indices, up.values
        out[f"suppressed_{name}_ids"], out[f"suppressed_{name}_values"] = down.indices, -down.values
    for name, p in (("clean", p_c), ("edited", p_e)):
        top = p.topk(n_dist, -1)
        out[f"top_{name}_ids"], out[f"top_{name}_probs"] = top.indices, top.values
    return {k: v.cpu().numpy() for k, v in out.items()}
