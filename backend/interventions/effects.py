"""Effects of an edit on text: a typed prompt (`text_effects`) or a feature's own top contexts (`top_context_effects`).

Per position, from `core.reduce_logits`: the next-token loss change (with the actual next token), KL(clean ||
edited), the 5 tokens promoted and suppressed most by logit and by probability, the 10 most likely next tokens
before and after, and the clean activation of each edited feature.

A feature's top contexts (the sae-viewer "Effects" view): the feature is zero-ablated at every position of
each of its top-20 contexts (the analysed windows, peak = the max-activating token), and

    at peak     loss change of the prediction made at the peak (of the token after it)
    after peak  mean loss change of the predictions at the `after` (8) positions after the peak

each averaged over the contexts. Contexts already in the run start from their cached hook activation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch

from backend.common.errors import UserError
from backend.corpus.contexts import token_strings
from backend.interventions import core
from backend.interventions.edits import (
    Edit,
    FeatureStats,
    ResolvedEdit,
    edit_delta,
    position_mask,
    resolve,
    special_mask,
)
from backend.interventions.inputs import check_dictionary, special_ids, tokenize_text
from backend.interventions.run_data import RunData
from backend.model.hooks import HookPoint

DEFAULT_N_CONTEXTS = 20
WINDOW_BEFORE, WINDOW_AFTER = 24, 8  # as the feature page's context windows (analysis.json window_before/after)
BATCH_ROWS = 16  # sequences per pass: large enough for matmul efficiency, small enough for [B, K, vocab] logits


@dataclass
class Row:
    """One sequence to run clean and edited."""

    ids: np.ndarray  # [T] token ids of the whole sequence
    keep: np.ndarray  # [K] ascending positions whose next-token predictions are compared
    edit: ResolvedEdit
    act: np.ndarray | None = None  # [>= keep[-1] + 1, d_in] cached hook activations; None: run the upstream half


def _batched(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _pad(arrs: list[torch.Tensor], length: int, value=0) -> torch.Tensor:
    out = torch.full((len(arrs), length, *arrs[0].shape[1:]), value, dtype=arrs[0].dtype)
    for j, a in enumerate(arrs):
        out[j, :len(a)] = a[:length]
    return out


@torch.no_grad()
def effects_of_rows(lm, dictionary, hp: HookPoint, rows: list[Row], error_term: bool = True, batch_rows: int = BATCH_ROWS,
                    progress: Callable[[int], None] | None = None) -> list[dict[str, np.ndarray]]:
    """For each row: `core.reduce_logits` arrays [K, ...] at its kept positions, plus `codes` [K, k] (clean codes of
    the edited features) and `edited` [K] bool. Rows are batched by the first position their edit changes, so a
    batch shares the longest clean prefix."""
    model, special = lm.model, special_ids(lm.tokenizer)
    stops = [int(r.keep[-1]) + 1 for r in rows]
    ids = [torch.as_tensor(np.asarray(r.ids, dtype=np.int64)) for r in rows]
    acts: list[torch.Tensor | None] = [None if r.act is None else torch.as_tensor(r.act[:s]).float() for r, s in zip(rows, stops)]
    missing = sorted((i for i, a in enumerate(acts) if a is None), key=lambda i: stops[i])
    for chunk in _batched(missing, batch_rows):
        L = max(stops[i] for i in chunk)
        got = core.capture_acts(model, hp, _pad([ids[i] for i in chunk], L).to(lm.device)).cpu()
        for j, i in enumerate(chunk):
            acts[i] = got[j, :stops[i]]

    deltas, codes, edited, firsts = [], [], [], []
    for i, r in enumerate(rows):
        sp = special_mask(ids[i][:stops[i]], special)
        splice_at = torch.ones_like(sp) if r.edit.edit.include_special else ~sp
        at = position_mask(stops[i], r.edit.edit, sp) & splice_at
        d, c = edit_delta(dictionary, acts[i][None], r.edit, at[None], splice_at[None], error_term)
        deltas.append(d[0])
        codes.append(c[0])
        edited.append(at)
        firsts.append(int(core.first_changed(d)[0]))

    out: list[dict | None] = [None] * len(rows)
    for chunk in _batched(sorted(range(len(rows)), key=lambda i: (firsts[i], stops[i])), batch_rows):
        L, K = max(stops[i] for i in chunk), max(len(rows[i].keep) for i in chunk)
        keep = torch.stack([torch.as_tensor(np.pad(rows[i].keep, (0, K - len(rows[i].keep)), mode="edge")) for i in chunk])
        clean, changed = core.paired_logits(model, hp, _pad([acts[i] for i in chunk], L).to(lm.device),
                                            _pad([ids[i] for i in chunk], L).to(lm.device),
                                            _pad([deltas[i] for i in chunk], L).to(lm.device), keep.to(lm.device))
        full = _pad([ids[i] for i in chunk], max(len(ids[i]) for i in chunk), value=-1)
        targets = core.next_targets(full, keep, torch.tensor([len(ids[i]) for i in chunk]))
        red = core.reduce_logits(clean.cpu(), changed.cpu(), targets)
        for j, i in enumerate(chunk):
            k = len(rows[i].keep)
            res = {name: v[j, :k] for name, v in red.items()}
            res["codes"] = codes[i][rows[i].keep].numpy()
            res["edited"] = edited[i][rows[i].keep].numpy()
            out[i] = res
        if progress is not None:
            progress(len(chunk))
    return out


ID_KEYS = ("promoted_logit", "suppressed_logit", "promoted_prob", "suppressed_prob")


def _strings(tokenizer, results: list[dict]) -> dict[int, str]:
    ids = [r[f"{k}_ids"].reshape(-1) for r in results for k in ID_KEYS] + \
          [r[f"top_{w}_ids"].reshape(-1) for r in results for w in ("clean", "edited")]
    uniq = np.unique(np.concatenate(ids)) if ids else np.zeros(0, np.int64)
    return dict(zip(uniq.tolist(), token_strings(tokenizer, uniq))) if len(uniq) else {}


def position_table(tokens: list[str], ids: np.ndarray, keep: np.ndarray, res: dict, names: dict[int, str]) -> pd.DataFrame:
    """One row per kept position: pos, token, next_token, act (largest clean code of the edited features),
    edited, loss_clean, loss_edited, loss_change, kl, and per kind of change the token strings and values."""
    n = len(ids)
    nxt = [tokens[p + 1] if p + 1 < n else "" for p in keep.tolist()]
    df = pd.DataFrame({
        "pos": keep.astype(np.int64), "token": [tokens[p] for p in keep.tolist()], "next_token": nxt,
        "act": res["codes"].max(1) if res["codes"].shape[1] else np.zeros(len(keep), np.float32),
        "edited": res["edited"].astype(bool),
        "loss_clean": res["loss_clean"], "loss_edited": res["loss_edited"], "loss_change": res["loss_change"],
        "kl": res["kl"],
    })
    df["acts"] = [list(map(float, r)) for r in res["codes"]]
    moved = np.abs(res["promoted_logit_values"]).max(1) + np.abs(res["suppressed_logit_values"]).max(1) > 0
    for k in ID_KEYS:  # a position the edit left unchanged promotes nothing (its top-k of zeros is noise)
        df[k] = [[names[int(t)] for t in row] if m else [] for row, m in zip(res[f"{k}_ids"], moved)]
        df[f"{k}_values"] = [list(map(float, row)) if m else [] for row, m in zip(res[f"{k}_values"], moved)]
    for w in ("clean", "edited"):
        df[f"top_{w}"] = [[names[int(t)] for t in row] for row in res[f"top_{w}_ids"]]
        df[f"top_{w}_probs"] = [list(map(float, row)) for row in res[f"top_{w}_probs"]]
    return df


# ------------------------------------------------------------------------------ a typed text


@dataclass
class TextEffects:
    """An edit's effects on every position of one text."""

    edit: str  # Edit.describe()
    features: list[int]
    tokens: list[str]  # [T], BOS at 0 when the model has one
    token_ids: list[int]
    table: pd.DataFrame  # position_table over every position
    error_term: bool
    seconds: float

    @property
    def mean_loss_change(self) -> float:
        return float(np.nanmean(self.table["loss_change"])) if self.table["loss_change"].notna().any() else 0.0


def text_effects(lm, dictionary, hook: str, text: str, edit: Edit, stats: FeatureStats | None = None,
                 error_term: bool = True) -> TextEffects:
    """Run `text` clean and with `edit` spliced at `hook` (a `LoadedModel` and a `Dictionary`)."""
    t0 = time.perf_counter()
    hp = check_dictionary(dictionary, lm.model, hook)
    r = resolve(edit, dictionary.d_sae, stats)
    ids = np.asarray(tokenize_text(lm.tokenizer, text), dtype=np.int64)
    if isinstance(edit.positions, tuple) and edit.positions[-1] >= len(ids):
        raise UserError(f"position {edit.positions[-1]} is past the end of the prompt ({len(ids)} tokens)")
    keep = np.arange(len(ids))
    res = effects_of_rows(lm, dictionary, hp, [Row(ids, keep, r)], error_term)[0]
    tokens = token_strings(lm.tokenizer, ids)
    table = position_table(tokens, ids, keep, res, _strings(lm.tokenizer, [res]))
    return TextEffects(edit.describe(), list(edit.features), tokens, ids.tolist(), table, error_term,
                       time.perf_counter() - t0)


# ------------------------------------------------------------------------------ a feature's top contexts


@dataclass
class ContextEffects:
    """One top context: its window, and the ablation's effect on each of its tokens."""

    token_index: int  # the peak (the max-activating token) in the run
    rank: int
    table: pd.DataFrame  # position_table over the window
    peak: int  # row of the peak in `table`
    at_peak: float  # loss change of the prediction made at the peak
    after_peak: float  # mean loss change over the `after` positions after it (nan when none)


@dataclass
class FeatureEffects:
    feature: int
    edit: str
    contexts: list[ContextEffects] = field(default_factory=list)
    seconds: float = 0.0
    from_cache: bool = True  # the contexts started from cached hook activations (False: upstream pass too)

    @property
    def at_peak(self) -> float:
        v = [c.at_peak for c in self.contexts if np.isfinite(c.at_peak)]
        return float(np.mean(v)) if v else float("nan")

    @property
    def after_peak(self) -> float:
        v = [c.after_peak for c in self.contexts if np.isfinite(c.after_peak)]
        return float(np.mean(v)) if v else float("nan")


def peak_summary(loss_change: np.ndarray, peak_row: int, after: int) -> tuple[float, float]:
    """(loss change at the peak, mean loss change of the `after` positions after it) of one context."""
    at = float(loss_change[peak_row])
    tail = loss_change[peak_row + 1: peak_row + 1 + after]
    tail = tail[np.isfinite(tail)]
    return at, (float(tail.mean()) if len(tail) else float("nan"))


def context_rows(data: RunData, peaks: np.ndarray, r: ResolvedEdit, before: int, after: int) -> list[Row]:
    """A Row per peak token index: its sequence, the window [peak - before, peak + after] clipped to it."""
    C = data.ctx_len
    seqs, pos = peaks // C, peaks % C
    ids = data.token_ids(seqs)
    rows = []
    for s, p, seq_ids in zip(seqs.tolist(), pos.tolist(), ids):
        keep = np.arange(max(0, p - before), min(C - 1, p + after) + 1)
        rows.append(Row(seq_ids, keep, r, data.seq_acts(s, int(keep[-1]) + 1)))
    return rows


def top_context_effects(lm, dictionary, run_dir, dict_name: str, feature: int, edit: Edit | None = None,
                        n: int = DEFAULT_N_CONTEXTS, before: int = WINDOW_BEFORE, after: int = WINDOW_AFTER,
                        error_term: bool = True, progress: Callable[[int], None] | None = None) -> FeatureEffects:
    """Ablate `feature` (or apply `edit`, default zero-ablation at all positions) on its top `n` contexts."""
    t0 = time.perf_counter()
    data = RunData(run_dir, dict_name)
    hp = check_dictionary(dictionary, lm.model, data.hook)
    edit = edit or Edit((int(feature),), "zero")
    r = resolve(edit, dictionary.d_sae, data.stats())
    peaks = data.top_peaks([int(feature)], n).get(int(feature), np.zeros(0, np.int64))
    out = FeatureEffects(int(feature), edit.describe())
    if not len(peaks):
        return out
    rows = context_rows(data, peaks, r, before, after)
    out.from_cache = all(row.act is not None for row in rows)
    res = effects_of_rows(lm, dictionary, hp, rows, error_term, progress=progress)
    names = _strings(lm.tokenizer, res)
    for rank, (t, row, rr) in enumerate(zip(peaks.tolist(), rows, res)):
        tokens = token_strings(lm.tokenizer, row.ids)
        table = position_table(tokens, row.ids, row.keep, rr, names)
        peak_row = int(np.searchsorted(row.keep, t % data.ctx_len))
        at, aft = peak_summary(rr["loss_change"], peak_row, after)
        out.contexts.append(ContextEffects(int(t), rank, table, peak_row, at, aft))
    out.seconds = time.perf_counter() - t0
    return out
