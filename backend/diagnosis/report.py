"""The experiment's files and figure: items/summary/tests Parquet, summary.json, chart.html; the printed table.

    <run>/diagnosis/eval/items.parquet    one row per (dict, task, item, condition)   docs/CONTRACTS.md
                         summary.parquet  one row per (family, dict, condition)
                         tests.parquet    one row per (family, dict, comparison)
                         summary.json     config (settings, thresholds, timings) + the two tables
                         chart.html       accuracy per condition with 95% intervals (Plotly, offline)
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from backend.common.atomic import atomic_path, read_json, write_json
from backend.common.errors import UserError

ITEMS, SUMMARY, TESTS, SUMMARY_JSON, CHART = "items.parquet", "summary.parquet", "tests.parquet", "summary.json", "chart.html"
COLORS = {"original": "#7f7f7f", "flagged": "#d62728", "all": "#1f77b4", "random": "#2ca02c", "llm": "#9467bd",
          "ablate": "#ff7f0e"}
LABELS = {"original": "(a) original", "flagged": "(b) rules at flagged tokens", "all": "(c) rules everywhere",
          "random": "(d) rules at random tokens", "llm": "LLM rewrite of flagged", "ablate": "ablate off-domain features"}


def _records(df: pd.DataFrame) -> list[dict]:
    return df.astype(object).where(df.notna(), None).to_dict("records")


def write_results(result, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in ((ITEMS, result.items), (SUMMARY, result.summary), (TESTS, result.tests)):
        with atomic_path(folder / name) as tmp:
            df.to_parquet(tmp, index=False)
    write_json(folder / SUMMARY_JSON, {"config": result.config, "summary": _records(result.summary),
                                       "tests": _records(result.tests)})
    with atomic_path(folder / CHART) as tmp:
        figure(result.summary).write_html(tmp, include_plotlyjs=True, full_html=True)
    return folder


def read_results(folder: str | Path) -> dict:
    """{"items", "summary", "tests": DataFrames, "config": dict} of a finished `diagnose-eval`."""
    folder = Path(folder)
    if not (folder / SUMMARY).is_file():
        raise UserError(f"no diagnosis results in {folder}; run `python -m backend diagnose-eval` first")
    meta = read_json(folder / SUMMARY_JSON) if (folder / SUMMARY_JSON).is_file() else {}
    return {"items": pd.read_parquet(folder / ITEMS), "summary": pd.read_parquet(folder / SUMMARY),
            "tests": pd.read_parquet(folder / TESTS), "config": meta.get("config", {})}


def figure(summary: pd.DataFrame):
    """Accuracy of each condition per family (rows) and dictionary (x), with bootstrap 95% intervals."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fams = list(dict.fromkeys(summary["family"]))
    fig = make_subplots(rows=len(fams), cols=1, subplot_titles=fams, shared_xaxes=False,
                        vertical_spacing=min(0.08, 0.5 / max(len(fams), 1)))
    for i, fam in enumerate(fams, start=1):
        s = summary[summary["family"] == fam]
        for cond in [c for c in COLORS if c in set(s["condition"])]:
            c = s[s["condition"] == cond]
            fig.add_trace(go.Bar(x=c["dict"], y=c["accuracy"], name=LABELS[cond], marker_color=COLORS[cond],
                                 legendgroup=cond, showlegend=i == 1,
                                 error_y=dict(type="data", symmetric=False, array=c["acc_high"] - c["accuracy"],
                                              arrayminus=c["accuracy"] - c["acc_low"]),
                                 hovertemplate="%{x}: %{y:.3f}<extra>" + LABELS[cond] + "</extra>"), row=i, col=1)
        fig.update_yaxes(title_text="accuracy", range=[0, 1], row=i, col=1)
    fig.update_layout(barmode="group", height=260 * len(fams) + 80, margin=dict(l=50, r=20, t=40, b=30),
                      legend=dict(orientation="h", y=1.0, yanchor="bottom", x=0),
                      title="Accuracy per condition (bootstrap 95%)")
    return fig


def format_table(result) -> str:
    """Accuracy per family, dictionary and condition, then the paired tests, as printed by `diagnose-eval`."""
    s, t = result.summary, result.tests
    lines = [f"{'family':<16}{'dict':<15}{'condition':<10}{'n':>5}{'accuracy [95%]':>24}{'p(right)':>10}"
             f"{'flagged':>9}{'changed':>9}{'rejected':>9}"]
    for _, r in s.iterrows():
        lines.append(f"{r['family']:<16}{r['dict']:<15}{r['condition']:<10}{r['n_items']:>5}"
                     f"{r['accuracy']:>9.3f} [{r['acc_low']:.3f}, {r['acc_high']:.3f}]{r['p_correct']:>10.3f}"
                     f"{r['flag_rate']:>9.1%}{r['changed_rate']:>9.1%}{r['n_rejected']:>9}")
    lines.append("")
    lines.append(f"{'family':<16}{'dict':<15}{'b - a':<20}{'diff [95%]':>26}{'McNemar p':>11}{'a only':>8}{'b only':>8}")
    for _, r in t.iterrows():
        lines.append(f"{r['family']:<16}{r['dict']:<15}{r['b'] + ' - ' + r['a']:<20}"
                     f"{r['diff']:>+9.3f} [{r['diff_low']:+.3f}, {r['diff_high']:+.3f}]{r['mcnemar_p']:>11.3f}"
                     f"{r['n_a_only']:>8}{r['n_b_only']:>8}")
    return "\n".join(lines)
