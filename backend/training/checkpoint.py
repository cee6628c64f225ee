"""Training checkpoints that load without running code: tensors in safetensors, everything else in JSON.

A pickle (`torch.save`/`torch.load(weights_only=False)`) can run any code when it is loaded, and a
checkpoint sits in a run folder that may come from someone else. So a checkpoint is one
`checkpoint.safetensors`: the tensors (the dictionary's parameters under `model.`, the optimizer's
per-parameter state under `optimizer.<param index>.<key>`, and the other tensors by name) plus a JSON
document in the file's metadata (`state`: numbers, strings and lists: the step, the scale, the config,
the optimizer's param_groups). Loading parses JSON and copies tensors, nothing else.

A `checkpoint.pt` written by an older version is read with `torch.load(weights_only=True)`, which
accepts tensors and plain containers only and refuses anything that would import or call code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from backend.common.atomic import atomic_path
from backend.common.errors import UserError, first_line

CHECKPOINT = "checkpoint.safetensors"
LEGACY_CHECKPOINT = "checkpoint.pt"
STATE_KEY = "state"


def flatten(model: dict, optimizer: dict, tensors: dict[str, torch.Tensor], state: dict) -> tuple[dict, dict]:
    """(tensors, JSON state) of a model state_dict, an optimizer state_dict, other named tensors and plain state."""
    flat = {f"model.{k}": v for k, v in model.items()}
    flat.update(tensors)
    plain_opt: dict = {}
    for idx, per_param in optimizer["state"].items():
        for key, v in per_param.items():
            if isinstance(v, torch.Tensor):
                flat[f"optimizer.{idx}.{key}"] = v
            else:
                plain_opt.setdefault(str(idx), {})[key] = v
    state = {**state, "optimizer_param_groups": optimizer["param_groups"], "optimizer_plain": plain_opt}
    return {k: v.detach().to("cpu").contiguous() for k, v in flat.items()}, state


def unflatten(tensors: dict[str, torch.Tensor], state: dict) -> tuple[dict, dict, dict]:
    """(model state_dict, optimizer state_dict, the other tensors) from what `flatten` made."""
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    per_param: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optimizer."):
            _, idx, key = k.split(".", 2)
            per_param.setdefault(int(idx), {})[key] = v
    for idx, plain in state.get("optimizer_plain", {}).items():
        per_param.setdefault(int(idx), {}).update(plain)
    groups = state["optimizer_param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    other = {k: v for k, v in tensors.items() if not k.startswith(("model.", "optimizer."))}
    return model, {"state": per_param, "param_groups": groups}, other


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], state: dict) -> Path:
    """Write tensors + JSON state atomically to `path` (a .safetensors file)."""
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={STATE_KEY: json.dumps(state)})
    return path


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, state) of a checkpoint written by `save_checkpoint`; any damage is a one-line UserError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        state = json.loads(meta[STATE_KEY])
        tensors = load_file(str(path), device=str(device))
    except KeyError:
        raise UserError(f"cannot read checkpoint {path}: it has no training state") from None
    except Exception as e:  # safetensors and json raise their own types for a damaged file
        raise UserError(f"cannot read checkpoint {path}: {first_line(e)}") from None
    if not isinstance(state, dict):
        raise UserError(f"cannot read checkpoint {path}: its training state is not a JSON object")
    return tensors, state


def load_legacy_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, state) of an older `checkpoint.pt`, unpickled with weights_only=True (no code runs)."""
    try:
        old = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # UnpicklingError for a pickle that asks for code, other types for damage
        raise UserError(f"refused to load checkpoint {path}: it holds more than tensors and numbers (a pickle that "
                        f"could run code, or a damaged file: {type(e).__name__}); delete it to train from the start") from None
    if not isinstance(old, dict) or "model" not in old or "optimizer" not in old:
        raise UserError(f"cannot read checkpoint {path}: not a training checkpoint; delete it to train from the start")
    tensors = {k: old[k] for k in ("tokens_since_fired",) if isinstance(old.get(k), torch.Tensor)}
    plain = {k: v for k, v in old.items() if k not in ("model", "optimizer", "tokens_since_fired")}
    return flatten(old["model"], old["optimizer"], tensors, plain)
