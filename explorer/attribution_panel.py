"""The prompt inspector's attribution view: which features (and, for comparison, which tokens) the model's prediction
of a chosen next token or answer choice rests on.

Features: attribution patching, f * dm/df at every active (feature, position) with the error term kept, ranked by
|attribution|, with the exact zero-ablation effect of the top ones beside it and each linked to its page. Tokens:
integrated gradients over the prompt's input embeddings, shaded on the text, with the completeness check. One backend
call per prompt and target (explorer/data.py, cached)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from explorer import components, data, state

SUPPORT_RGB = (44, 160, 44)  # green: supports the target
OPPOSE_RGB = (214, 39, 40)  # red: speaks against it


def render(run: str, d: str, text: str, labels: dict[int, str]) -> None:
    st.markdown("#### Attribute a prediction")
    with st.form("p_attr_form"):
        c1, c2, c3 = st.columns([3, 3, 2])
        target = c1.text_input("Target next token or answer", key="p_attr_target", max_chars=200,
                               placeholder="empty: the model's most likely next token",
                               help="scored after the text with one leading space (none after a newline), as tasks score choices")
        contrast = c2.text_input("Contrast (optional)", key="p_attr_contrast", max_chars=200,
                                 help="a second answer: the metric becomes log p(target) - log p(contrast)")
        top_n = c3.number_input("Exact ablations", min_value=0, max_value=100, value=20, step=5, key="p_attr_top",
                                help="the top pairs by |attribution| are also zero-ablated one at a time")
        go_ = st.form_submit_button("Attribute", icon=":material/account_tree:")
    if go_:
        st.session_state["p_attr"] = {"text": text, "target": target.strip("\n"), "contrast": contrast.strip("\n"),
                                      "top_n": int(top_n)}
    params = st.session_state.get("p_attr")
    if not params or params["text"] != text:
        st.caption("Choose a target (or leave it empty for the model's own top prediction) and press **Attribute**: "
                   "every active feature is scored by activation x gradient, the strongest are ablated exactly, and "
                   "integrated gradients score the tokens for comparison.")
        return
    try:
        with st.spinner("Attributing (one backward pass, the exact ablations, 20 IG steps)..."):
            a = data.attribute_prompt(run, d, text, params["target"], params["contrast"], params["top_n"])
    except Exception as e:  # noqa: BLE001 - a target not in the vocabulary is a message
        state.show_error(e)
        return
    _show(a, run, d, labels)


def _show(a, run: str, d: str, labels: dict[int, str]) -> None:
    vs = f" against {a.contrast!r}" if a.contrast else ""
    st.caption(f"Explaining **{components.esc(a.metric_name)}** = {a.metric:+.4f} for target {a.target!r}{vs} "
               f"(p(target) {a.target_prob:.4f}) · {len(a.pairs):,} active (feature, position) pairs · "
               f"{sum(a.seconds.values()):.1f} s")
    left, right = st.columns([3, 2], gap="medium")
    with left:
        st.markdown("**Features by attribution** (f x dm/df; > 0 supports the target; exact = m clean - m with the "
                    "pair zero-ablated)")
        top = a.pairs.head(50).copy()
        top["page"] = [components.feature_href(st.session_state.get("run_label") or run, d, f) for f in top["feature"]]
        top["label"] = [labels.get(int(f), "") for f in top["feature"]]
        top["token"] = [components.show_token(t) for t in top["token"]]
        st.dataframe(top[["rank", "page", "pos", "token", "act", "attribution", "exact_effect", "label"]], hide_index=True,
                     width="stretch", height=420, key="p_attr_table", column_config={
                         "page": st.column_config.LinkColumn("feature", display_text=r"feature=(\d+)",
                                                             help="opens the feature's page"),
                         "act": st.column_config.NumberColumn("act", format="%.3f"),
                         "attribution": st.column_config.NumberColumn("attribution", format="%+.4f"),
                         "exact_effect": st.column_config.NumberColumn("exact", format="%+.4f",
                                                                       help="m(clean) - m(this pair zero-ablated)")})
    with right:
        st.plotly_chart(_agreement_figure(a.pairs), width="stretch", config={"displayModeBar": False}, key="p_attr_fig")
    st.markdown("**Integrated gradients over the tokens** (the token-level saliency the features are compared with; "
                "green supports the target, red opposes it; hover for the value)")
    st.html('<div class="fx-prompt">' + ig_spans(a.tokens, a.ig["attribution"].to_numpy()) + "</div>")
    c = a.ig_check
    if c:
        st.caption(f"{c['steps']} Gauss-Legendre steps from a zero-embedding baseline (BOS kept): the attributions sum "
                   f"to {c['sum']:+.4f} against m(x) - m(baseline) = {c['metric'] - c['metric_baseline']:+.4f}; "
                   f"completeness error **{c['completeness_error']:.2%}**.")


def _agreement_figure(pairs: pd.DataFrame) -> go.Figure:
    measured = pairs.dropna(subset=["exact_effect"])
    fig = go.Figure(go.Scatter(x=measured["attribution"], y=measured["exact_effect"], mode="markers",
                               text=[f"#{f} at {p}" for f, p in zip(measured["feature"], measured["pos"])],
                               hovertemplate="%{text}<br>attribution %{x:+.4f}<br>exact %{y:+.4f}<extra></extra>"))
    if len(measured):
        lo = float(np.nanmin(measured[["attribution", "exact_effect"]].to_numpy()))
        hi = float(np.nanmax(measured[["attribution", "exact_effect"]].to_numpy()))
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(dash="dot", color="#999"),
                                 hoverinfo="skip", showlegend=False))
    fig.update_layout(height=420, margin=dict(l=10, r=10, t=40, b=10), showlegend=False,
                      title="Attribution patching vs exact ablation", xaxis_title="attribution (first order)",
                      yaxis_title="exact effect")
    return fig


def ig_spans(tokens: list[str], values: np.ndarray) -> str:
    """Tokens shaded by signed IG attribution (NaN: not attributed, e.g. BOS, left out), escaped."""
    vals = np.asarray(values, dtype=np.float64)
    finite = vals[np.isfinite(vals)]
    vmax = float(np.abs(finite).max()) if len(finite) else 0.0
    shown = [i for i in range(len(tokens)) if np.isfinite(vals[i])]
    sep = " " if components.needs_separators([tokens[i] for i in shown]) else ""
    parts = []
    for i in shown:
        v = float(vals[i])
        colour = components.shade(abs(v), vmax, SUPPORT_RGB if v > 0 else OPPOSE_RGB)
        text = components.show_token(tokens[i])
        body = text.lstrip(" ") or text
        lead = text[: len(text) - len(text.lstrip(" "))] if text.lstrip(" ") else ""
        parts.append(f'{lead}<span class="fx-tok" style="background:{colour}" '
                     f'title="{components.esc(f"IG {v:+.4f} | token {tokens[i]!r}")}">{components.esc(body)}</span>')
    return sep.join(parts)
