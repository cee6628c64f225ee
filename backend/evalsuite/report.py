"""Printing the evaluation suite: one dictionary's record as a few lines, several as a Markdown table."""

from __future__ import annotations

import pandas as pd

from backend.store.evaluations import summary_row


def _f(v, fmt=".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and v != v) else format(v, fmt)


def format_evaluation(record: dict) -> str:
    """A record (evaluate_dictionary's return) as text: each part's headline and its time."""
    r, p, sec = summary_row(record), record.get("parts", {}), record.get("seconds", {})
    lines = [f"{record['dictionary']} ({r['kind']}, d_sae {record.get('d_sae')})"]
    if "core" in p:
        lines.append(f"  core       l0 {_f(r.get('l0'), '.1f')}  EV {_f(r.get('explained_variance'))} (with massive tokens "
                     f"{_f(r.get('explained_variance_all'))})  dead {_f(r.get('dead_fraction'))}  CE score "
                     f"{_f(r.get('ce_loss_score'))}  delta_ce {_f(r.get('delta_ce'))}  KL {_f(r.get('kl_div'))}")
    if "tasks" in p:
        t = p["tasks"]
        lines.append(f"  tasks      clean {_f(t['clean']['accuracy'])}  spliced {_f(t['spliced']['accuracy'])} (retained "
                     f"{_f(t['spliced']['retained'], '.1%')} [{_f(t['spliced']['retained_low'], '.1%')}, "
                     f"{_f(t['spliced']['retained_high'], '.1%')}])  with error term {_f(t['spliced_error']['accuracy'])}"
                     f"  ({t['n_items']} items)")
    if "probing" in p:
        ks = [str(k) for k in p["probing"]["ks"]]
        for task in ("pos", "source"):
            mean = (p["probing"].get(task) or {}).get("mean") or {}
            raw = ((p["probing"].get("raw") or {}).get(task) or {}).get("mean") or {}
            if mean:
                lines.append(f"  probing    {task:<6} " + "  ".join(f"k={k} {_f(mean.get(k))}" for k in ks)
                             + f"   raw: k={ks[0]} {_f(raw.get(ks[0]))}, all {_f(raw.get('all'))}")
        if "pos_note" in p["probing"]:
            lines.append(f"  probing    pos: {p['probing']['pos_note']}")
    if "nmi" in p:
        thr = p["nmi"]["threshold"]
        for cat in ("pos", "source"):
            s = p["nmi"].get(cat)
            if s:
                lines.append(f"  nmi        {cat:<6} NMI > {thr}: " + ", ".join(
                    f"{who} {_f(v.get('fraction_above'), '.1%')} (median {_f(v.get('median'))})" for who, v in s.items()))
    if "stability" in p:
        s = p["stability"]["dictionary"]
        lines.append(f"  stability  answer position: paraphrase {_f(s['answer']['paraphrase'])} vs unrelated "
                     f"{_f(s['answer']['unrelated'])}; pooled {_f(s['pooled']['paraphrase'])} vs "
                     f"{_f(s['pooled']['unrelated'])} ({s['n_problems']} problems, {s['n_paraphrases']} paraphrases)")
    lines.append("  seconds    " + ", ".join(f"{k} {v:.1f}" for k, v in sec.items()))
    return "\n".join(lines)


def markdown_table(df: pd.DataFrame, columns: dict[str, str], digits: int = 3) -> str:
    """The columns {name: header} of df as a Markdown table (numbers rounded, missing as -)."""
    head = "| " + " | ".join(columns.values()) + " |"
    sep = "|" + "---|" * len(columns)
    rows = []
    for _, r in df.iterrows():
        cells = []
        for c in columns:
            v = r.get(c)
            cells.append("-" if v is None or (isinstance(v, float) and v != v) else
                         (f"{v:.{digits}f}" if isinstance(v, float) else str(v)))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *rows])
