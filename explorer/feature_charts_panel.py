"""The feature page's left column top: activation histogram, top/bottom logit effects, logit-effect histogram.

Drawn as one HTML element with the histograms built on the server (explorer/html_charts.py): a feature
page is redrawn at every click, and two Plotly charts cost ~130 ms of a table click on a 2-core laptop
(issue 16). `FEATURE_EXPLORER_PLOTLY_HISTOGRAMS=1` draws them with Plotly instead (zoomable), which is
also how `bench/bench_ui.py --plotly-histograms` measures the difference.
"""

from __future__ import annotations

import os

import streamlit as st

from explorer import components, html_charts

ENV_PLOTLY = "FEATURE_EXPLORER_PLOTLY_HISTOGRAMS"
ACT_COLOR, LOGIT_COLOR = "#ff7f0e", "#7f7f7f"


def plotly_histograms() -> bool:
    return os.environ.get(ENV_PLOTLY, "").strip().lower() in ("1", "true", "yes")


def render(dash: dict, density: float, dead: bool) -> None:
    act = (dash.get("hist_edges") or [], dash.get("hist_counts") or [], f"Activations, density {density:.3%}")
    logit = (dash.get("logit_hist_edges") or [], dash.get("logit_hist_counts") or [], "Logit effects on the whole vocabulary")
    logits = components.side_by_side(
        components.logit_table(list(dash.get("bottom_logit_tokens") or []), list(dash.get("bottom_logit_values") or []),
                               positive=False, title="Negative logits"),
        components.logit_table(list(dash.get("top_logit_tokens") or []), list(dash.get("top_logit_values") or []),
                               positive=True, title="Positive logits"))
    if dead:
        st.info("This feature is dead: it never fired on the analysed tokens, so it has no activation histogram "
                "and no contexts.", icon=":material/bedtime:")
    if plotly_histograms():
        config = {"displayModeBar": False}
        if not dead:
            st.plotly_chart(components.hist_from_bins(*act, ACT_COLOR, height=210, xtitle="activation (firing tokens)"),
                            width="stretch", config=config, key="act_hist")
        st.html(logits)
        st.plotly_chart(components.hist_from_bins(*logit, LOGIT_COLOR, height=170), width="stretch", config=config,
                        key="logit_hist")
        return
    act_hist = "" if dead else html_charts.histogram(*act, ACT_COLOR, height=210, xtitle="activation (firing tokens)")
    logit_hist = html_charts.histogram(*logit, LOGIT_COLOR, height=170)
    st.html(f'<div class="fx-left">{act_hist}{logits}{logit_hist}</div>')
