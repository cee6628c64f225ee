"""Pure builders for the explorer's HTML and Plotly figures (no Streamlit calls, so tests can check them).

Token text is user data (a corpus can hold `<script>`): every token and every label goes through
`html.escape` before it enters markup, and the markup is rendered with `st.html`, whose DOMPurify
pass drops scripts anyway. Shading is an inline `rgba` background whose alpha is act / max.
"""

from __future__ import annotations

import html
import math
import re
from urllib.parse import urlencode

import numpy as np
import plotly.graph_objects as go

ACT_RGB = (255, 127, 14)  # orange, as SAE-Vis shades activations
POS_RGB = (44, 160, 44)  # positive logit effects
NEG_RGB = (214, 39, 40)  # negative logit effects
PEAK_OUTLINE = "2px solid #1f4e99"
CSS = f"""
.fx-contexts {{font-size:14px}}
.fx-ctx {{padding:3px 0;border-bottom:1px solid #eee;line-height:1.85;white-space:pre-wrap;word-break:break-word}}
.fx-ctx-empty {{color:#777;font-style:italic}}
.fx-tok {{border-radius:3px;padding:1px 0}}
.fx-peak {{outline:{PEAK_OUTLINE};outline-offset:0}}
.fx-val {{display:inline-block;min-width:3.6em;font:12px ui-monospace,monospace;color:#444;margin-right:.6em}}
.fx-src {{font-size:11px;color:#888;margin-right:.5em}}
.fx-prompt {{font-size:15px;line-height:1.9;white-space:pre-wrap;word-break:break-word;padding:8px;
  border:1px solid #e6e6e6;border-radius:6px}}
.fx-pt-wrap {{max-height:520px;overflow:auto}}
.fx-prompt-table {{border-collapse:collapse;font-size:13px}}
.fx-prompt-table th {{text-align:left;padding:2px 8px}}
.fx-prompt-table td {{padding:2px 8px;white-space:nowrap}}
.fx-prompt-table tr.fx-prow {{border-top:1px solid #eee}}
.fx-prompt-table code {{white-space:pre}}
.fx-pos, .fx-none {{color:#999}}
.fx-a {{font:11px ui-monospace,monospace;color:#333}}
.fx-lab {{font-size:11px;color:#555;max-width:14em;overflow:hidden;text-overflow:ellipsis}}
"""  # injected once per page by the frame (explorer/app.py)
MIN_ALPHA = 0.08  # a firing token is never shaded fainter than this, so small activations stay visible
CHART_FONT = dict(size=11)


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def md_text(text) -> str:
    """Text for a widget label that Streamlit renders as Markdown (page links, buttons): every Markdown
    character backslash-escaped, so user text such as a label never becomes a link, emphasis or markup."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$:])", r"\\\1", str(text))


def model_label(name) -> str:
    """A model as people say it: the folder or file name of a local path, the hub id or alias as is."""
    name = str(name or "?")
    return name.rstrip("/").rsplit("/", 1)[-1] if name.startswith(("/", ".", "~")) else name


def show_token(tok: str) -> str:
    """Make whitespace visible inside a token: newline as ↵, tab as →, so a `\\n` token has a width."""
    return tok.replace("\r", "").replace("\n", "↵").replace("\t", "→")


def needs_separators(tokens: list[str]) -> bool:
    """Word-level tokenizers decode single tokens without their spaces: then join tokens with a space."""
    return bool(tokens) and not any(any(c.isspace() for c in t) for t in tokens)


def shade(value: float, vmax: float, rgb=ACT_RGB) -> str:
    if value <= 0 or vmax <= 0 or not math.isfinite(value):
        return "transparent"
    a = min(1.0, max(MIN_ALPHA, value / vmax))
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{a:.2f})"


def token_spans(tokens: list[str], acts, vmax: float | None = None, peak: int | None = None,
                skip: int = 0, what: str = "act", silent_spans: bool = True) -> str:
    """Inline spans, one per token: shaded by `acts`, `peak` outlined, the value in the hover title.

    Styling comes from the `CSS` classes (the frame injects them once), so a page of contexts stays
    small: a non-firing token is a bare `<span class="fx-tok">`, or with `silent_spans=False` plain text
    (a feature page's 20 contexts are ~800 tokens, most silent: a span each was ~60 ms of the browser's
    sanitising, styling and layout per click, issue 16). `skip` leading tokens are left out (position 0 /
    BOS in the prompt inspector).
    """
    acts = np.asarray(acts, dtype=np.float64) if acts is not None else np.zeros(len(tokens))
    if vmax is None:
        vmax = float(acts.max()) if len(acts) else 0.0
    sep = " " if needs_separators(tokens[skip:]) else ""
    parts = []
    for i in range(skip, len(tokens)):
        tok, a = tokens[i], float(acts[i]) if i < len(acts) else 0.0
        cls = "fx-tok fx-peak" if peak is not None and i == peak else "fx-tok"
        attrs = ""
        if a > 0 or cls != "fx-tok":
            attrs = f' style="background:{shade(a, vmax)}" title="{esc(f"{what} {a:.3f} | token {tok!r}")}"'
        text = show_token(tok)
        body = text.lstrip(" ")
        lead = text[: len(text) - len(body)] if body else ""  # " raise": the space goes before the span, so a
        body = body or text  # line never breaks inside a shaded token and leaves its outline behind
        if attrs or silent_spans:
            parts.append(f'{lead}<span class="{cls}"{attrs}>{esc(body)}</span>')
        else:
            parts.append(esc(text))
    return sep.join(parts)


def context_rows(contexts: list[dict], vmax: float, empty: str = "No contexts.", feature: int | None = None) -> str:
    """A block of contexts, one line each: value badge, source, shaded tokens with the peak outlined."""
    tag = f' data-feature="{int(feature)}"' if feature is not None else ""
    if not contexts:
        return f'<div class="fx-contexts fx-ctx-empty"{tag}>{esc(empty)}</div>'
    rows = []
    for c in contexts:
        value = float(c.get("value", 0.0))
        source = c.get("source") or ""
        src = f'<span class="fx-src">{esc(source)}</span>' if source else ""
        body = token_spans(list(c["tokens"]), c.get("acts"), vmax=vmax, peak=c.get("peak"), silent_spans=False)
        rows.append(f'<div class="fx-ctx"><span class="fx-val">{value:.2f}</span>{src}{body}</div>')
    return f'<div class="fx-contexts"{tag}>{"".join(rows)}</div>'


def plain_context(tokens: list[str], number: int | None = None, marked: int | None = None) -> str:
    """One context as plain escaped text: no shading or value, so a reader cannot tell whether the
    feature fires in it (the Validate page's blind judgements). `marked` underlines the token to judge:
    the peak of an activating window and the centre of a silent one look the same."""
    sep = " " if needs_separators(tokens) else ""
    body = sep.join(f'<u style="font-weight:600">{esc(show_token(t))}</u>' if i == marked else esc(show_token(t))
                    for i, t in enumerate(tokens))
    num = f'<span class="fx-val">{int(number)}.</span>' if number is not None else ""
    return f'<div class="fx-contexts"><div class="fx-ctx fx-plain">{num}{body}</div></div>'


def logit_table(tokens: list[str], values: list[float], positive: bool, title: str) -> str:
    """A compact two-column table of logit-effect tokens, shaded green (positive) or red (negative)."""
    rgb = POS_RGB if positive else NEG_RGB
    vals = [float(v) for v in values]
    vmax = max((abs(v) for v in vals), default=0.0)
    rows = []
    for t, v in zip(tokens, vals):
        rows.append(
            f'<tr><td style="padding:1px 6px"><code style="background:{shade(abs(v), vmax, rgb)};'
            f'color:#111;white-space:pre">{esc(show_token(t))}</code></td>'
            f'<td style="padding:1px 6px;text-align:right;font:12px ui-monospace,monospace">{v:+.3f}</td></tr>'
        )
    if not rows:
        rows.append('<tr><td style="color:#777">none</td></tr>')
    return (f'<table class="fx-logits" style="border-collapse:collapse;font-size:13px;width:100%">'
            f'<thead><tr><th colspan="2" style="text-align:left;padding:2px 6px;font-size:12px;color:#555">'
            f"{esc(title)}</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def side_by_side(*blocks: str) -> str:
    """Blocks of markup in equal columns, as one element: two `st.columns` of `st.html` are five elements for
    the browser to lay out, which on a feature page (drawn at every click) is time the reader waits."""
    cells = "".join(f'<div style="flex:1 1 0;min-width:0">{b}</div>' for b in blocks)
    return f'<div class="fx-side" style="display:flex;gap:1rem">{cells}</div>'


def feature_href(run: str, dict_name: str, feature: int) -> str:
    """Relative deep link to a feature page (relative, so it also works under a server base path)."""
    return "feature?" + urlencode({"run": run, "dict": dict_name, "feature": int(feature)})


def prompt_token_table(insp, labels: dict[int, str], run: str, dict_name: str, top_k: int = 5) -> str:
    """Every token of an inspected prompt with its top features (id, label, activation), each a link."""
    top = insp.top
    vmax = float(top["activation"].max()) if len(top) else 0.0
    by_pos = {p: g.sort_values("rank") for p, g in top.groupby("pos")}
    head = "".join(f"<th>#{r}</th>" for r in range(1, top_k + 1))
    rows = []
    for pos in range(1, len(insp.tokens)):  # position 0 is excluded (BOS, or the first token without one)
        cells = []
        g = by_pos.get(pos)
        for f, a in (zip(g["feature"].tolist(), g["activation"].tolist()) if g is not None else []):
            label = labels.get(int(f), "")
            lab = f'<div class="fx-lab">{esc(label)}</div>' if label else ""
            cells.append(f'<td class="fx-cell" style="background:{shade(float(a), vmax)}">'
                         f'<a class="fx-flink" href="{esc(feature_href(run, dict_name, int(f)))}" target="_blank">#{int(f)}</a> '
                         f'<span class="fx-a">{float(a):.2f}</span>{lab}</td>')
        cells += ['<td class="fx-none">·</td>'] * (top_k - len(cells))
        rows.append(f'<tr class="fx-prow"><td class="fx-pos">{pos}</td><td><code>{esc(show_token(insp.tokens[pos]))}</code></td>'
                    f"{''.join(cells)}</tr>")
    return (f'<div class="fx-pt-wrap"><table class="fx-prompt-table"><thead><tr><th>pos</th><th>token</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


# ---------------------------------------------------------------- Plotly figures


def _layout_spec(title: str, height: int, xtitle: str = "", ytitle: str = "") -> dict:
    """The layout every explorer chart shares, as a plain dict: small title and font, tight margins, no legend."""
    return dict(title=dict(text=title, font=dict(size=13)), height=height, margin=dict(l=10, r=10, t=36, b=10),
                font=CHART_FONT, bargap=0.02, showlegend=False, xaxis=dict(title=dict(text=xtitle)),
                yaxis=dict(title=dict(text=ytitle)))


def _layout(fig: go.Figure, title: str, height: int, xtitle: str = "", ytitle: str = "") -> go.Figure:
    fig.update_layout(_layout_spec(title, height, xtitle, ytitle))
    return fig


def hist_from_bins(edges, counts, title: str, color: str, height: int = 220, xtitle: str = "",
                   log_y: bool = False) -> go.Figure:
    """A histogram drawn from precomputed bins (edges [n+1], counts [n]).

    Built from one nested dict: Plotly validates `update_layout`/`add_bar` keyword paths one by one
    (~15 ms a figure on a busy 2-core machine, twice per feature page), a dict in ~2 ms; the figure is the same.
    """
    edges = np.asarray(edges, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    data = []
    if len(edges) == len(counts) + 1 and len(counts):
        centers = (edges[:-1] + edges[1:]) / 2
        data.append(dict(type="bar", x=centers, y=counts, width=np.diff(edges), marker=dict(color=color),
                         hovertemplate="%{x:.3g}: %{y:,}<extra></extra>"))
    layout = _layout_spec(title, height, xtitle=xtitle)
    if log_y:
        layout["yaxis"]["type"] = "log"
    return go.Figure(dict(data=data, layout=layout))


def density_histogram(densities: np.ndarray, height: int = 300) -> go.Figure:
    """Histogram of log10 feature density over the live features (dead ones are counted in the title)."""
    d = np.asarray(densities, dtype=np.float64)
    alive = d[d > 0]
    n_dead = int((d <= 0).sum())
    fig = go.Figure()
    if len(alive):
        fig.add_histogram(x=np.log10(alive), nbinsx=60, marker_color="#1f77b4",
                          hovertemplate="log10 density %{x}: %{y:,} features<extra></extra>")
    title = f"Feature density, {len(d):,} features ({n_dead:,} dead, not shown)"
    return _layout(fig, title, height, xtitle="log10(fraction of tokens on which the feature fires)", ytitle="features")
