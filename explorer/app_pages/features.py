"""Features: a filtered, sorted, paginated table of every feature, and a search of labels by meaning;
a click on a row opens its page."""

import math
from functools import partial

import streamlit as st

from explorer import data, state

run, d = state.require_dict()
st.title(f"Features of {d}")

PAGE_SIZE = 50
SORTS = {"feature id": "feature", "density": "density", "max activation": "max_act", "mean activation": "mean_act", "label": "label"}
if data.has_effects(run, d):  # `python -m backend intervene effects`: what zero-ablating each feature does
    SORTS.update({"ablation: loss change at peak": "loss_change_peak", "ablation: loss change after peak": "loss_change_after"})

with st.container(border=True):
    c1, c2, c3, c4 = st.columns([3, 3, 2, 2])
    lo, hi = c1.slider("log10 density", -7.0, 0.0, (-7.0, 0.0), step=0.25, key="f_density",
                       help="fraction of tokens on which the feature fires; the left end includes every lower density")
    query = c2.text_input("Label contains", key="f_label", placeholder="e.g. code, numbers, names")
    alive = c3.radio("Features", ["all", "alive", "dead"], horizontal=True, key="f_alive")
    labelled = c4.radio("Labels", ["all", "labelled", "unlabelled"], horizontal=True, key="f_labelled")
    c5, c6, c7, c8 = st.columns([3, 2, 2, 3])
    sort_name = c5.selectbox("Sort by", list(SORTS), key="f_sort")
    descending = c6.toggle("Descending", key="f_desc", value=False)
    rnd = c7.button("Random feature", icon=":material/casino:", help="open the page of a random alive feature")
    with c8.form("jump", border=False):
        j1, j2 = st.columns([2, 1], vertical_alignment="bottom")
        target = j1.number_input("Open feature #", min_value=0, step=1, value=None, key="f_jump")
        go = j2.form_submit_button("Open")
    fdom = data.feature_domains(run, d)  # `python -m backend domains`: each feature's main domain
    dom = "all"
    if fdom is not None:
        dom = st.radio("Domain", ["all"] + fdom.domains, horizontal=True, key="f_domain",
                       help="the feature's main domain: where it fires in the corpus (by genre) and what its label says")

with st.expander("Search labels by meaning", icon=":material/manage_search:", expanded=bool(st.session_state.get("f_semantic"))):
    sq = st.text_input("Meaning", key="f_semantic", placeholder="e.g. numbers in arithmetic, closing brackets, sea voyages",
                       help="nearest labels by all-MiniLM-L6-v2 embedding (offline), not by substring")
    if sq.strip():
        hits = data.search_labels(run, d, sq.strip(), k=10)
        if hits.empty:
            st.caption("No feature of this dictionary has a label yet (`python -m backend explain` writes some).")
        else:
            st.session_state["_fs_ids"] = hits["feature"].astype(int).tolist()
            st.dataframe(
                hits[["feature", "label", "similarity", "source"]], hide_index=True, width="stretch",
                on_select=partial(state.open_selected, "f_sem_table", "_fs_ids"), selection_mode="single-row",
                key="f_sem_table",
                column_config={"feature": st.column_config.NumberColumn("id", format="%d", width="small"),
                               "label": st.column_config.TextColumn("label", width="large"),
                               "similarity": st.column_config.ProgressColumn("similarity", format="%.2f", min_value=0.0,
                                                                             max_value=1.0, help="cosine of the embeddings"),
                               "source": "source"},
            )

if rnd:
    state.open_feature(data.random_feature(run, d))
if go and target is not None:
    state.open_feature(int(target))

filters = dict(
    density_min=None if lo <= -7.0 else 10 ** lo,
    density_max=None if hi >= 0.0 else 10 ** hi,
    label_query=query.strip() or None,
    alive={"all": None, "alive": True, "dead": False}[alive],
    labelled={"all": None, "labelled": True, "unlabelled": False}[labelled],
    domain=None if dom == "all" else dom,
)
# the page number resets when the filters change, so a narrower filter never shows an empty page
sig = (tuple(filters.items()), sort_name, descending)
if st.session_state.get("_f_sig") != sig:
    st.session_state["_f_sig"] = sig
    st.session_state["f_page"] = 1

_, n = data.list_features(run, d, sort=SORTS[sort_name], descending=descending, limit=1, offset=0, **filters)
n_pages = max(1, math.ceil(n / PAGE_SIZE))
st.session_state["f_page"] = min(st.session_state.get("f_page", 1), n_pages)
p1, p2 = st.columns([1, 5], vertical_alignment="center")
page = p1.number_input("Page", min_value=1, max_value=n_pages, step=1, key="f_page", label_visibility="collapsed")
p2.caption(f"page {page} of {n_pages} · {n:,} matching features · click a row to open its page")

df, _ = data.list_features(run, d, sort=SORTS[sort_name], descending=descending, limit=PAGE_SIZE,
                           offset=(page - 1) * PAGE_SIZE, **filters)
if df.empty:
    st.info("No feature matches these filters.", icon=":material/search_off:")
    st.stop()

table = df[["feature", "label", "density", "max_act", "top_logits"] + [c for c in ("loss_change_peak",) if c in df.columns]]
st.session_state["_f_ids"] = table["feature"].astype(int).tolist()
st.dataframe(
    table, hide_index=True, width="stretch", height=min(38 + 35 * len(table), 1800),
    on_select=partial(state.open_selected, f"f_table_{page}", "_f_ids"), selection_mode="single-row", key=f"f_table_{page}",
    column_config={
        "feature": st.column_config.NumberColumn("id", format="%d", width="small"),
        "label": st.column_config.TextColumn("label", width="large"),
        "density": st.column_config.NumberColumn("density", format="%.2e", help="fraction of tokens with act > 0"),
        "max_act": st.column_config.NumberColumn("max act", format="%.2f"),
        "top_logits": st.column_config.TextColumn("top logit tokens", help="the 3 tokens this feature promotes most"),
        "loss_change_peak": st.column_config.NumberColumn(
            "ablation Δloss", format="%+.4f", help="mean change of the next-token loss at the peak of its top 20 contexts "
            "when the feature is zero-ablated (nats; > 0: the feature was helping)"),
    },
)
