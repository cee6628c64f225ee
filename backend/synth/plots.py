"""Plotly figures of the synthetic benchmark, from its results table alone (pure: no Streamlit, no files read).

`synth_figures(results)` is what the CLI writes to figures/*.html and what the Compare page shows:
- `mcc_vs_flops`: latent MCC against training FLOPs and against inference FLOPs per sample (log x), one
  colour per method, at the reference cell, one row of panels per setting; mean over seeds, std as error bar.
- `mcc_gap_<setting>`: heat map over (K, M) of mean latent MCC of a method minus the SAE's, a dropdown to pick
  the method, and the compressed-sensing bound M = K ln(N/K) drawn on it (cells above it should be recoverable).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from backend.synth.problems import cs_bound

BASELINE = "sae"


def reference_cell(results: pd.DataFrame) -> tuple[int, int]:
    """(M, K) of the reference cell: the one run in the most settings (then with the most rows)."""
    g = results.groupby(["m", "k"]).agg(n_settings=("setting", "nunique"), rows=("method", "size"))
    best = g.sort_values(["n_settings", "rows"], ascending=False).index[0]
    return int(best[0]), int(best[1])


def mcc_vs_flops(results: pd.DataFrame, m: int | None = None, k: int | None = None) -> go.Figure:
    """Latent MCC vs training FLOPs (left) and inference FLOPs per sample (right) at one (M, K) cell."""
    import plotly.express as px

    if m is None or k is None:
        m, k = reference_cell(results)
    df = results[(results.m == m) & (results.k == k)]
    long = pd.concat([
        df.assign(kind="training FLOPs", flops=df.train_flops.astype(float)),
        df.assign(kind="inference FLOPs per sample", flops=df.infer_flops_per_sample.astype(float)),
    ])
    agg = (long.groupby(["setting", "method", "kind"], sort=False)
           .agg(flops=("flops", "mean"), mcc_latent=("mcc_latent", "mean"), mcc_std=("mcc_latent", "std"),
                seeds=("seed", "nunique"))
           .reset_index())
    agg["mcc_std"] = agg["mcc_std"].fillna(0.0)
    agg.loc[agg.flops <= 0, "flops"] = np.nan  # nothing trained (the dictionary was given): no point on a log axis
    n = int(results.n.iloc[0]) if len(results) else 0
    fig = px.scatter(agg, x="flops", y="mcc_latent", color="method", symbol="method", error_y="mcc_std",
                     facet_col="kind", facet_row="setting", log_x=True, hover_data=["seeds"],
                     category_orders={"kind": ["training FLOPs", "inference FLOPs per sample"]},
                     title=f"Latent MCC against compute at N={n}, M={m}, K={k} (mean over seeds, std as bars)"
                     "<br><sup>methods that train nothing (dictionary given) have no point on the training axis</sup>")
    fig.update_traces(marker_size=11)
    fig.update_xaxes(matches=None, showticklabels=True, title_text="FLOPs (log)")
    fig.update_yaxes(title_text="latent MCC")
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    fig.update_layout(height=300 * max(1, agg.setting.nunique()) + 120)
    return fig


def gap_grid(results: pd.DataFrame, method: str, setting: str = "unknown", metric: str = "mcc_latent") -> pd.DataFrame:
    """Mean over seeds of `metric`(method) - `metric`(SAE) per cell: rows M (ascending), columns K."""
    df = results[results.setting == setting]
    mean = df.groupby(["method", "m", "k"])[metric].mean()
    if method not in mean.index.get_level_values(0) or BASELINE not in mean.index.get_level_values(0):
        return pd.DataFrame()
    diff = (mean.loc[method] - mean.loc[BASELINE]).dropna()
    return diff.unstack("k").sort_index()


def gap_heatmap(results: pd.DataFrame, setting: str = "unknown", methods: list[str] | None = None,
                method: str | None = None) -> go.Figure:
    """Heat map of latent MCC (method - SAE) over (K, M), one trace per method behind a dropdown, with the
    compressed-sensing bound M = K ln(N/K)."""
    df = results[results.setting == setting]
    if methods is None:
        methods = [x for x in dict.fromkeys(df.method) if x != BASELINE]
    grids = {x: gap_grid(results, x, setting) for x in methods}
    grids = {x: g for x, g in grids.items() if not g.empty}
    fig = go.Figure()
    if not grids:
        fig.update_layout(title=f"no grid with the SAE and another method in setting {setting!r}")
        return fig
    first = method if method in grids else next(iter(grids))
    lim = max(float(np.nanmax(np.abs(g.to_numpy()))) for g in grids.values()) or 1.0
    for name, g in grids.items():
        z = g.to_numpy()
        fig.add_trace(go.Heatmap(
            x=list(g.columns), y=list(g.index), z=z, zmin=-lim, zmax=lim, colorscale="RdBu", zmid=0,
            text=np.vectorize(lambda v: "" if np.isnan(v) else f"{v:+.2f}")(z), texttemplate="%{text}",
            colorbar=dict(title="MCC - SAE"), name=name, visible=name == first,
            hovertemplate="K=%{x}<br>M=%{y}<br>" + name + " - sae: %{z:+.3f}<extra></extra>"))
    n = int(df.n.iloc[0])
    ks_all = sorted({k for g in grids.values() for k in g.columns})
    ms_all = sorted({m for g in grids.values() for m in g.index})
    kk = np.linspace(max(0.5, ks_all[0] - 0.5), min(n, ks_all[-1] + 0.5), 100)
    fig.add_trace(go.Scatter(x=kk, y=[cs_bound(n, k) for k in kk], mode="lines", name="M = K ln(N/K)",
                             line=dict(color="black", width=3, dash="dash"), visible=True))
    buttons = [dict(label=name, method="update",
                    args=[{"visible": [t == name for t in grids] + [True]},
                          {"title": _gap_title(name, setting, n)}])
               for name in grids]
    fig.update_layout(
        title=_gap_title(first, setting, n), xaxis_title="K (active sources)", yaxis_title="M (dimensions)",
        updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=1.02, yanchor="bottom",
                          active=list(grids).index(first))],
        yaxis=dict(range=[ms_all[0] - 1, ms_all[-1] + 1]), xaxis=dict(range=[ks_all[0] - 0.5, ks_all[-1] + 0.5]),
        legend=dict(x=0, y=-0.15, orientation="h"), height=600, margin=dict(t=110))
    return fig


def _gap_title(method: str, setting: str, n: int) -> str:
    return (f"Latent MCC, {method} minus SAE ({setting}, N={n}, mean over seeds)<br><sup>above the dashed line "
            "M = K ln(N/K) compressed sensing says the codes are recoverable</sup>")


def synth_figures(results: pd.DataFrame) -> dict[str, go.Figure]:
    """Every figure of the benchmark by name: `mcc_vs_flops` and one `mcc_gap_<setting>` per setting with a grid."""
    figs = {"mcc_vs_flops": mcc_vs_flops(results)}
    for setting, df in results.groupby("setting", sort=False):
        if df[["m", "k"]].drop_duplicates().shape[0] > 1:
            figs[f"mcc_gap_{setting}"] = gap_heatmap(results, setting, method="sc_fista")  # the headline comparison
    return figs


def write_figures(figs: dict[str, go.Figure], folder: str | Path) -> None:
    """Each figure as <name>.html next to one shared plotly.min.js, so the pages open offline."""
    from plotly.offline import get_plotlyjs

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plotly.min.js").write_text(get_plotlyjs(), encoding="utf-8")
    for name, fig in figs.items():
        fig.write_html(folder / f"{name}.html", include_plotlyjs="plotly.min.js", full_html=True)
