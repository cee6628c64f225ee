"""A tour, or any set of features, as one self-contained HTML file for people who will never run the app.

    python -m backend export --run data/demo --tour --out tour.html
    python -m backend export --run data/demo --dict topk --features 12,40 --out features.html

The file opens offline in any browser with nothing installed: the CSS is inline, plotly.js is inlined once
(`plotly.offline.get_plotlyjs()`, ~4.8 MB) and each chart is a `Plotly.newPlot` call on inline JSON. Per
feature (a stop of the tour): its label with where it came from and whether it was validated or scored, the
tour's note, density and activation figures, the activation histogram, the promoted and suppressed tokens
(a bar chart of logit effects) and the top contexts shaded by activation with the peak outlined.

Everything that comes from data (tokens, labels, notes, names) is text: `html.escape` before it enters the
markup and before it enters a chart (Plotly renders a few tags such as `<b>` in its labels and decodes the
entities back to the literal characters), and the chart JSON has `</` written as `<\\/`, so a token holding
`</script>` cannot close the script it sits in.
"""

from __future__ import annotations

import html
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from backend.common.atomic import atomic_path
from backend.common.errors import UserError
from backend.common.layout import load_run

ACT_RGB = (255, 127, 14)  # the app's activation orange
MIN_ALPHA = 0.08


@dataclass
class HtmlExportConfig:
    """What `python -m backend export` writes."""

    features: list[int] | None = None
    """Feature ids of --dict to export, in this order; None with --tour = the run's tour."""
    tour: bool = False
    """Export the run's tour (tour.json: its stops in order, with their notes)."""
    contexts: int = 10
    """Top contexts shown per feature: ten read in a minute and show the pattern."""
    title: str | None = None
    """Title of the page; None = "Tour of <run>" or "Features of <run>"."""


def esc(text) -> str:
    return html.escape(str(text), quote=True)


CSS = """
body{font:16px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:24px;color:#222}
h1{font-size:28px;margin:0 0 4px} .meta{color:#666;font-size:14px;margin-bottom:20px}
.stop{border:1px solid #ddd;border-radius:10px;padding:18px 22px;margin:22px 0;page-break-inside:avoid}
.stop h2{font-size:22px;margin:0 0 6px} .stop h2 small{color:#888;font-weight:400;font-size:15px}
.label{font-size:19px;margin:6px 0} .label .src{color:#888;font-size:13px;margin-left:8px}
.note{background:#f6f8fc;border-left:4px solid #1f4e99;padding:8px 12px;margin:10px 0;white-space:pre-wrap}
.facts{color:#555;font-size:14px;margin:6px 0 10px} .badge{display:inline-block;border-radius:4px;padding:0 6px;
font-size:13px;margin-left:6px;background:#eee} .badge.ok{background:#d8f0d8} .badge.bad{background:#f6d6d6}
.charts{display:flex;gap:16px;flex-wrap:wrap} .chart{flex:1 1 420px;min-width:320px;height:300px}
.fx-ctx{padding:4px 0;border-bottom:1px solid #eee;line-height:1.9;white-space:pre-wrap;word-break:break-word;font-size:17px}
.fx-tok{border-radius:3px} .fx-peak{outline:2px solid #1f4e99}
.fx-val{display:inline-block;min-width:3.6em;font:13px ui-monospace,monospace;color:#444;margin-right:.6em}
.fx-src{font-size:12px;color:#888;margin-right:.5em} h3{font-size:16px;margin:14px 0 4px}
"""


# --------------------------------------------------------------------------- pieces


def shade(value: float, vmax: float) -> str:
    if value <= 0 or vmax <= 0 or not math.isfinite(value):
        return "transparent"
    return f"rgba({ACT_RGB[0]},{ACT_RGB[1]},{ACT_RGB[2]},{min(1.0, max(MIN_ALPHA, value / vmax)):.2f})"


def shown(tok: str) -> str:
    return str(tok).replace("\r", "").replace("\n", "↵").replace("\t", "→")


def context_html(ctx: dict, vmax: float) -> str:
    """One context: value, source, every token escaped and shaded by its activation, the peak outlined."""
    tokens, acts, peak = list(ctx["tokens"]), list(ctx.get("acts") or []), ctx.get("peak")
    sep = "" if any(any(c.isspace() for c in t) for t in tokens) else " "  # word-level tokenizers drop spaces
    spans = []
    for i, tok in enumerate(tokens):
        a = float(acts[i]) if i < len(acts) else 0.0
        cls = "fx-tok fx-peak" if i == peak else "fx-tok"
        style = f' style="background:{shade(a, vmax)}" title="act {a:.3f}"' if a > 0 or i == peak else ""
        spans.append(f'<span class="{cls}"{style}>{esc(shown(tok))}</span>')
    src = f'<span class="fx-src">{esc(ctx["source"])}</span>' if ctx.get("source") else ""
    return f'<div class="fx-ctx"><span class="fx-val">{float(ctx.get("value", 0)):.2f}</span>{src}{sep.join(spans)}</div>'


def plot_script(div_id: str, fig) -> str:
    """A chart as a div plus an inline Plotly.newPlot call; `</` in the JSON is written `<\\/`."""
    spec = json.loads(fig.to_json())
    data = json.dumps(spec.get("data", [])).replace("</", "<\\/").replace("<!--", "<\\!--")
    layout = json.dumps(spec.get("layout", {})).replace("</", "<\\/").replace("<!--", "<\\!--")
    return (f'<div class="chart" id="{div_id}"></div><script>Plotly.newPlot("{div_id}",{data},{layout},'
            '{"displaylogo":false,"responsive":true});</script>')


def histogram_figure(dash: dict):
    import plotly.graph_objects as go

    edges, counts = list(dash.get("hist_edges") or []), list(dash.get("hist_counts") or [])
    fig = go.Figure()
    if len(edges) == len(counts) + 1 and counts:
        centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        fig.add_bar(x=centres, y=counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])], marker_color="#ff7f0e")
    fig.update_layout(title=dict(text=f"Activations (density {float(dash.get('density') or 0):.3%})", font=dict(size=14)),
                      height=300, margin=dict(l=10, r=10, t=40, b=10), bargap=0.02, showlegend=False,
                      xaxis_title="activation (tokens where it fires)", yaxis_title="tokens")
    return fig


def logit_figure(dash: dict):
    """Horizontal bars: the tokens the feature promotes (green) and suppresses (red), labels escaped."""
    import plotly.graph_objects as go

    top = list(zip(dash.get("top_logit_tokens") or [], dash.get("top_logit_values") or []))[:8]
    bottom = list(zip(dash.get("bottom_logit_tokens") or [], dash.get("bottom_logit_values") or []))[:8]
    rows = sorted(bottom + top, key=lambda tv: float(tv[1]))
    fig = go.Figure(go.Bar(x=[float(v) for _, v in rows], y=list(range(len(rows))), orientation="h",
                           marker_color=["#2ca02c" if float(v) > 0 else "#d62728" for _, v in rows]))
    fig.update_layout(title=dict(text="Logit effects: promoted and suppressed next tokens", font=dict(size=14)),
                      height=300, margin=dict(l=10, r=10, t=40, b=10), showlegend=False,
                      yaxis=dict(tickmode="array", tickvals=list(range(len(rows))),  # every token, repeats included
                                 ticktext=[esc(shown(t)) for t, _ in rows], tickfont=dict(size=11)))
    return fig


def label_status(run_dir, dictionary: str, feature: int) -> dict:
    """{"validation": status or None, "scores": {scorer: F1}} of a feature's current label (labels.duckdb)."""
    from backend.store.label_store import LabelStore

    ls = LabelStore(run_dir)
    if not ls.exists():
        return {"validation": None, "scores": {}}
    val = ls.validation_status(dictionary)
    val = val[val["feature"] == feature]
    sc = ls.scores(dictionary)
    sc = sc[sc["feature"] == feature]
    return {"validation": None if val.empty else str(val["status"].iloc[0]),
            "scores": {str(s): float(f) for s, f in zip(sc["scorer"], sc["f1"])}}


def stop_html(i: int, run_dir, stop: dict, n_contexts: int) -> str:
    from backend.labels.score import HOLD_F1
    from backend.store import query as store

    d, f = str(stop["dictionary"]), int(stop["feature"])
    dash = store.feature_dashboard(run_dir, d, f)
    status = label_status(run_dir, d, f)
    label = str(dash.get("label") or "")
    badges = []
    if status["validation"]:
        ok = status["validation"] in ("validated", "agreed")
        badges.append(f'<span class="badge {"ok" if ok else "bad"}">{esc(status["validation"])} by people</span>')
    for scorer, f1 in status["scores"].items():
        badges.append(f'<span class="badge {"ok" if f1 >= HOLD_F1 else "bad"}">{esc(scorer)} F1 {f1:.2f}'
                      f'{" (holds)" if f1 >= HOLD_F1 else ""}</span>')
    label_line = (f'<div class="label">Label: <b class="label-text">{esc(label)}</b><span class="src">'
                  f'{esc(dash.get("label_source") or "")}</span>{"".join(badges)}</div>' if label
                  else '<div class="label"><i>No label yet.</i></div>')
    note = f'<div class="note">{esc(stop["note"])}</div>' if stop.get("note") else ""
    top = list((dash.get("contexts") or {}).get("top") or [])[:n_contexts]
    vmax = float(dash.get("max_act") or 0.0)
    ctxs = "".join(context_html(c, vmax) for c in top) or "<p><i>No contexts: this feature never fired.</i></p>"
    charts = plot_script(f"hist-{i}", histogram_figure(dash)) + plot_script(f"logits-{i}", logit_figure(dash))
    facts = (f"fires on {int(dash.get('n_fires') or 0):,} tokens (density {float(dash.get('density') or 0):.3%}) · "
             f"max activation {float(dash.get('max_act') or 0):.3g} · mean {float(dash.get('mean_act') or 0):.3g}")
    return (f'<section class="stop" id="stop-{i + 1}"><h2>{i + 1}. Feature {f} <small>of {esc(d)}</small></h2>'
            f'{label_line}{note}<div class="facts">{facts}</div><div class="charts">{charts}</div>'
            f'<h3>Top {len(top)} contexts (shaded by activation, the peak outlined)</h3>'
            f'<div class="fx-contexts">{ctxs}</div></section>')


# --------------------------------------------------------------------------- the page


def chosen_stops(run_dir, dictionary: str | None = None, features: list[int] | None = None, tour: bool = False) -> list[dict]:
    """The stops to export: the run's tour, or `features` of `dictionary` (with no notes)."""
    from backend.store import query as store
    from backend.store.tour import stops

    if tour:
        if features is not None:
            raise UserError("pass --tour or --features, not both")
        chosen = stops(run_dir)
        if not chosen:
            raise UserError(f"the tour of {run_dir} is empty: add features to it from their page in the app")
        return chosen
    if not dictionary or not features:
        raise UserError("say what to export: --tour, or --dict NAME --features 1,2,...")
    return [{"dictionary": dictionary, "feature": store.check_feature(run_dir, dictionary, f), "note": ""} for f in features]


def render_html(run_dir, stops: list[dict], title: str | None = None, n_contexts: int = 10) -> str:
    """The whole page as one string."""
    import plotly.offline

    meta = load_run(run_dir)
    run_name = Path(run_dir).resolve().name
    title = title or f"Features of {run_name}"
    toc = "".join(f'<li><a href="#stop-{i + 1}">Feature {int(s["feature"])} of {esc(s["dictionary"])}</a></li>'
                  for i, s in enumerate(stops))
    body = "".join(stop_html(i, run_dir, s, n_contexts) for i, s in enumerate(stops))
    model = str(meta.get("model") or "?")
    model = model.rstrip("/").rsplit("/", 1)[-1] if model.startswith(("/", ".", "~")) else model  # a folder: its name
    facts = (f"{esc(model)} · <code>{esc(meta.get('hook'))}</code> · {int(meta.get('n_tokens', 0)):,} tokens of "
             f"{esc(meta.get('corpus'))} · exported {time.strftime('%Y-%m-%d %H:%M')} · {len(stops)} features")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style><script>{plotly.offline.get_plotlyjs()}</script></head><body>"
            f"<h1>{esc(title)}</h1><div class=\"meta\">{facts}</div><ol>{toc}</ol>{body}</body></html>")


def export_html(run_dir: str | Path, out: str | Path, dictionary: str | None = None, features: list[int] | None = None,
                tour: bool = False, title: str | None = None, n_contexts: int = HtmlExportConfig.contexts) -> Path:
    """Write the page for the run's tour (`tour`) or `features` of `dictionary` to `out`, atomically; returns `out`."""
    load_run(run_dir)
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out must be an .html file, got {out}")
    if not 1 <= int(n_contexts) <= 100:
        raise UserError(f"--contexts must be in 1..100, got {n_contexts}")
    if tour and title is None:
        title = f"Tour of {Path(run_dir).resolve().name}"
    page = render_html(run_dir, chosen_stops(run_dir, dictionary, features, tour), title=title, n_contexts=int(n_contexts))
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out
