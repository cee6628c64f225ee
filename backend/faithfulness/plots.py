"""Plotly figures of faithfulness results: the AOPC curves and the top-5% ablation drop (the app and aopc.html).

    curves   x = q (% of units removed or kept, log scale), y = mean comprehensiveness (left) and sufficiency
             (right) over the items; one line per dictionary (its features) and for IG tokens, random features
             and random tokens. The AOPC is the mean height of a curve over the q's.
    drop     accuracy drop (points) with the top 5% removed, per method, with its paired 95% interval and
             AnchorX's 27.4 (SAE features) and 11.8 (IG) marked.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from backend.common.atomic import atomic_path
from backend.faithfulness import store

STYLE = {"ig": ("IG tokens", "#d62728", "dash"), "occlusion": ("occlusion tokens", "#e6550d", "longdash"),
         "random_features": ("random features", "#7f7f7f", "dot"), "random_tokens": ("random tokens", "#bcbd22", "dashdot")}
PALETTE = ["#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]


def _label(method: str, dictionary: str, kind: str | None) -> str:
    if method == "features":
        return f"{dictionary} features" + (f" ({kind})" if kind and kind != dictionary else "")
    return STYLE[method][0] + ("" if method in store.TOKEN_METHODS else f" · {dictionary}")


def aopc_figure(items: pd.DataFrame, task: str | None = None) -> go.Figure:
    """Comprehensiveness and sufficiency against q for one task (None: every item of every task pooled)."""
    rows = items if task is None else items[items["task"] == task]
    if task is None:
        rows = rows.assign(task="all tasks")
    pts = store.curves(rows)
    kinds = rows.groupby("dictionary")["kind"].first().to_dict() if "kind" in rows else {}
    fig = make_subplots(rows=1, cols=2, subplot_titles=("comprehensiveness (higher: the rationale was needed)",
                                                        "sufficiency (lower: the rationale was enough)"))
    colours = {d: PALETTE[i % len(PALETTE)] for i, d in enumerate(dict.fromkeys(pts["dictionary"]))} if len(pts) else {}
    for (d, method), g in pts.groupby(["dictionary", "method"], sort=False):
        if method == "random_features" and len(colours) > 1:
            colour, dash = colours[d], "dot"
        elif method in STYLE:
            _, colour, dash = STYLE[method]
        else:
            colour, dash = colours[d], "solid"
        name = _label(method, d, kinds.get(d))
        for col, y in ((1, "comp"), (2, "suff")):
            fig.add_trace(go.Scatter(x=g["q"], y=g[y], mode="lines+markers", name=name, legendgroup=name, showlegend=col == 1,
                                     line=dict(color=colour, dash=dash),
                                     hovertemplate=f"{name}<br>q %{{x}}%<br>{y} %{{y:.3f}}<extra></extra>"), row=1, col=col)
    fig.update_xaxes(type="log", title_text="q: % of units removed (left) or kept (right)")
    fig.update_yaxes(title_text="p(y|x) - p(y|x perturbed)", row=1, col=1)
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=50, b=10), legend=dict(orientation="h", y=-0.25),
                      title=f"ERASER curves{'' if task is None else f' · {task}'} (AOPC = mean over q)")
    return fig


def drop_figure(summary: pd.DataFrame, task: str = "all tasks") -> go.Figure:
    """Accuracy drop with the top 5% removed (points) per dictionary and method, AnchorX's figures as lines."""
    s = summary[summary["task"] == task] if task in set(summary["task"]) else summary
    s = s.dropna(subset=["drop_top5"]) if "drop_top5" in s else s.iloc[0:0]
    s = s[(s["method"] == "features") | ~s.duplicated(["task", "method"])]  # the token side once
    labels = [_label(m, d, k) for m, d, k in zip(s["method"], s["dictionary"], s.get("kind", [None] * len(s)))]
    fig = go.Figure(go.Bar(x=labels, y=s["drop_top5"], error_y=dict(type="data", symmetric=False,
                                                                     array=s["drop_top5_high"] - s["drop_top5"],
                                                                     arrayminus=s["drop_top5"] - s["drop_top5_low"]),
                           marker_color=[STYLE.get(m, ("", "#1f77b4"))[1] for m in s["method"]],
                           hovertemplate="%{x}<br>drop %{y:.1f} points<extra></extra>"))
    for name, value in (("AnchorX SAE features", store.ANCHORX["features"]), ("AnchorX IG", store.ANCHORX["ig"])):
        fig.add_hline(y=value, line_dash="dot", annotation_text=f"{name}: {value}", annotation_position="top left")
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=50, b=10), yaxis_title="accuracy drop (points)",
                      title=f"Accuracy drop with the top 5% removed · {task} (paired bootstrap 95%)")
    return fig


def write_chart(run: str | Path) -> Path | None:
    """<run>/faithfulness/aopc.html: the pooled curves of every measured dictionary (plotly.js inlined: offline)."""
    items = store.read_all(run)
    if items.empty:
        return None
    dest = Path(run) / store.FAITH_DIR / store.CHART
    with atomic_path(dest) as tmp:
        aopc_figure(items).write_html(tmp, include_plotlyjs=True, full_html=True)
    return dest
