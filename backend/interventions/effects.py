"""Effects of an edit on text: a typed prompt (`text_effects`) or a feature's own top contexts (`top_context_effects`).

Per position, from `core.reduce_logits`: the next-token loss change (with the actual next token), KL(clean ||
edited), the 5 tokens promoted and suppressed most by logit and by probability, the 10 most likely next tokens
before and after, and the clean activation of each edited feature.

A feature's top contexts (the sae-viewer "Effects" view): the feature is zero-ablated at every position of
the window the feature page shows of each of its top-20 contexts (24 tokens before the max-activating token,
the peak, to 8 after it), and

    at peak     loss change of the prediction made at the peak (of the token after it)
    after peak  mean loss change of the predictions at the `after` (8) positions after the peak

each averaged over the contexts. Contexts already in the run start from their cached hook activation.
A firing earlier in the sequence, which the reader cannot see, is left alone: what the panel shows is the
effect of what it shows, and the edited pass starts at the window instead of at the sequence's first firing
(a fifth less work on the demo's topk).
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
from backend.model import forward
from backend.model.hooks import HookPoint

DEFAULT_N_CONTEXTS = 20
WINDOW_BEFORE, WINDOW_AFTER = 24, 8  # as the feature page's context windows (analysis.json window_before/after)
BATCH_SEQS = 4  # sequences per clean pass: 8 padded short sequences to the longest (panel p50 2.06 -> 1.66 s at 4, 2 cores)
GROUP_ROWS = 4  # edited rows per pass: few, so their first changes (where each pass starts) stay close
REDUCE_POSITIONS = 1024  # positions unembedded at once ([1024, vocab] float32 = 200 MB for SmolLM2)


@dataclass
class Row:
    """One edit of one sequence, compared at some positions."""

    ids: np.ndarray  # [T] token ids of the whole sequence
    keep: np.ndarray  # [K] ascending positions whose next-token predictions are compared
    edit: ResolvedEdit
    act: np.ndarray | Callable[[], np.ndarray | None] | None = None  # [>= keep[-1] + 1, d_in] cached hook
    # activations, or a function loading them when the sequence's batch runs; None: run the upstream half
    key: object = None  # rows with the same key share one sequence (one clean pass); None: its own
    edit_from: int = 0  # positions before it are never edited (a top context: the window the reader sees)


def _batched(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


@dataclass
class _Seq:
    row: Row  # the first row of the sequence (ids, act)
    need: int  # positions needed by its rows
    rows: list[int] = field(default_factory=list)


def _sequences(rows: list[Row], stops: list[int]) -> list[_Seq]:
    seqs, index = [], {}
    for i, (r, stop) in enumerate(zip(rows, stops)):
        k = ("row", i) if r.key is None else ("key", r.key)
        if k not in index:
            index[k] = len(seqs)
            seqs.append(_Seq(r, 0))
        s = seqs[index[k]]
        s.need = max(s.need, stop)
        s.rows.append(i)
    return seqs


def _batch_acts(lm, hp, batch: list[_Seq], L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, L] padded with 0, hook activations [B, L, d] zero past each sequence's need), cached or captured."""
    ids = torch.zeros(len(batch), L, dtype=torch.long)
    acts: list[torch.Tensor | None] = []
    for b, s in enumerate(batch):
        n = min(L, len(s.row.ids))
        ids[b, :n] = torch.as_tensor(np.asarray(s.row.ids[:n], dtype=np.int64))
        a = s.row.act() if callable(s.row.act) else s.row.act
        acts.append(None if a is None else torch.as_tensor(np.asarray(a[:s.need], dtype=np.float32)))
    missing = [b for b, a in enumerate(acts) if a is None]
    if missing:
        got = core.capture_acts(lm.model, hp, ids[missing].to(lm.device)).cpu()
        for j, b in enumerate(missing):
            acts[b] = got[j, :batch[b].need]
    out = torch.zeros(len(batch), L, acts[0].shape[-1])
    for b, a in enumerate(acts):
        out[b, :len(a)] = a
    return ids, out


@torch.no_grad()
def effects_of_rows(lm, dictionary, hp: HookPoint, rows: list[Row], error_term: bool = True, batch_seqs: int = BATCH_SEQS,
                    group_rows: int = GROUP_ROWS, progress: Callable[[int], None] | None = None,
                    all_positions: bool = True, detail: bool = True) -> list[dict[str, np.ndarray]]:
    """For each row: `core.reduce_logits` arrays [K, ...] at its kept positions, plus `codes` [K, k] (clean codes of
    the edited features) and `edited` [K] bool. With all_positions=False the kept positions before the edit's first
    change (whose predictions it cannot change) are not unembedded: their loss_clean is NaN and their clean
    distribution empty (-1 ids), which saves a third of the work when only changes are shown. detail=False
    gives only the losses and KL (`core.reduce_losses`).

    Sequences run in batches of `batch_seqs` (shortest first): one clean pass each, every sequence encoded once;
    then the rows of the batch, ordered by the first position their edit changes, in groups of `group_rows` from
    the group's earliest change, on the clean KV cache."""
    model, special = lm.model, special_ids(lm.tokenizer)
    downstream = forward.downstream_supported(model, hp)
    stops = [int(r.keep[-1]) + 1 for r in rows]
    seqs = _sequences(rows, stops)
    out: list[dict | None] = [None] * len(rows)
    for batch in _batched(sorted(seqs, key=lambda s: s.need), batch_seqs):
        L = max(s.need for s in batch)
        ids, act = _batch_acts(lm, hp, batch, L)
        sp = special_mask(ids, special)  # [B, L]
        x = act.reshape(-1, act.shape[-1]).to(dictionary.W_dec.device)
        codes_all = dictionary.encode(x).float().cpu().reshape(len(batch), L, -1)  # each sequence encoded once
        todo = []  # (row index, batch row, delta [stop - s, d] from s, s)
        for b, s in enumerate(batch):
            for i in s.rows:
                r, stop = rows[i], stops[i]
                splice_at = torch.ones(stop, dtype=torch.bool) if r.edit.edit.include_special else ~sp[b, :stop]
                at = position_mask(stop, r.edit.edit, sp[b, :stop]) & splice_at
                at[:r.edit_from] = False
                d, c = edit_delta(dictionary, act[b:b + 1, :stop], r.edit, at[None], splice_at[None], error_term,
                                  codes_all=codes_all[b:b + 1, :stop])
                first = int(core.first_changed(d)[0])
                shown = r.keep if all_positions else r.keep[r.keep >= first]  # positions unembedded
                todo.append((i, b, d[0, first:], first, shown))
                out[i] = {"codes": c[0][r.keep].numpy(), "edited": at[r.keep].numpy()}
        if downstream:
            hidden = _downstream_hidden(model, hp, act, todo, rows, group_rows)
        else:
            hidden = _full_logits(model, hp, ids, act, todo, rows)
        _reduce(model, todo, rows, hidden, out, downstream, detail)
        if progress is not None:
            progress(len(todo))
    return out


def _downstream_hidden(model, hp, act, todo, rows, group_rows) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{row: (clean hidden at its kept positions [K, d], edited hidden at the kept positions >= its first change)}."""
    h_clean, cache = core.clean_pass(model, hp, act)
    dev = h_clean.device
    got = {t[0]: (h_clean[t[1], torch.as_tensor(t[4], device=dev)], h_clean.new_zeros(0, h_clean.shape[-1])) for t in todo}
    moved = sorted((t for t in todo if t[3] <= rows[t[0]].keep[-1]), key=lambda t: t[3])  # a kept prediction changes
    for group in _batched(moved, group_rows):
        start = min(t[3] for t in group)
        end = max(int(rows[t[0]].keep[-1]) + 1 for t in group)
        x = act[[t[1] for t in group], start:end].clone()
        for j, (_, _, delta, first, _) in enumerate(group):
            x[j, first - start:first - start + len(delta)] += delta[: end - first]
        h = core.edited_pass(model, hp, cache, torch.tensor([t[1] for t in group]), start, x)
        for j, (i, _, _, first, shown) in enumerate(group):
            got[i] = (got[i][0], h[j, torch.as_tensor(shown[shown >= first] - start, device=dev)])
    return got


def _full_logits(model, hp, ids, act, todo, rows) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The same as logits, for hooks without a downstream pass: full forward passes, the change spliced in."""
    clean = core.full_logits(model, hp, ids)
    got = {}
    for i, b, delta, first, shown in todo:
        keep = torch.as_tensor(shown)
        full = torch.zeros(1, ids.shape[1], act.shape[-1], device=delta.device)
        full[0, first:first + len(delta)] = delta
        edited = core.full_logits(model, hp, ids[b:b + 1], full)[0] if len(delta) else clean.new_zeros(0, clean.shape[-1])
        k = keep[keep >= first]
        got[i] = (clean[b, keep.to(clean.device)], edited[k.to(clean.device)] if len(delta) else edited)
    return got


def _reduce(model, todo, rows, hidden, out, downstream: bool, detail: bool = True) -> None:
    """Unembed (when `hidden` holds hidden states) and reduce, REDUCE_POSITIONS positions at a time; positions not
    unembedded (all_positions=False) get the unchanged defaults."""
    def flush(chunk):
        clean = torch.cat([hidden[t[0]][0] for t in chunk])
        edited = torch.cat([hidden[t[0]][1] for t in chunk])
        changed = torch.cat([torch.as_tensor(t[4] >= t[3]) for t in chunk])
        targets = torch.cat([torch.as_tensor(core.next_targets(np.asarray(rows[t[0]].ids), t[4])) for t in chunk])
        if downstream:
            clean, edited = forward.unembed(model, clean), forward.unembed(model, edited)
        red = (core.reduce_logits if detail else core.reduce_losses)(clean, edited, changed, targets)
        at = 0
        for i, _, _, _, shown in chunk:
            keep, n = rows[i].keep, len(shown)
            if n == len(keep):
                out[i].update({name: v[at:at + n] for name, v in red.items()})
            else:  # scatter the unembedded tail into the defaults of an unchanged position
                where = np.searchsorted(keep, shown)
                nxt = core.next_targets(np.asarray(rows[i].ids), keep)
                for name, v in red.items():
                    fill = {"loss_change": np.where(nxt >= 0, 0.0, np.nan), "loss_clean": np.nan, "loss_edited": np.nan,
                            "kl": 0.0}.get(name, -1 if name.endswith("_ids") else 0.0)
                    full = np.empty((len(keep), *v.shape[1:]), dtype=v.dtype)
                    full[...] = fill if np.ndim(fill) == 0 else fill.reshape(-1, *([1] * (v.ndim - 1)))
                    full[where] = v[at:at + n]
                    out[i][name] = full
            at += n

    chunk, n = [], 0
    for t in todo:
        chunk.append(t)
        n += len(t[4])
        if n >= REDUCE_POSITIONS:
            flush(chunk)
            chunk, n = [], 0
    if chunk:
        flush(chunk)


ID_KEYS = ("promoted_logit", "suppressed_logit", "promoted_prob", "suppressed_prob")


def _strings(tokenizer, results: list[dict]) -> dict[int, str]:
    ids = [r[f"{k}_ids"].reshape(-1) for r in results for k in ID_KEYS] + \
          [r[f"top_{w}_ids"].reshape(-1) for r in results for w in ("clean", "edited")]
    uniq = np.unique(np.concatenate(ids)) if ids else np.zeros(0, np.int64)
    uniq = uniq[uniq >= 0]  # -1: nothing moved at that position
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
    moved = res["promoted_logit_ids"][:, 0] >= 0  # the prediction at this position sees the edit
    for k in ID_KEYS:  # a position the edit left unchanged promotes nothing
        df[k] = [[names[int(t)] for t in row] if m else [] for row, m in zip(res[f"{k}_ids"], moved)]
        df[f"{k}_values"] = [list(map(float, row)) if m else [] for row, m in zip(res[f"{k}_values"], moved)]
    for w in ("clean", "edited"):  # -1: a position not unembedded (before the edit's first change)
        df[f"top_{w}"] = [[names[int(t)] for t in row if t >= 0] for row in res[f"top_{w}_ids"]]
        df[f"top_{w}_probs"] = [[float(p) for t, p in zip(ids, row) if t >= 0]
                                for ids, row in zip(res[f"top_{w}_ids"], res[f"top_{w}_probs"])]
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


def context_rows(data: RunData, peaks: np.ndarray, r: ResolvedEdit, before: int, after: int,
                 edit_before: int = WINDOW_BEFORE) -> list[Row]:
    """A Row per peak token index: its sequence, the positions [peak - before, peak + after] clipped to it kept,
    the edit applied from peak - edit_before on (the shown window: a firing earlier in the sequence, which the
    reader cannot see, is left alone, and the edited pass starts there)."""
    C = data.ctx_len
    seqs, pos = peaks // C, peaks % C
    ids = data.token_ids(seqs)
    rows = []
    for s, p, seq_ids in zip(seqs.tolist(), pos.tolist(), ids):
        keep = np.arange(max(0, p - before), min(C - 1, p + after) + 1)
        rows.append(Row(seq_ids, keep, r, act=lambda s=s: data.seq_acts(s), key=s,  # acts loaded when its batch runs
                        edit_from=max(0, p - edit_before)))
    return rows


def top_context_effects(lm, dictionary, run_dir, dict_name: str, feature: int, edit: Edit | None = None,
                        n: int = DEFAULT_N_CONTEXTS, before: int = WINDOW_BEFORE, after: int = WINDOW_AFTER,
                        error_term: bool = True, progress: Callable[[int], None] | None = None) -> FeatureEffects:
    """Ablate `feature` (or apply `edit`, default zero-ablation at all positions of the shown window) on its top
    `n` contexts."""
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
    out.from_cache = all(data.has_acts(int(t) // data.ctx_len) for t in peaks)
    res = effects_of_rows(lm, dictionary, hp, rows, error_term, progress=progress, all_positions=False)
    names = _strings(lm.tokenizer, res)
    all_ids = np.stack([row.ids for row in rows])
    vocab = dict(zip(np.unique(all_ids).tolist(), token_strings(lm.tokenizer, np.unique(all_ids))))
    for rank, (t, row, rr) in enumerate(zip(peaks.tolist(), rows, res)):
        tokens = [vocab[int(i)] for i in row.ids]
        table = position_table(tokens, row.ids, row.keep, rr, names)
        peak_row = int(np.searchsorted(row.keep, t % data.ctx_len))
        at, aft = peak_summary(rr["loss_change"], peak_row, after)
        out.contexts.append(ContextEffects(int(t), rank, table, peak_row, at, aft))
    out.seconds = time.perf_counter() - t0
    return out
