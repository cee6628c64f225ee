"""`python -m backend intervene effects|contexts|text|steer`: the logic behind the CLI (backend/cli.py parses).

    effects   write dictionaries/<d>/effects.parquet (every feature, or --top N densest)
    contexts  zero-ablate (or edit) one feature on its top contexts; print each context's loss change
    text      an edit's per-token effects on a typed text
    steer     clean and steered continuations side by side (streamed), or a 5-strength sweep

A separate step rather than `analyze --effects`: it needs the subject model and takes hours on a CPU for a
whole dictionary (analyze takes minutes and needs only W_U), and interventions sit above analysis in the
stage order, so analyze may not import them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from backend.common.errors import UserError
from backend.common.layout import dict_dir, load_run
from backend.interventions.edits import Edit


@dataclass
class EditOptions:
    """How `intervene contexts|text|steer` edit the chosen features (the command line's view of an `Edit`)."""

    op: Literal["zero", "mean", "clamp", "scale", "steer"] = "zero"
    """zero | mean (the feature's mean over all tokens of the run) | clamp | scale | steer (add value * W_dec[i])."""
    value: float | None = None
    """Clamp value, scale factor or steering strength."""
    relative: bool = False
    """--value is a multiple of the feature's max activation over the run (a scale that transfers between features)."""
    positions: str = "all"
    """all | prompt | generated | comma-separated token positions."""
    include_special: bool = False
    """Also edit position 0 (BOS) and special tokens, left alone by default as in training and analysis."""
    error_term: bool = True
    """Keep the reconstruction error x - decode(f) (SAELens' splice: no edit gives the clean logits)."""

    def edit(self, features: list[int], value: float | None = None) -> Edit:
        return Edit(tuple(features), self.op, self.value if value is None else value, relative=self.relative,
                    positions=parse_positions(self.positions), include_special=self.include_special)


@dataclass
class ContextsOptions(EditOptions):
    """One feature's edit on its own top contexts."""

    n: int = 20
    """Top contexts, as many as the feature page shows."""


@dataclass
class SteerOptions(EditOptions):
    """Clean and steered continuations of a prompt."""

    op: Literal["zero", "mean", "clamp", "scale", "steer"] = "steer"
    """zero | mean | clamp | scale | steer (add value * W_dec[i]): steering by default."""
    tokens: int = 40
    """New tokens per row: enough to see a topic change, short enough to stream in seconds."""
    sweep: list[float] | None = None
    """Strengths to try side by side (5 is a readable table; with --relative: multiples of the max activation);
    the first feature is steered."""


def parse_positions(text: str | None):
    """all | prompt | generated | comma-separated positions."""
    if text is None or text in ("all", "prompt", "generated"):
        return text or "all"
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise UserError(f"--positions must be all, prompt, generated or comma-separated integers, not {text!r}") from None


def parse_features(text: str) -> list[int]:
    """--features: comma-separated feature ids, at least one."""
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--features must be comma-separated integers, not {text!r}") from None
    if not out:
        raise UserError("--features is empty")
    return out


def parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated numbers, not {text!r}") from None


def _setup(run: str, dict_name: str, device: str, edit: Edit | None = None, text: str | None = None):
    """(lm, dictionary, run meta, feature stats) of a run's dictionary; what can be checked without the model
    (the dictionary, the features, an empty text) is checked before it loads."""
    from backend.dictionaries import load_dictionary
    from backend.interventions.edits import check_features
    from backend.interventions.run_data import RunData
    from backend.model.loading import load_model

    meta = load_run(run)
    folder = dict_dir(run, dict_name)
    if not (folder / "cfg.json").is_file():
        raise UserError(f"no dictionary {dict_name!r} in {run}")
    d = load_dictionary(folder)
    if edit is not None:
        check_features(edit.features, d.d_sae)
    if text is not None and not text.strip():
        raise UserError("the prompt is empty: type or paste some text")
    lm = load_model(meta["model"], device=device)
    return lm, d.to(lm.device), meta, RunData(run, dict_name).stats()


def run_effects(run: str, dict_name: str, cfg=None, device: str = "auto") -> Path:
    """Write effects.parquet with an `EffectsConfig` (default: every alive feature, 20 contexts)."""
    from backend.interventions.effects_store import EffectsConfig, write_effects

    load_run(run)
    out = write_effects(run, dict_name, cfg or EffectsConfig(), device=device)
    print(f"written: {out}")
    return out


def _fmt_tokens(tokens: list[str], values: list[float]) -> str:
    return ", ".join(f"{t!r} {v:+.2f}" for t, v in zip(tokens[:3], values[:3]))


def run_contexts(run: str, dict_name: str, feature: int, edit: Edit | None = None, n: int = 20,
                 error_term: bool = True, device: str = "auto") -> None:
    from backend.interventions.effects import top_context_effects

    lm, d, _, _ = _setup(run, dict_name, device, edit=edit or Edit((int(feature),)))
    fe = top_context_effects(lm, d, run, dict_name, feature, edit=edit, n=n, error_term=error_term)
    if not fe.contexts:
        print(f"feature {feature} has no top contexts (it never fires)")
        return
    print(f"{fe.edit} on the top {len(fe.contexts)} contexts of feature {feature} ({fe.seconds:.1f} s): "
          f"loss change at peak {fe.at_peak:+.4f} nats, after peak {fe.after_peak:+.4f} nats")
    print("  rank  loss change at peak (after)   the next token's probability clean -> ablated   context (peak in [[ ]])")
    for c in fe.contexts:
        row = c.table.iloc[c.peak]
        toks = c.table["token"].tolist()
        before, after = "".join(toks[:c.peak])[-45:], "".join(toks[c.peak + 1:])[:25]
        text = f"{before}[[{row['token']}]]{after}".replace("\n", "⏎")
        probs = (f"p({row['next_token']!r}) {np.exp(-row['loss_clean']):.3f} -> {np.exp(-row['loss_edited']):.3f}"
                 if np.isfinite(row["loss_clean"]) else "(last token)")
        print(f"  #{c.rank:<3} {c.at_peak:+.3f} ({c.after_peak:+.3f})  {probs:<34}  {text}")


def run_text(run: str, dict_name: str, text: str, edit: Edit, error_term: bool = True, device: str = "auto") -> None:
    from backend.interventions.effects import text_effects

    lm, d, meta, stats = _setup(run, dict_name, device, edit=edit, text=text)
    eff = text_effects(lm, d, meta["hook"], text, edit, stats=stats, error_term=error_term)
    print(f"{eff.edit}{'' if error_term else ' (no error term)'}: mean loss change {eff.mean_loss_change:+.4f} nats "
          f"over {len(eff.tokens) - 1} predictions ({eff.seconds:.2f} s)")
    print(f"{'pos':>4} {'token':<16} {'act':>7} {'next':<14} {'dloss':>8} {'KL':>8}  promoted / suppressed (by probability)")
    for _, r in eff.table.iterrows():
        dl = "" if np.isnan(r["loss_change"]) else f"{r['loss_change']:+.3f}"
        print(f"{r['pos']:>4} {r['token']!r:<16} {r['act']:>7.2f} {r['next_token']!r:<14} {dl:>8} {r['kl']:>8.4f}  "
              f"{_fmt_tokens(r['promoted_prob'], r['promoted_prob_values'])} / "
              f"{_fmt_tokens(r['suppressed_prob'], r['suppressed_prob_values'])}")


def run_steer(run: str, dict_name: str, prompt: str, edit: Edit, n_new: int = 40, sampling=None,
              sweep: list[float] | None = None, error_term: bool = True, device: str = "auto") -> None:
    from backend.interventions import steer as st

    lm, d, meta, stats = _setup(run, dict_name, device, edit=edit, text=prompt)
    sampling = sampling or st.Sampling()
    if sweep:
        f = edit.features[0]
        df = st.sweep(lm, d, meta["hook"], prompt, f, sweep, relative=edit.relative, n_new=n_new, sampling=sampling,
                      stats=stats, error_term=error_term)
        unit = " x max act" if edit.relative else ""
        print(f"steering feature {f} from {prompt!r} ({n_new} tokens; KL of the first generated token):")
        for _, r in df.iterrows():
            name = "clean" if r["strength"] == 0 else f"{r['strength']:g}{unit}"
            print(f"  {name:>16}  KL {r['kl_first']:7.4f}  {r['text']!r}")
        return
    shown = ["", ""]
    last = None
    print(f"prompt: {prompt!r}\nedit:   {edit.describe()}")
    for last in st.generate_rows(lm, d, meta["hook"], prompt, [None, edit], n_new, sampling, stats, error_term):
        shown = last.texts
    print(f"clean:   {shown[0]!r}\nsteered: {shown[1]!r}")
    if last is not None:
        print(f"{last.step + 1} tokens per row in {last.seconds:.1f} s ({(last.step + 1) / max(last.seconds, 1e-9):.1f} "
              "tokens/s each, clean and steered in one batch)", file=sys.stderr)
