"""Dictionary folders in the SAELens layout: `cfg.json` + `sae_weights.safetensors`.

Our folders add `kind` (the class in `KINDS`) and training fields to cfg.json; plain SAELens
folders (architecture `standard`, `jumprelu` with a `threshold` tensor, `topk` with `k`) load
too. On load the decoder rows are made unit norm (the norms are folded into the encoder, so
x_hat is unchanged and latents are in "length along a unit direction" units), as the rest of
the explorer assumes; a TopK SAE keeps its norms unless SAELens trained it with
`rescale_acts_by_decoder_norm` (folding would change which latents win the top-k).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from backend.common.atomic import atomic_path
from backend.common.errors import UserError, first_line
from backend.common.layout import CFG_JSON, WEIGHTS
from backend.dictionaries.base import ARCHITECTURES, KINDS, Dictionary, register_kind
from backend.dictionaries.relu_l1 import ReluL1SAE

SAELENS_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")


class JumpReluSAE(ReluL1SAE):
    """SAELens "jumprelu" (inference only): f = ReLU(pre) * (pre > threshold), threshold [d_sae]."""

    kind = "saelens-jumprelu"
    architecture = "jumprelu"

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.threshold = torch.nn.Parameter(torch.zeros(self.d_sae))

    def encode(self, x):
        pre = torch.addmm(self.b_enc, x - self.b_dec, self.W_enc)
        return torch.relu(pre) * (pre > self.threshold)

    @torch.no_grad()
    def fold_decoder_norms_(self):
        n = super().fold_decoder_norms_()
        self.threshold.mul_(n)
        return n

    @torch.no_grad()
    def fold_scale_(self, scale: float) -> None:
        super().fold_scale_(scale)
        self.threshold.div_(scale)


class TopKSAE(ReluL1SAE):
    """SAELens "topk" (inference only): keep the k largest pre-activations of each token, then ReLU."""

    kind = "saelens-topk"
    architecture = "topk"

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.k = int(cfg.get("k") or 0)
        if self.k <= 0:
            raise ValueError("topk cfg.json lacks a positive `k`")

    def encode(self, x):
        pre = torch.addmm(self.b_enc, x - self.b_dec, self.W_enc)
        v, i = pre.topk(min(self.k, self.d_sae), dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, i, v.relu())

    def flops_per_token(self):
        fl = super().flops_per_token()
        fl["decode"] = 2 * self.k * self.d_in + self.d_in
        return fl


for _cls in (JumpReluSAE, TopKSAE):
    register_kind(_cls)


def read_cfg(folder: str | Path) -> dict:
    folder = Path(folder)
    p = folder / CFG_JSON
    if not p.is_file():
        raise UserError(f"{folder} is not a dictionary folder (no {CFG_JSON})")
    try:
        cfg = json.loads(p.read_text())
    except ValueError as e:
        raise UserError(f"{p} is not valid JSON: {first_line(e)}") from None
    if not isinstance(cfg, dict) or "d_in" not in cfg or "d_sae" not in cfg:
        raise UserError(f"{p} lacks d_in/d_sae: not a SAELens cfg.json")
    return cfg


def hook_name(cfg: dict) -> str | None:
    """The hook a cfg.json was trained on (SAELens 6 keeps it in metadata, older versions at top level)."""
    return (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name")


def model_name(cfg: dict) -> str | None:
    return (cfg.get("metadata") or {}).get("model_name") or cfg.get("model_name")


def dictionary_class(cfg: dict) -> type[Dictionary]:
    kind = cfg.get("kind")
    if kind:
        if kind not in KINDS:
            raise UserError(f"unknown dictionary kind {kind!r}; known: {', '.join(sorted(KINDS))}")
        return KINDS[kind]
    arch = cfg.get("architecture", "standard")
    if arch not in ARCHITECTURES:
        raise UserError(f"unsupported SAELens architecture {arch!r}; supported: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[arch]


def load_dictionary(folder: str | Path, device: str | torch.device = "cpu") -> Dictionary:
    """Load one of our dictionary folders or a plain SAELens folder, in eval mode, float32."""
    folder = Path(folder)
    cfg = read_cfg(folder)
    cls = dictionary_class(cfg)
    norm = cfg.get("normalize_activations") or "none"
    if norm not in ("none", "expected_average_only_in"):
        raise UserError(f"{folder}: normalize_activations={norm!r} is not supported (only 'none' or a folded scale)")
    if not (cfg.get("apply_b_dec_to_input", True)):
        raise UserError(f"{folder}: apply_b_dec_to_input=false is not supported")
    wpath = folder / WEIGHTS
    if not wpath.is_file():
        raise UserError(f"{folder} has no {WEIGHTS}")
    try:
        tensors = load_file(str(wpath))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise UserError(f"cannot read {wpath}: {first_line(e)}") from None
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"{wpath}: non-finite weights ({', '.join(bad)}); a dictionary trained on NaN is unusable, "
                        "train it again")
    if "threshold" not in tensors and "log_threshold" in tensors:  # older SAELens JumpReLU checkpoints
        tensors["threshold"] = tensors["log_threshold"].float().exp()
    try:
        d = cls.from_tensors(cfg, tensors)
    except (KeyError, RuntimeError, ValueError) as e:
        raise UserError(f"{wpath} does not match cfg.json ({cls.architecture}): {first_line(e)}") from None
    if norm == "expected_average_only_in":
        s = cfg.get("norm_scaling_factor") or cfg.get("activation_scale")
        if s is None:
            raise UserError(f"{folder}: normalize_activations='expected_average_only_in' without a scaling factor")
        d.fold_scale_(float(s))  # SAELens' factor multiplies the input, as ours does
        d.cfg["normalize_activations"] = "none"
    if not cfg.get("kind"):
        # a plain SAELens folder: give it unit-norm decoder rows (x_hat unchanged)
        if not isinstance(d, TopKSAE) or cfg.get("rescale_acts_by_decoder_norm"):
            d.fold_decoder_norms_()
        d.cfg["kind"] = cls.kind
    return d.to(device).eval()


def saelens_cfg(d: Dictionary, hook: str | None = None, model: str | None = None, **extra) -> dict:
    """cfg.json content: SAELens fields first, then `kind` and whatever else the caller adds."""
    cfg = dict(d.cfg)
    meta = dict(cfg.get("metadata") or {})
    if hook is not None:
        meta["hook_name"] = hook
    if model is not None:
        meta["model_name"] = model
    out = {
        "architecture": d.architecture,
        "d_in": d.d_in,
        "d_sae": d.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": meta,
        "kind": d.kind,
    }
    for k, v in cfg.items():
        if k not in out:
            out[k] = v
    out.update(extra)
    return out


def write_dictionary_files(d: Dictionary, folder: str | Path, cfg: dict | None = None) -> None:
    """Write cfg.json + sae_weights.safetensors into an existing folder (not atomic: see save_dictionary).
    A NaN or infinite weight is a UserError: such a dictionary is never written as finished."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = cfg if cfg is not None else saelens_cfg(d)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in d.tensors().items()}
    bad = [k for k, v in tensors.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"refused to save a dictionary with non-finite weights ({', '.join(bad)}): the training "
                        "diverged or its input holds NaN")
    save_file(tensors, str(folder / WEIGHTS))
    (folder / CFG_JSON).write_text(json.dumps(cfg, indent=2, default=str) + "\n")


def save_dictionary(d: Dictionary, folder: str | Path, cfg: dict | None = None, extra_files: dict[str, str] | None = None) -> Path:
    """Atomically (re)create `folder` with cfg.json, the weights and any `extra_files` {name: text}."""
    folder = Path(folder)
    with atomic_path(folder) as tmp:
        write_dictionary_files(d, tmp, cfg)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return folder


def import_saelens(src_folder: str | Path, dest_folder: str | Path, expect_d_in: int | None = None,
                   expect_hook: str | None = None) -> Path:
    """Copy a SAELens folder into a run's dictionaries/ after checking it fits the run.

    Raises UserError (one line) if d_in or the hook name differ from the run's, or if the folder
    does not load. The copy is atomic; the original cfg.json is kept byte for byte.
    """
    src = Path(src_folder)
    cfg = read_cfg(src)
    if expect_d_in is not None and int(cfg["d_in"]) != int(expect_d_in):
        raise UserError(f"{src}: d_in {cfg['d_in']} does not match the run's d_in {expect_d_in}")
    hook = hook_name(cfg)
    if expect_hook is not None and hook is not None and hook != expect_hook:
        raise UserError(f"{src}: trained on hook {hook!r}, but the run caches {expect_hook!r}")
    load_dictionary(src)  # fails early, with a one-line error, if the weights are unusable or not finite
    dest = Path(dest_folder)
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        for name in (CFG_JSON, WEIGHTS, "sparsity.safetensors"):
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
    return dest
