"""Small charts drawn on the server as plain HTML, for the page that is redrawn at every click.

A feature page is opened dozens of times a session, and its two histograms were Plotly charts:
Plotly.js takes ~150 ms of the browser's main thread to lay them out (margins, tick labels) on a
2-core laptop, a third of the click-to-page budget (issue 16). Bars from precomputed bins need no
interaction beyond a hover value, which a `title` gives. They are absolutely placed `<div>`s sized in
percent, so the chart follows its column's width: `st.html`'s sanitiser drops SVG, and keeps `<div>`s with
inline styles (CSS in `CSS`, injected once per page by the frame). Pages with real interaction (zoom,
selection) keep Plotly.
"""

from __future__ import annotations

import math

import numpy as np

from explorer.components import esc

CSS = """
.fx-hist {margin:10px 0 14px;font-size:11px;color:#444}
.fx-hist-title {font-size:12px;font-weight:600;color:#222;margin-bottom:6px}
.fx-hist-plot {position:relative;margin-left:38px;border-bottom:1px solid #bbb}
.fx-hist-grid {position:absolute;left:0;right:0;border-top:1px solid #e8e8e8}
.fx-hist-grid span {position:absolute;right:100%;margin-right:5px;transform:translateY(-50%);white-space:nowrap}
.fx-bar {position:absolute;bottom:0;background:var(--c)}
.fx-hist-x {position:relative;margin-left:38px;height:15px}
.fx-hist-x span {position:absolute;top:2px;transform:translateX(-50%);white-space:nowrap}
.fx-hist-xtitle {text-align:center;margin-left:38px;font-size:12px}
"""


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values (1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12) + 0.0)  # + 0.0: no "-0"
        t = first + len(ticks) * step
    return ticks


def tick_text(v: float) -> str:
    """A tick label as Plotly writes one: 4000, 0.5, −0.5, 1.5k."""
    if abs(v) >= 10_000:
        return f"{v / 1000:g}k".replace("-", "−")
    return f"{v:g}".replace("-", "−")


def histogram(edges, counts, title: str, color: str, height: int = 210, xtitle: str = "") -> str:
    """Bars from precomputed bins (edges [n+1], counts [n]): title, y grid with counts, x ticks, the bin
    centre and count on hover. Mismatched or empty bins give the title and a "no data" note."""
    edges = np.asarray(edges, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    plot_h = height - 24 - (34 if xtitle else 18)
    head = f'<div class="fx-hist" role="img" aria-label="{esc(title)}"><div class="fx-hist-title">{esc(title)}</div>'
    ok = len(counts) > 0 and len(edges) == len(counts) + 1 and np.isfinite(edges).all() and edges[-1] > edges[0]
    if not ok:
        return f'{head}<div class="fx-hist-plot" style="height:{plot_h}px">no data</div></div>'
    yticks = [t for t in nice_ticks(0.0, max(float(counts.max()), 1.0)) if t == int(t)]  # counts: whole numbers
    ymax = max(yticks[-1], float(counts.max()), 1.0)
    x0, span = float(edges[0]), float(edges[-1] - edges[0])
    parts = [f'<div class="fx-hist-grid" style="bottom:{100 * t / ymax:.2f}%"><span>{tick_text(t)}</span></div>'
             for t in yticks]
    for a, b, c in zip(edges[:-1], edges[1:], counts):
        if c > 0:  # a hairline gap between bars, as Plotly's bargap
            parts.append(f'<div class="fx-bar" style="left:{100 * (a - x0) / span:.2f}%;width:calc({100 * (b - a) / span:.2f}% - 0.5px);'
                         f'height:{100 * c / ymax:.2f}%" title="{(a + b) / 2:.3g}: {int(c):,}"></div>')
    xs = "".join(f'<span style="left:{100 * (t - x0) / span:.2f}%">{tick_text(t)}</span>'
                 for t in nice_ticks(x0, float(edges[-1])))
    foot = f'<div class="fx-hist-xtitle">{esc(xtitle)}</div>' if xtitle else ""
    return (f'{head}<div class="fx-hist-plot" style="height:{plot_h}px;--c:{esc(color)}">{"".join(parts)}</div>'
            f'<div class="fx-hist-x">{xs}</div>{foot}</div>')
