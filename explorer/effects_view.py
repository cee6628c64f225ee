"""Pure builders for the intervention views (no Streamlit calls, so tests can check the markup).

Tokens are shaded by the loss change an edit causes at them: red when the model predicts the next token
worse (loss up), blue when better, alpha = |change| / vmax. The hover title gives the loss before and
after, KL(clean || edited), the feature's activation, and the tokens the edit promoted and suppressed most
(by probability). Every token and every hover string goes through `html.escape`.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from explorer.components import esc, needs_separators, show_token

WORSE_RGB = (214, 39, 40)  # red: the edit made the model worse at predicting the next token
BETTER_RGB = (31, 119, 180)  # blue: better
MIN_ALPHA = 0.06


def loss_shade(v: float, vmax: float) -> str:
    if not math.isfinite(v) or v == 0 or vmax <= 0:
        return "transparent"
    rgb = WORSE_RGB if v > 0 else BETTER_RGB
    a = min(1.0, max(MIN_ALPHA, abs(v) / vmax))
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{a:.2f})"


def effect_scale(tables) -> float:
    """A shared colour scale for several tables: the 98th percentile of |loss change| (one outlier does not
    wash out the rest), at least 1e-3 nats."""
    vals = np.concatenate([np.abs(t["loss_change"].to_numpy(np.float64)) for t in tables]) if tables else np.zeros(0)
    vals = vals[np.isfinite(vals)]
    return max(float(np.percentile(vals, 98)) if len(vals) else 0.0, 1e-3)


def _pairs(tokens, values, n: int = 3) -> str:
    return ", ".join(f"{show_token(t)!r} {v:+.3f}" for t, v in list(zip(tokens, values))[:n])


def hover(row) -> str:
    lc = float(row["loss_change"])
    lines = [f"token {row['token']!r} -> next {row['next_token']!r}" if row["next_token"] else f"token {row['token']!r}"]
    if not math.isfinite(float(row["loss_clean"])) and lc == 0:
        lines.append("unchanged: before the first edited token")
    elif math.isfinite(lc):
        lines.append(f"loss {row['loss_clean']:.3f} -> {row['loss_edited']:.3f} ({lc:+.3f} nats)")
    lines.append(f"KL {row['kl']:.4f} · act {row['act']:.3f}" + (" · edited" if row["edited"] else ""))
    if len(row["promoted_prob"]):
        lines.append("promoted: " + _pairs(row["promoted_prob"], row["promoted_prob_values"]))
        lines.append("suppressed: " + _pairs(row["suppressed_prob"], row["suppressed_prob_values"]))
    return "\n".join(lines)


def effect_spans(table, vmax: float, peak: int | None = None, skip: int = 0) -> str:
    """Inline spans, one per row of a `position_table`: shaded by loss change, `peak` outlined, details on hover."""
    tokens = table["token"].tolist()
    sep = " " if needs_separators(tokens[skip:]) else ""
    parts = []
    for i, row in enumerate(table.iloc[skip:].to_dict("records"), start=skip):
        cls = "fx-tok fx-peak" if peak is not None and i == peak else "fx-tok"
        style = f"background:{loss_shade(float(row['loss_change']), vmax)}"
        if row["edited"] and row["act"] > 0:
            style += ";border-bottom:2px solid #ff7f0e"  # the feature fired here (and was edited)
        text = show_token(row["token"])
        body = text.lstrip(" ") or text
        lead = text[: len(text) - len(text.lstrip(" "))] if text.lstrip(" ") else ""
        parts.append(f'{lead}<span class="{cls}" style="{style}" title="{esc(hover(row))}">{esc(body)}</span>')
    return sep.join(parts)


def effect_contexts(contexts, vmax: float) -> str:
    """The Effects panel's rows: per context the loss change at the peak, then its tokens shaded by loss change."""
    rows = []
    for c in contexts:
        at = "n/a" if not math.isfinite(c.at_peak) else f"{c.at_peak:+.3f}"
        aft = "n/a" if not math.isfinite(c.after_peak) else f"{c.after_peak:+.3f}"
        badge = (f'<span class="fx-val" title="{esc(f"loss change at the peak {at}, after it {aft} (nats)")}">'
                 f"{esc(at)}</span>")
        rows.append(f'<div class="fx-ctx fx-effect">{badge}{effect_spans(c.table, vmax, peak=c.peak)}</div>')
    if not rows:
        return '<div class="fx-contexts fx-ctx-empty">No contexts.</div>'
    return f'<div class="fx-contexts fx-effects">{"".join(rows)}</div>'


def legend(vmax: float) -> str:
    return (f'<span style="font-size:12px;color:#555">loss change: <span style="background:{loss_shade(vmax, vmax)};'
            f'padding:0 4px">+{vmax:.3f} worse</span> <span style="background:{loss_shade(-vmax, vmax)};padding:0 4px">'
            f"-{vmax:.3f} better</span> · orange underline: the feature fired there · hover a token for details</span>")


def distribution_figure(row, height: int = 320) -> go.Figure:
    """Next-token probabilities before and after the edit at one position (the union of both top-10s)."""
    clean = dict(zip(row["top_clean"], row["top_clean_probs"]))
    edited = dict(zip(row["top_edited"], row["top_edited_probs"]))
    toks = list(dict.fromkeys(list(clean) + list(edited)))
    toks.sort(key=lambda t: -max(clean.get(t, 0.0), edited.get(t, 0.0)))
    labels = [repr(show_token(t)) for t in toks][::-1]
    fig = go.Figure()
    # a token outside one side's top 10 has an unknown (small) probability there: drawn as 0, said on hover
    fig.add_bar(y=labels, x=[clean.get(t, 0.0) for t in toks][::-1], name="clean", orientation="h", marker_color="#7f7f7f",
                hovertemplate="clean %{x:.3f}<extra></extra>")
    fig.add_bar(y=labels, x=[edited.get(t, 0.0) for t in toks][::-1], name="edited", orientation="h",
                marker_color="#d62728", hovertemplate="edited %{x:.3f}<extra></extra>")
    fig.update_layout(barmode="group", height=height, margin=dict(l=10, r=10, t=36, b=10), font=dict(size=11),
                      title=dict(text=f"Next token after {show_token(row['token'])!r} (position {int(row['pos'])})",
                                 font=dict(size=13)),
                      xaxis_title="probability", legend=dict(orientation="h", y=-0.15))
    return fig


def generated_html(text: str, prompt: str = "") -> str:
    """A continuation as escaped text after its (greyed) prompt."""
    return (f'<div class="fx-gen" style="white-space:pre-wrap;word-break:break-word;font-size:14px;line-height:1.6;'
            f'padding:8px;border:1px solid #e6e6e6;border-radius:6px;min-height:4em">'
            f'<span style="color:#999">{esc(prompt)}</span>{esc(text)}</div>')
