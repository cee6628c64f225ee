"""Feature page: one feature in one screen, as SAE-Vis and Neuronpedia show it.

Left: activation histogram (density in the title), top/bottom logit-effect tokens, the histogram
of all logit effects, nearest features by decoder cosine. Right: the 20 max-activating contexts
and 5 quantile groups, each token shaded by activation, the peak outlined, the value on hover.
Under the header, the label editor (explorer/label_editor.py): every save is a new version in
labels.duckdb, with history and restore. Below, what the feature does (explorer/effects_panel.py):
ablation effects on its top contexts and steering. Addressed by `?run=..&dict=..&feature=N`.
"""

import streamlit as st

from explorer import (
    components,
    data,
    diagnose_view,
    effects_panel,
    feature_charts_panel,
    feature_tags_panel,
    label_editor,
    state,
    tour_box,
)

run, d = state.require_dict()
dicts = data.list_dictionaries(run)
d_sae = int(dicts.loc[dicts["name"] == d, "d_sae"].iloc[0])

raw = st.query_params.get(state.FEATURE)
try:
    feature = int(raw) if raw is not None else int(st.session_state.get(state.FEATURE) or 0)
except ValueError:
    st.warning(f"`feature={raw}` in the link is not a feature number; showing feature 0.")
    feature = 0
if not 0 <= feature < d_sae:
    st.warning(f"Feature {feature} does not exist: {d} has features 0 to {d_sae - 1:,}.")
    feature = min(max(feature, 0), d_sae - 1)
st.session_state[state.FEATURE] = feature
# always re-send: a page link to this same page changes the params server-side but not the browser's URL
st.query_params[state.FEATURE] = str(feature)


def _go(f: int) -> None:
    st.session_state[state.FEATURE] = f % d_sae
    st.query_params[state.FEATURE] = str(f % d_sae)


def _random() -> None:
    _go(data.random_feature(run, d))


dash = data.feature_dashboard(run, d, feature)
density = float(dash.get("density") or 0.0)
max_act = float(dash.get("max_act") or 0.0)
dead = int(dash.get("n_fires") or 0) == 0 or density == 0.0

# ------------------------------------------------------------------ header
h1, h2, h3, h4 = st.columns([6, 1, 1, 1], vertical_alignment="bottom")
h1.markdown(f"## Feature {feature} <span style='font-size:0.6em;color:#888'>of {d_sae:,} · {d}</span>", unsafe_allow_html=True)
h2.button("prev", icon=":material/chevron_left:", on_click=_go, args=(feature - 1,), width="stretch", key="prev")
h3.button("next", icon=":material/chevron_right:", icon_position="right", on_click=_go, args=(feature + 1,), width="stretch", key="next")
h4.button("random", icon=":material/casino:", on_click=_random, width="stretch", key="random")
label_editor.render(run, d, feature, dash, read_only=state.is_demo())  # label, edit form, history with restore
if not state.is_demo():
    tour_box.render(run, d, feature)  # "Add to tour" with a note, or "in the tour as stop N"
link = components.feature_href(st.session_state.get("run_label") or run, d, feature)
st.caption(f"density {density:.3%} · fires on {int(dash.get('n_fires') or 0):,} tokens · max act {max_act:.3g} · "
           f"mean act {float(dash.get('mean_act') or 0):.3g} · [permalink]({link})")
domain = diagnose_view.domain_line(data.feature_domain(run, d, feature))  # `python -m backend domains`, when run
if domain:
    st.caption(domain)

left, right = st.columns([2, 3], gap="medium")

# ------------------------------------------------------------------ right: contexts (sent first: they are what a
# reader waits for, and they need no Plotly, which renders slowly)
with right:
    ctxs = dash.get("contexts") or {}
    if dead:
        st.markdown("#### Contexts")
        st.info("No contexts: a dead feature has no token on which it fires.", icon=":material/bedtime:")
    else:
        # only the open tab is drawn (a tab switch reruns), which halves what a feature page sends; the
        # open tab stays open from one feature to the next
        tabs = st.tabs(["Top 20"] + [f"Q{q}" + (" (highest)" if q == 5 else " (lowest)" if q == 1 else "") for q in range(5, 0, -1)],
                       key="ctx_tab", on_change="rerun")
        groups = ["top"] + [f"q{q}" for q in range(5, 0, -1)]
        for tab, g in zip(tabs, groups):
            if tab.open is False:
                continue
            with tab:
                items = ctxs.get(g) or []
                if g != "top" and items:
                    vals = [float(c.get("value", 0)) for c in items]
                    st.caption(f"{len(items)} random contexts with peak activation in {min(vals):.2f} to {max(vals):.2f}")
                st.html(components.context_rows(items, vmax=max_act, empty="No contexts in this activation interval.",
                                                feature=feature))

# ------------------------------------------------------------------ left: histograms, logits, neighbours
with left:
    feature_charts_panel.render(dash, density, dead)  # histograms and logit tables

    st.markdown("**Nearest features** (decoder cosine)")
    neigh = list(dash.get("neighbours") or [])
    cos = list(dash.get("neighbour_cos") or [])
    if not neigh:
        st.caption("none")
    nlabels = data.labels(run, d) if neigh else {}
    with st.container(horizontal=True, gap="small"):
        for n, c in zip(neigh, cos):
            n = int(n)
            text = f"#{n}  cos {float(c):.2f}" + (f" · {components.md_text(nlabels[n][:40])}" if nlabels.get(n) else "")
            st.page_link(state.FEATURE_PAGE, label=text, query_params=state.feature_link_params(n))

    feature_tags_panel.render(run, d, feature)  # top POS tags and sources with NMI (evaluation suite)

# ------------------------------------------------------------------ below: what the feature does (ablation, steering)
effects_panel.render(run, d, feature, dash, dead)
