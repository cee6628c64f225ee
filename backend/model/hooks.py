"""Hook points named as TransformerLens names them, attached as forward hooks on HF modules.

    blocks.{L}.hook_resid_pre   # [B, T, d_model] input of decoder layer L
    blocks.{L}.hook_resid_post  # [B, T, d_model] output of decoder layer L
    blocks.{L}.hook_mlp_out     # [B, T, d_model] output of layer L's MLP
    blocks.{L}.hook_attn_out    # [B, T, d_model] output of layer L's attention (after o_proj)

Hooks are global state on the module, so they live only inside context managers.
`capture` stops the forward pass right after the hooked module (raising `_StopForward`),
so caching layer 15 of a 30-layer model runs half the model.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from backend.common.errors import UserError

HOOK_RE = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_post|hook_mlp_out|hook_attn_out)$")


@dataclass(frozen=True)
class HookPoint:
    layer: int
    kind: str  # resid_pre | resid_post | mlp_out | attn_out

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.hook_{self.kind}"


def parse_hook(name: str, n_layers: int | None = None) -> HookPoint:
    m = HOOK_RE.match(name or "")
    if not m:
        raise UserError(
            f"unknown hook name {name!r}: expected blocks.<L>.hook_resid_pre|hook_resid_post|hook_mlp_out|hook_attn_out"
        )
    hp = HookPoint(int(m.group(1)), m.group(2)[len("hook_"):])
    if n_layers is not None and not 0 <= hp.layer < n_layers:
        raise UserError(f"layer {hp.layer} out of range: the model has layers 0..{n_layers - 1}")
    return hp


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of transformer blocks of a Llama-, GPT-2- or GPT-NeoX-style model."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise UserError(f"unsupported architecture {type(model).__name__}: no decoder layer list found")


def n_layers(model: torch.nn.Module) -> int:
    return len(decoder_layers(model))


def _submodule(block: torch.nn.Module, kind: str) -> torch.nn.Module:
    names = {"mlp_out": ("mlp",), "attn_out": ("self_attn", "attn", "attention")}[kind]
    for n in names:
        if hasattr(block, n):
            return getattr(block, n)
    raise UserError(f"block {type(block).__name__} has no {kind} submodule")


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _replace_first(out, new):
    return (new, *out[1:]) if isinstance(out, tuple) else new


class _StopForward(Exception):
    pass


@contextlib.contextmanager
def _hooked(model: torch.nn.Module, hp: HookPoint, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
    """Run `fn(act)` at the hook point; a non-None return replaces the activation."""
    block = decoder_layers(model)[hp.layer]
    if hp.kind == "resid_pre":
        def pre(_mod, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            new = fn(hidden)
            if new is None:
                return None
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}
        handle = block.register_forward_pre_hook(pre, with_kwargs=True)
    else:
        module = block if hp.kind == "resid_post" else _submodule(block, hp.kind)

        def post(_mod, _args, out):
            new = fn(_first(out))
            return None if new is None else _replace_first(out, new)
        handle = module.register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def capture(model: torch.nn.Module, hp: HookPoint, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Activations [B, T, d_model] at `hp`, running the model only up to the hooked module."""
    box: list[torch.Tensor] = []

    def grab(act):
        box.append(act)
        raise _StopForward

    with _hooked(model, hp, grab):
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
    if not box:
        raise RuntimeError(f"hook {hp.name} never fired")
    return box[0]


@contextlib.contextmanager
def splice(model: torch.nn.Module, hp: HookPoint, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within the block, the activation at `hp` is replaced by `fn(act)` (e.g. an SAE reconstruction)."""
    with _hooked(model, hp, fn):
        yield
