"""Forward passes on a shared model: the one lock, and running only the layers after a hook point.

    full model:  ids -> embeddings -> blocks[0 .. n) -> final norm -> lm_head -> logits
    downstream:  act [B, T, d_model] at the hook -> blocks[start .. n) -> final norm -> lm_head
                 start = L for blocks.L.hook_resid_pre, L + 1 for blocks.L.hook_resid_post

A run caches the hook activation of every context, so an intervention on a context already in the
run needs only the downstream half of the model (layer 15 of 30 in the demo: half the FLOPs). The
downstream pass rebuilds what the model's own forward gives each block, as transformers 5.x builds
it for Llama-, GPT-2- and GPT-NeoX-style models: position ids (offset by what a KV cache already
holds), the causal mask (`masking_utils.create_causal_mask`, sized against the first downstream
layer's cache), rotary embeddings (Llama, NeoX; GPT-2 added its position embeddings before block 0).
Any other architecture or hook (mlp_out, attn_out) is `downstream_supported() == False`: callers then
run the full model with `hooks.splice` (same logits, upstream half recomputed).

`HOOK_LOCK` serialises every forward pass on a model shared between threads (the explorer serves
all sessions from one cached model): hooks are global state on the module, so two threads hooking
it at once would each see the other's edits. Re-entrant, so a pass may call another inside it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import nn

from backend.model.hooks import HookPoint, decoder_layers

HOOK_LOCK = threading.RLock()

# model_type -> (base model attribute, final norm attribute, rotary embedding attribute or None)
STYLES = {
    "llama": ("model", "norm", "rotary_emb"),
    "gpt2": ("transformer", "ln_f", None),
    "gpt_neox": ("gpt_neox", "final_layer_norm", "rotary_emb"),
}


@dataclass(frozen=True)
class _Stack:
    style: str
    layers: nn.ModuleList
    norm: nn.Module
    rotary: nn.Module | None


def _stack(model: nn.Module) -> _Stack | None:
    style = getattr(model.config, "model_type", "")
    if style not in STYLES:
        return None
    base_name, norm_name, rotary_name = STYLES[style]
    base = getattr(model, base_name, None)
    norm = getattr(base, norm_name, None)
    rotary = getattr(base, rotary_name, None) if rotary_name else None
    if base is None or norm is None or (rotary_name and rotary is None):
        return None
    return _Stack(style, decoder_layers(model), norm, rotary)


def first_downstream_layer(hp: HookPoint) -> int:
    """Index of the first block that runs after the hook."""
    return hp.layer + (1 if hp.kind == "resid_post" else 0)


def downstream_supported(model: nn.Module, hp: HookPoint) -> bool:
    """True when `run_downstream` can start at `hp` (a residual hook of a Llama/GPT-2/NeoX-style model)."""
    return hp.kind in ("resid_pre", "resid_post") and _stack(model) is not None


def new_cache(model: nn.Module):
    """An empty KV cache for `model` (only the downstream layers get filled by `run_downstream`)."""
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _call_block(st: _Stack, block: nn.Module, h, mask, pos, pe, cache):
    if st.style == "gpt2":
        return block(h, cache, mask, None, use_cache=cache is not None, position_ids=pos)
    if st.style == "gpt_neox":
        return block(h, attention_mask=mask, position_ids=pos, layer_past=cache, use_cache=cache is not None,
                     position_embeddings=pe)
    return block(h, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=cache is not None,
                 position_embeddings=pe)


@torch.no_grad()
def run_downstream(model: nn.Module, hp: HookPoint, act: torch.Tensor, cache=None) -> torch.Tensor:
    """Final-norm hidden states [B, T, d_model] from the hook activation act [B, T, d_model].

    With `cache` (from `new_cache`, filled by earlier calls), act holds the positions after the ones the
    cache holds and the blocks attend to the cached keys and values; the cache is extended in place.
    Apply `unembed` to the result (or to the positions you need) for logits.
    """
    return downstream_hidden(model, hp, act, cache)


def downstream_hidden(model: nn.Module, hp: HookPoint, act: torch.Tensor, cache=None) -> torch.Tensor:
    """`run_downstream` under the caller's grad mode: with act requiring grad, gradients flow back through the
    (frozen) layers into act, as anchored training needs (backend/training/anchored.py)."""
    st = _stack(model)
    if st is None or hp.kind not in ("resid_pre", "resid_post"):
        raise ValueError(f"no downstream pass for {hp.name} on {type(model).__name__}: use hooks.splice")
    from transformers.masking_utils import create_causal_mask

    start, n = first_downstream_layer(hp), len(st.layers)
    h = act.to(next(model.parameters()).dtype)
    if start < n:
        past = cache.get_seq_length(start) if cache is not None else 0
        pos = torch.arange(past, past + h.shape[1], device=h.device).unsqueeze(0)  # [1, T]
        mask = create_causal_mask(config=model.config, inputs_embeds=h, attention_mask=None, past_key_values=cache,
                                  position_ids=pos, layer_idx=start)
        pe = st.rotary(h, position_ids=pos) if st.rotary is not None else None
        for block in st.layers[start:]:
            h = _call_block(st, block, h, mask, pos, pe, cache)
    return st.norm(h)


def unembed(model: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Logits [..., vocab] of final-norm hidden states h [..., d_model]."""
    return model.get_output_embeddings()(h)


def prefix_cache(model: nn.Module, hp: HookPoint, cache, stop: int, repeats: int = 1, rows: torch.Tensor | None = None):
    """A new cache with the first `stop` positions of `cache`'s downstream layers, for batch rows `rows` (default
    all, in order), each repeated `repeats` times (rows b*repeats .. b*repeats + repeats - 1 continue row b):
    edited passes then continue from one clean prefix."""
    out = new_cache(model)
    for i in range(first_downstream_layer(hp), len(decoder_layers(model))):
        layer = cache.layers[i]
        k, v = layer.keys[:, :, :stop], layer.values[:, :, :stop]  # [B, heads, stop, head_dim]
        if rows is not None:
            k, v = k[rows], v[rows]
        if repeats > 1:
            k, v = k.repeat_interleave(repeats, 0), v.repeat_interleave(repeats, 0)
        out.update(k, v, i)
    return out
