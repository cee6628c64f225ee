"""What an intervention changes: an `Edit` of a dictionary's codes, and the change it makes at the hook.

The splice, as SAELens does it (error term kept):

    f     = encode(x)                              # [N, d_sae] codes of the hook activation x [N, d_in]
    x'    = decode(edit(f)) + (x - decode(f))      # the reconstruction error (x - decode(f)) is kept
          = x + (edit(f) - f)[:, S] @ W_dec[S]     # every kind's decoder is linear (docs/CONTRACTS.md), S = edited features

so with no edit x' == x exactly and the logits are the clean ones. `error_term=False` drops the error:
x' = decode(edit(f)) at every spliced position (the dictionary then also answers for what it fails to
reconstruct). The iterative encoders (sparse-coding, sae-ito) are encoded once; their codes are edited
like any other.

Ops on feature i at the chosen positions:
    zero   f_i = 0
    mean   f_i = E[f_i] over every analysed token of the run = density * mean_act (features.parquet).
           The mean over all tokens, zeros included, not `mean_act` (the mean over firing tokens): mean
           ablation replaces a feature by its expected value, removing what varies and keeping its average
           contribution; the firing-only mean would switch the feature on at every silent token.
    clamp  f_i = value                     (value, or value * max_act with relative=True)
    scale  f_i = value * f_i
    steer  f_i = f_i + a, i.e. x' = x + a * W_dec[i]   (a = value, or value * max_act with relative=True)
Position 0 and special tokens (BOS, EOS, padding) keep their activation unless `include_special`: as in
training and analysis, the dictionary never saw them (position 0's activation is an outlier in every model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from backend.common.errors import UserError

OPS = ("zero", "mean", "clamp", "scale", "steer")
POSITION_MODES = ("all", "prompt", "generated")
MAX_ABS_VALUE = 1e4  # an absolute clamp or steer value past this is refused: far beyond any residual norm we cache
MAX_MULTIPLE = 1e3  # a relative value (times the feature's max activation) or a scale factor past this is refused


@dataclass(frozen=True)
class Edit:
    """Change `features`' codes by `op` at `positions` (all | prompt | generated | a tuple of token positions)."""

    features: tuple[int, ...]
    op: str = "zero"
    value: float | None = None  # clamp: the value; scale: the factor; steer: the strength a
    relative: bool = False  # clamp/steer: value is a multiple of the feature's max activation over the run
    positions: str | tuple[int, ...] = "all"
    include_special: bool = False  # also edit position 0 and special tokens

    def __post_init__(self):
        feats = (self.features,) if isinstance(self.features, (int, np.integer)) else tuple(self.features)
        try:
            feats = tuple(int(f) for f in feats)
        except (TypeError, ValueError):
            raise UserError(f"features must be integers, not {self.features!r}") from None
        if not feats:
            raise UserError("choose at least one feature to edit")
        object.__setattr__(self, "features", tuple(dict.fromkeys(feats)))
        if self.op not in OPS:
            raise UserError(f"unknown edit {self.op!r}: choose one of {', '.join(OPS)}")
        if self.op in ("clamp", "scale", "steer"):
            if self.value is None:
                raise UserError(f"{self.op} needs a value")
            v = float(self.value)
            if not math.isfinite(v):
                raise UserError(f"the {self.op} value must be a finite number, not {self.value}")
            limit = MAX_MULTIPLE if (self.relative or self.op == "scale") else MAX_ABS_VALUE
            if abs(v) > limit:
                raise UserError(f"a {self.op} value of {v:g} is absurd (at most {limit:g} in absolute value)")
            object.__setattr__(self, "value", v)
        if isinstance(self.positions, str):
            if self.positions not in POSITION_MODES:
                raise UserError(f"positions must be one of {', '.join(POSITION_MODES)} or a list of positions")
        else:
            try:
                pos = tuple(sorted({int(p) for p in self.positions}))
            except (TypeError, ValueError):
                raise UserError(f"positions must be integers, not {self.positions!r}") from None
            if not pos or pos[0] < 0:
                raise UserError("positions must be a non-empty list of token positions >= 0")
            object.__setattr__(self, "positions", pos)

    def describe(self) -> str:
        feats = ", ".join(f"#{f}" for f in self.features)
        val = "" if self.value is None else f" {self.value:g}" + (" x max act" if self.relative else "")
        return f"{self.op}{val} on {feats}"


@dataclass(frozen=True)
class FeatureStats:
    """Per-feature figures of the analysis that edits need (features.parquet; all [d_sae] float64)."""

    mean_all: np.ndarray  # density * mean_act: the mean over every analysed token (mean ablation)
    max_act: np.ndarray  # the largest activation seen (relative clamp and steer)

    @classmethod
    def from_features(cls, path: str | Path) -> "FeatureStats":
        import pyarrow.parquet as pq

        t = pq.read_table(path, columns=["feature", "density", "mean_act", "max_act"]).to_pandas().sort_values("feature")
        return cls(mean_all=(t["density"] * t["mean_act"]).to_numpy(np.float64), max_act=t["max_act"].to_numpy(np.float64))


@dataclass(frozen=True)
class ResolvedEdit:
    """An `Edit` checked against one dictionary, with its per-feature values in activation units."""

    edit: Edit
    features: torch.Tensor  # [k] int64
    values: torch.Tensor | None  # [k] float32: the mean, clamp value, scale factor or strength of each feature

    @property
    def op(self) -> str:
        return self.edit.op


def check_features(features, d_sae: int) -> None:
    bad = [f for f in features if not 0 <= f < d_sae]
    if bad:
        raise UserError(f"no feature {bad[0]} (this dictionary has features 0..{d_sae - 1})")


def resolve(edit: Edit, d_sae: int, stats: FeatureStats | None) -> ResolvedEdit:
    """Check `edit` against a dictionary of d_sae features and turn it into per-feature values."""
    check_features(edit.features, d_sae)
    feats = torch.tensor(edit.features, dtype=torch.long)
    needs_stats = edit.op == "mean" or (edit.relative and edit.op in ("clamp", "steer"))
    if needs_stats and stats is None:
        raise UserError(f"{edit.op}{' (relative)' if edit.relative else ''} needs the dictionary's analysis "
                        "(features.parquet); run `python -m backend analyze` first")
    if edit.op == "zero":
        values = None
    elif edit.op == "mean":
        values = torch.tensor(stats.mean_all[list(edit.features)], dtype=torch.float32)
    elif edit.relative and edit.op in ("clamp", "steer"):
        top = stats.max_act[list(edit.features)]
        if (top <= 0).any():
            f = edit.features[int(np.argmax(top <= 0))]
            raise UserError(f"feature {f} never fires, so it has no max activation: give an absolute {edit.op} value")
        values = torch.tensor(edit.value * top, dtype=torch.float32)
    else:
        values = torch.full((len(edit.features),), float(edit.value), dtype=torch.float32)
    return ResolvedEdit(edit, feats, values)


def edit_codes(f: torch.Tensor, r: ResolvedEdit) -> torch.Tensor:
    """The edited codes of the edited features: f [N, k] (their current values) -> [N, k]."""
    if r.op == "zero":
        return torch.zeros_like(f)
    v = r.values.to(f.device, f.dtype)
    if r.op in ("mean", "clamp"):
        return v.expand_as(f).clone()
    if r.op == "scale":
        return f * v
    return f + v  # steer


def position_mask(T: int, edit: Edit, special: torch.Tensor, n_prompt: int | None = None,
                  offset: int = 0) -> torch.Tensor:
    """[T] bool: where the edit applies among absolute positions offset..offset+T-1 (`special` [T] bool marks
    special tokens; `n_prompt` splits prompt from generated positions in generation)."""
    pos = torch.arange(offset, offset + T)
    if isinstance(edit.positions, tuple):
        m = torch.isin(pos, torch.tensor(edit.positions, dtype=torch.long))
    elif edit.positions == "all":
        m = torch.ones(T, dtype=torch.bool)
    else:
        split = n_prompt if n_prompt is not None else offset + T  # outside generation every position is prompt
        m = pos < split if edit.positions == "prompt" else pos >= split
    return m & ~special if not edit.include_special else m


def special_mask(ids: torch.Tensor, special_ids: set[int]) -> torch.Tensor:
    """[..., T] bool: position 0 and every special token id (left alone by default)."""
    m = torch.isin(ids, torch.tensor(sorted(special_ids), dtype=ids.dtype)) if special_ids else torch.zeros_like(ids, dtype=torch.bool)
    m = m.clone()
    m[..., 0] = True
    return m


@torch.no_grad()
def edit_delta(dictionary, act: torch.Tensor, r: ResolvedEdit, edit_at: torch.Tensor, splice_at: torch.Tensor,
               error_term: bool = True, codes_all: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x' - x [B, T, d_in], codes [B, T, k]) for hook activations act [B, T, d_in]: the change the edit makes
    and the clean codes of the edited features (0 at positions left alone).

    splice_at [B, T] bool: where the dictionary is spliced in (not position 0 and special tokens, by default);
    edit_at [B, T] bool (within splice_at): where the codes are edited. With the error term, x' - x is
    (edit(f) - f) @ W_dec, zero wherever nothing is edited; without it x' = decode(edit(f)) on all of splice_at.
    codes_all [B, T, d_sae]: the codes of act when already encoded (several edits of one sequence encode it once).
    """
    B, T, _ = act.shape
    k = len(r.features)
    edit_at, splice_at = edit_at.to(act.device), splice_at.to(act.device)
    delta = torch.zeros(B, T, act.shape[-1], dtype=torch.float32, device=act.device)
    codes = torch.zeros(B, T, k, dtype=torch.float32, device=act.device)
    if not splice_at.any():
        return delta, codes
    dev = dictionary.W_dec.device
    x = act[splice_at].float().to(dev)  # [N, d_in]
    feats = r.features.to(dev)
    f = (dictionary.encode(x).float() if codes_all is None
         else codes_all[splice_at.to(codes_all.device)].float().to(dev))  # [N, d_sae]
    sel = f[:, feats]  # [N, k]
    on = edit_at[splice_at][:, None].to(dev)  # [N, 1] rows whose codes are edited
    if error_term:
        if r.op == "steer":  # exactly a * W_dec[i], not (f + a) - f
            diff = torch.where(on, r.values.to(dev)[None, :], 0.0)
        else:
            diff = torch.where(on, edit_codes(sel, r) - sel, 0.0)
        W = dictionary.W_dec.detach()[feats].float()  # [k, d_in]
        change = diff @ W
    else:
        f = f.clone() if codes_all is not None else f
        f[:, feats] = torch.where(on, edit_codes(sel, r), sel)
        change = dictionary.decode(f).float() - x
    delta[splice_at] = change.to(act.device)
    codes[splice_at] = sel.to(act.device)
    return delta, codes
