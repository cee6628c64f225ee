"""The `Dictionary` interface every kind implements, and the registry of kinds.

A dictionary maps an activation x [B, d_in] to latents f [B, d_sae] (`encode`) and back to a
reconstruction x_hat [B, d_in] (`decode`). Everything is in raw activation units: any scale
used in training is folded into the weights before saving (see `fold_scale_`), and the
decoder rows `W_dec` [d_sae, d_in] are unit norm, so a latent value is the length of the
feature direction it adds.

A new kind (topk, mlp encoder, sparse coding, ...) subclasses `Dictionary`, sets `kind` and
`architecture`, implements `encode`/`decode`/`flops_per_token`, and registers itself with
`@register_kind`; `load_dictionary` finds it through `KINDS[cfg["kind"]]`. A kind that trains also
declares its settings as a `KindConfig` dataclass next to it (`config_class`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from backend.common.errors import UserError

KINDS: dict[str, type["Dictionary"]] = {}  # our `kind` -> class, e.g. {"relu-l1": ReluL1SAE}
ARCHITECTURES: dict[str, type["Dictionary"]] = {}  # SAELens `architecture` -> class, for folders without `kind`


@dataclass
class KindConfig:
    """Base of the per-kind training settings: one dataclass next to each trainable kind (`ReluL1Config`, ...),
    holding what only that kind reads; what every kind shares is `backend.training.trainer.TrainConfig`.

    Each field's docstring says why its default was chosen; it is also the field's `python -m backend train
    --help` text (read from the source by backend/common/config_cli.py). Subclasses extend `checks()`.
    """

    epochs: float
    """Passes over the training tokens; each kind sets its own default (costlier steps, fewer passes)."""
    default_lr = 1e-3  # peak Adam lr when TrainConfig.lr is None (a class constant, not a setting of its own)

    def __post_init__(self):
        for ok, msg in self.checks():
            if not ok:
                raise UserError(f"invalid training config: {msg}")

    def checks(self) -> list[tuple[bool, str]]:
        """(condition, message if it fails) pairs; a subclass returns `super().checks() + [...]`."""
        return [(self.epochs > 0, f"epochs must be > 0, got {self.epochs}")]

    def cfg_fields(self, d_in: int) -> dict:
        """The kind's own cfg.json fields (e.g. {"k": 32}), with defaults that depend on d_in resolved."""
        return {}


def register_kind(cls: type["Dictionary"]) -> type["Dictionary"]:
    """Class decorator: make `cls` loadable by its `kind`, and plain SAELens folders of its architecture when
    `cls.loads_saelens` (one class per architecture, whatever the import order)."""
    if cls.kind in KINDS:
        raise ValueError(f"dictionary kind {cls.kind!r} is registered twice")
    KINDS[cls.kind] = cls
    if cls.loads_saelens:
        if cls.architecture in ARCHITECTURES:
            raise ValueError(f"SAELens architecture {cls.architecture!r} already loads as {ARCHITECTURES[cls.architecture].kind}")
        ARCHITECTURES[cls.architecture] = cls
    return cls


class Dictionary(nn.Module):
    """Base class: `encode(x) -> f`, `decode(f) -> x_hat`, `forward(x) -> x_hat`, unit-norm `W_dec`.

    `cfg` is the dict written as cfg.json (SAELens fields + ours). Subclasses own their
    parameters; `tensors()` returns what goes into sae_weights.safetensors (SAELens key names).
    """

    kind: ClassVar[str] = ""  # our name, cfg["kind"]
    architecture: ClassVar[str] = ""  # SAELens name, cfg["architecture"]
    loads_saelens: ClassVar[bool] = True  # a plain SAELens folder of this architecture (no "kind") loads as this class
    config_class: ClassVar[type | None] = None  # its settings (a KindConfig for trained kinds); set by each kind itself
    W_dec: torch.Tensor  # [d_sae, d_in], unit-norm rows
    # dtype of the matmul that only chooses active latents in sparse training paths (values and gradients stay
    # float32; backend.dictionaries.sparse_ops.select_preacts); the trainer sets it from TrainConfig.select_dtype
    select_dtype: torch.dtype = torch.float32

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = dict(cfg)
        self.d_in = int(cfg["d_in"])
        self.d_sae = int(cfg["d_sae"])

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # [B, d_in] -> [B, d_sae]
        raise NotImplementedError

    def decode(self, f: torch.Tensor) -> torch.Tensor:  # [B, d_sae] -> [B, d_in]
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, d_in] -> [B, d_in]
        return self.decode(self.encode(x))

    def flops_per_token(self) -> dict[str, int]:
        """Multiply-adds counted as 2 FLOPs: {"encode": ..., "decode": ...} for one token."""
        raise NotImplementedError

    # --- saving and loading -------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors saved in sae_weights.safetensors, by SAELens key name (contiguous, detached)."""
        return {k: v.detach().contiguous() for k, v in self.state_dict().items()}

    @classmethod
    def from_tensors(cls, cfg: dict, tensors: dict[str, torch.Tensor]) -> "Dictionary":
        """Build from a cfg dict and the saved tensors; a missing tensor or a wrong shape raises
        RuntimeError, tensors the class does not know (e.g. SAELens training extras) are ignored."""
        d = cls(cfg)
        own = d.state_dict()
        missing = [k for k in own if k not in tensors]
        if missing:
            raise KeyError(f"missing tensors {missing}")
        d.load_state_dict({k: tensors[k].to(torch.float32) for k in own}, strict=True)
        return d

    @torch.no_grad()
    def fold_scale_(self, scale: float) -> None:
        """Make a dictionary trained on `scale * x` work on raw x (in place)."""
        raise NotImplementedError(f"{type(self).__name__} cannot fold an activation scale")

    # --- training (kinds that train override as needed) ---------------------------------
    def training_loss(self, x: torch.Tensor, coeffs: dict[str, float]) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """(loss to backprop, {name: float} parts for logging, latents f [B, d_sae] detached)."""
        raise NotImplementedError(f"{type(self).__name__} is not trainable here")

    def loss_and_backward(self, x: torch.Tensor, coeffs: dict) -> tuple[dict[str, float], torch.Tensor]:
        """Compute the loss, fill `.grad` of every parameter, return (parts, fire_counts [d_sae] int64).
        Default: autograd through `training_loss`. `coeffs` holds the trainer's per-step settings
        ("l1" ramped, "dead" [d_sae] bool, "aux_coeff", ...); a kind reads the ones it needs."""
        loss, parts, f = self.training_loss(x, coeffs)
        loss.backward()
        return parts, (f > 0).sum(0)

    @torch.no_grad()
    def init_from_sample_(self, x: torch.Tensor) -> None:
        """After `init_weights_`: a data-dependent init from a sample x [N, d_in] in training units (default none)."""

    def train_flops_per_token(self) -> int:
        """Training FLOPs per token; default ~6 per parameter (forward 2, backward 4), all touched."""
        return 6 * sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def after_optimizer_step_(self) -> None:
        """Re-impose constraints after an optimizer step: by default unit-norm rows of a trained W_dec."""
        if isinstance(self.W_dec, nn.Parameter):
            unit_norm_rows_(self.W_dec)

    @torch.no_grad()
    def before_optimizer_step_(self) -> None:
        """Adjust gradients before the step: by default drop the part of W_dec's gradient that only changes row norms."""
        if isinstance(self.W_dec, nn.Parameter):
            remove_parallel_grad_(self.W_dec)


@torch.no_grad()
def remove_parallel_grad_(W: torch.Tensor) -> None:
    """Drop the component of W.grad parallel to each row of W [n, d] (it only changes the row norms)."""
    g = W.grad
    if g is None:
        return
    coef = torch.linalg.vecdot(g, W).div_(torch.linalg.vecdot(W, W).clamp_min(1e-16))  # [n] (g.W_i) / |W_i|^2
    torch.addcmul(g, W, coef[:, None], value=-1, out=g)  # two passes over W instead of six


@torch.no_grad()
def unit_norm_rows_(W: torch.Tensor) -> None:
    """Rescale each row of W [n, d] to unit norm (in place)."""
    W.div_(W.norm(dim=1, keepdim=True).clamp_min(1e-8))


@torch.no_grad()
def random_unit_rows(n: int, d: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[n, d] Gaussian rows scaled to unit norm (a random dictionary)."""
    W = torch.randn(n, d, generator=generator)
    return W / W.norm(dim=1, keepdim=True)
