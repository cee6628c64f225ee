"""Compare: 2-4 dictionaries of the run side by side (the Evaluate tab: the evaluation suite, explorer/evaluate_panel.py).

A metrics table and a Pareto view (L0 against explained variance, marker size = encode cost), then
matched features (one-to-one Hungarian matching of decoder rows: feature A | cosine | feature B,
each with its label, top logit tokens and top 3 contexts), then the synthetic amortisation-gap
benchmark if it has been run. Encode times come from `python -m backend compare`; the page itself
only reads stores (the matching of a pair not compared yet is computed once, about a second).
"""

import math

import pandas as pd
import plotly.express as px
import streamlit as st

from explorer import components, data, evaluate_panel, state

run = state.require_run()
label = st.session_state.get("run_label") or run
st.title("Compare dictionaries")

dicts = data.list_dictionaries(run)
analysed = dicts[dicts["analysed"]] if "analysed" in dicts.columns else dicts
names = list(analysed["name"])
if len(names) < 2:
    st.info("Comparing needs at least two analysed dictionaries in this run. Train another kind and analyse it:",
            icon=":material/inbox:")
    st.code(f"python -m backend train --run {run} --kind topk\npython -m backend analyze --run {run} --dict topk",
            language="bash")
    st.stop()

# default: the sidebar's dictionary, then the order `compare` (and the demo) used, then the rest
summary = data.compare_summary(run) or {}
preferred = [st.session_state.get(state.DICT)] + [r["dictionary"] for r in summary.get("dictionaries", [])] + names
default = [n for n in dict.fromkeys(preferred) if n in names][:4]
chosen = st.multiselect("Dictionaries (2 to 4)", names, default=default, max_selections=4, key="cmp_dicts")
if len(chosen) < 2:
    st.info("Pick at least two dictionaries.")
    st.stop()

# ------------------------------------------------------------------ Evaluate tab (the evaluation suite); `?view=evaluate` opens it
VIEWS = ["Metrics and matches", "Evaluate"]
view_metrics, view_eval = st.tabs(VIEWS, key="cmp_view", on_change="rerun",
                                  default=VIEWS[1] if st.query_params.get("view") == "evaluate" else VIEWS[0])
if view_eval.open:
    with view_eval:
        evaluate_panel.render(run, chosen)
    st.stop()

# ------------------------------------------------------------------ metrics table + Pareto view
timed = {r["dictionary"]: r for r in summary.get("dictionaries", [])}
rows = []
for n in chosen:
    r = analysed[analysed["name"] == n].iloc[0]
    fl = data.flops_per_token(run, n)
    t = timed.get(n, {})
    rows.append({"dictionary": n, "kind": t.get("kind") or r.get("architecture"), "features": int(r["d_sae"]),
                 "l0": r.get("l0"), "explained_variance": r.get("explained_variance"),
                 "dead_fraction": r.get("dead_fraction"), "ce_loss_score": r.get("ce_loss_score"),
                 "encode_mflops": fl["encode"] / 1e6, "encode_us": t.get("encode_us_per_token")})
table = pd.DataFrame(rows)
st.dataframe(table, hide_index=True, width="stretch", column_config={
    "l0": st.column_config.NumberColumn("L0", format="%.1f", help="mean features firing per held-out token"),
    "explained_variance": st.column_config.NumberColumn("explained var.", format="%.3f"),
    "dead_fraction": st.column_config.NumberColumn("dead", format="%.3f"),
    "ce_loss_score": st.column_config.NumberColumn("CE loss score", format="%.3f"),
    "encode_mflops": st.column_config.NumberColumn("encode MFLOPs/token", format="%.2f"),
    "encode_us": st.column_config.NumberColumn("encode µs/token", format="%.2f",
                                               help="measured by `python -m backend compare` on held-out tokens"),
})
if table["encode_us"].isna().any():
    st.caption(f"Encode times are measured by `python -m backend compare --run {run} --dicts {','.join(chosen)}`.")

pareto = table.dropna(subset=["l0", "explained_variance"])
if len(pareto):
    fig = px.scatter(pareto, x="l0", y="explained_variance", size="encode_mflops", color="dictionary",
                     hover_data=["kind", "features", "encode_us", "ce_loss_score"], size_max=40,
                     labels={"l0": "L0 (features per token)", "explained_variance": "explained variance",
                             "encode_mflops": "encode MFLOPs/token"})
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=40, b=10),
                      title="Sparsity against fidelity (up and left is better; marker size = encode cost)")
    st.plotly_chart(fig, width="stretch", config={"displaylogo": False}, key="pareto")

# ------------------------------------------------------------------ matched features
st.subheader("Matched features")
c1, c2, c3, c4 = st.columns([2, 2, 2, 2], vertical_alignment="bottom")
a = c1.selectbox("Dictionary A", chosen, index=0, key="cmp_a")
b = c2.selectbox("Dictionary B", [n for n in chosen if n != a], index=0, key="cmp_b")
order = c3.selectbox("Show", ["best matches", "worst matches", "around cosine 0.7"], key="cmp_order")
per_page = 8
m = data.matches(run, a, b)
thr = float(summary.get("threshold", 0.7))
frac = float((m["cos"] > thr).mean()) if len(m) else 0.0
c4.metric(f"matched with cos > {thr:g}", f"{frac:.1%}", help=f"{len(m):,} one-to-one pairs (Hungarian)")
if order == "worst matches":
    m = m.iloc[::-1]
elif order == "around cosine 0.7":
    m = m.iloc[(m["cos"] - thr).abs().argsort(kind="stable")]
n_pages = max(1, math.ceil(len(m) / per_page))
page = st.number_input("page", min_value=1, max_value=n_pages, value=1, key="cmp_page") - 1
shown = m.iloc[page * per_page:(page + 1) * per_page]


def feature_card(col, dict_name: str, feature: int) -> None:
    dash = data.feature_dashboard(run, dict_name, feature)
    link = components.feature_href(label, dict_name, feature)
    lab = str(dash.get("label") or "")
    col.markdown(f"[**{components.esc(dict_name)} #{feature}**]({link})" + (f" · {components.esc(lab)}" if lab else
                 " · <span style='color:#888'>no label</span>"), unsafe_allow_html=True)
    toks = [components.show_token(t) for t in list(dash.get("top_logit_tokens") or [])[:5]]
    col.caption(f"density {float(dash.get('density') or 0):.3%} · promotes: " + ", ".join(f"`{t}`" for t in toks))
    top = list((dash.get("contexts") or {}).get("top") or [])[:3]
    col.html(components.context_rows(top, vmax=float(dash.get("max_act") or 1.0), empty="Dead: no contexts.",
                                     feature=feature))


for fa, fb, cos in shown[["feature_a", "feature_b", "cos"]].itertuples(index=False):
    left, mid, right = st.columns([10, 2, 10], vertical_alignment="center")
    feature_card(left, a, int(fa))
    mid.markdown(f"<div style='text-align:center;font-size:1.2em'><b>{float(cos):.2f}</b><br>"
                 f"<span style='color:#888;font-size:0.7em'>cosine</span></div>", unsafe_allow_html=True)
    feature_card(right, b, int(fb))
    st.divider()

# ------------------------------------------------------------------ synthetic benchmark
st.subheader("Synthetic benchmark: the amortisation gap")
figures = data.synth_figures()
if not figures:
    st.caption("Run `python -m backend synth` to measure how well each method recovers known sparse codes "
               "(MCC against FLOPs, and the gap to the SAE over the (M, K) grid).")
for i, fig in enumerate(figures.values()):
    st.plotly_chart(fig, width="stretch", config={"displaylogo": False}, key=f"synth_{i}")
