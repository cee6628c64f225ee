"""What the Diagnose page and the feature page draw for domains: tokens shaded by out-of-domain mass, a
feature's domain line, the answer probabilities before and after (Plotly)."""

from __future__ import annotations

import plotly.graph_objects as go

from explorer import components

OOD_RGB = (214, 39, 40)  # red: mass outside the expected domain
FLAG_OUTLINE = "2px solid #1f4e99"
SERIES_COLORS = {"original": "#7f7f7f", "reformulated": "#d62728", "LLM rewrite": "#9467bd", "ablated": "#ff7f0e"}


def ood_spans(diag) -> str:
    """The diagnosed text as inline spans: shaded by out-of-domain mass (0..1), flagged tokens outlined, tokens
    outside the diagnosed region greyed; every token escaped, its mass and flag in the hover title."""
    parts = []
    for _, r in diag.table.iterrows():
        tok = components.show_token(str(r["token"]))
        style = [f"background:{components.shade(float(r['ood']), 1.0, OOD_RGB)}"] if r["in_region"] else ["color:#aaa"]
        if r["flagged"]:
            style.append(f"outline:{FLAG_OUTLINE}")
        title = f"out-of-domain {float(r['ood']):.2f}" + (" · flagged" if r["flagged"] else "") + f" | token {r['token']!r}"
        body = tok.lstrip(" ")
        lead = tok[: len(tok) - len(body)] if body else ""
        parts.append(f'{lead}<span class="fx-tok" style="{";".join(style)}" title="{components.esc(title)}">'
                     f"{components.esc(body or tok)}</span>")
    return '<div class="fx-prompt" style="line-height:2">' + "".join(parts) + "</div>"


def domain_line(info: dict | None) -> str:
    """'domain **code** 72% · fires: code 81%, math 9% · label: code 40%' for the feature page (markdown)."""
    if not info or not info["domain"]:
        return ""

    def top(d: dict, k: int = 2) -> str:
        return ", ".join(f"{n} {v:.0%}" for n, v in sorted(d.items(), key=lambda kv: -kv[1])[:k])

    label = f" · label: {top(info['label'], 1)}" if info["has_label"] else " · no label"
    return f"domain **{components.md_text(info['domain'])}** {info['share']:.0%} · fires: {top(info['fires'])}{label}"


def probs_chart(choices: list[str], series: dict[str, list[float]], correct: list[int]) -> go.Figure:
    """Grouped bars: the probability of each choice under each condition; the right answer marked with ✓."""
    names = [("✓ " if i in correct else "") + str(c) for i, c in enumerate(choices)]
    fig = go.Figure()
    for name, probs in series.items():
        fig.add_trace(go.Bar(x=names, y=probs, name=name, marker_color=SERIES_COLORS.get(name, "#1f77b4"),
                             hovertemplate="%{x}: %{y:.3f}<extra>" + name + "</extra>"))
    # numeric choices ("2", "-2") would make an axis of numbers on which the "✓ 2" bar has no place
    fig.update_layout(barmode="group", height=260, margin=dict(l=40, r=10, t=30, b=30), xaxis=dict(type="category"),
                      yaxis=dict(range=[0, 1],
                      title="probability"), legend=dict(orientation="h", y=1.1), font=components.CHART_FONT,
                      title=dict(text="Answer probabilities (among the choices)", font=dict(size=12)))
    return fig
