"""The Compare page's Evaluate tab: the evaluation suite's results (`python -m backend evaluate`) side by side.

A table with one row per dictionary (and the raw activations as a baseline), sparse-probing accuracy against k
(one line per dictionary, coloured by kind: an anchored dictionary is its kind with "+anchored"), the
distribution of each feature's best NMI against random directions and the residual basis, and the paraphrase
stability bars. Everything is read from evaluation.json files; nothing is computed here.
"""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from explorer import data

COLUMNS = {  # evaluation_table column -> (header, format, help)
    "kind": ("kind", None, "an anchored dictionary is its kind + \"anchored\" (trained with the model's KL in the loss)"),
    "l0": ("L0", "%.1f", None),
    "explained_variance": ("EV", "%.3f", "explained variance, massive-activation tokens excluded"),
    "delta_ce": ("ΔCE", "%.3f", "CE added by splicing the reconstruction (nats)"),
    "kl_div": ("KL", "%.3f", "KL(clean || spliced) per token (nats)"),
    "task_retained": ("tasks retained", "%.3f", "task-suite accuracy spliced / clean (no error term)"),
    "task_control_retained": ("control", "%.3f", "spliced with the error term / clean: 1 by construction"),
    "probe_pos_k1": ("POS probe k=1", "%.3f", "sparse probe on part-of-speech tags, 1 latent"),
    "probe_pos_k20": ("POS probe k=20", "%.3f", None),
    "probe_source_k1": ("source probe k=1", "%.3f", "sparse probe on the context's source, 1 latent"),
    "nmi_pos_above": ("NMI>thr POS", "%.3f", "fraction of alive features whose best POS-tag NMI exceeds the threshold"),
    "nmi_pos_above_random": ("random dirs", "%.3f", "the same for random unit directions at matched densities"),
    "nmi_pos_above_residual": ("residual basis", "%.3f", "the same for the residual stream's basis directions"),
    "nmi_source_above": ("NMI>thr source", "%.3f", "fraction of alive features whose best source-family NMI exceeds it"),
    "nmi_source_above_random": ("random dirs ", "%.3f", "the same for random unit directions at matched densities"),
    "stability_answer_paraphrase": ("Jaccard paraphrase", "%.3f", "top-10 overlap at the answer position"),
    "stability_answer_unrelated": ("Jaccard unrelated", "%.3f", "the same for an unrelated text of the same length"),
}


def render(run: str, chosen: list[str]) -> None:
    table = data.evaluation_table(run, tuple(chosen))
    done = set(table["dictionary"]) if len(table) else set()
    missing = [n for n in chosen if n not in done]
    if missing:
        st.caption("Not evaluated yet (a few minutes each on 2 CPU cores):")
        st.code(f"python -m backend evaluate --run {run} --dict {','.join(missing)}", language="bash")
    if table.empty:
        return
    cols = ["dictionary"] + [c for c in COLUMNS if c in table.columns]
    st.dataframe(table[cols], hide_index=True, width="stretch", column_config={
        c: (st.column_config.NumberColumn(h, format=f, help=hlp) if f else st.column_config.TextColumn(h, help=hlp))
        for c, (h, f, hlp) in COLUMNS.items() if c in table.columns})

    curves = data.probing_curves(run, tuple(chosen))
    st.markdown("**Sparse probing**: test accuracy of a logistic probe on the k latents that best separate the class")
    cols = st.columns(2)
    for col, task, title in zip(cols, ("pos", "source"), ("part-of-speech tags (tokens)", "source of the context")):
        c = curves[(curves["task"] == task) & (curves["k"] != "all")].copy()
        if c.empty:
            col.caption("No part-of-speech probes: the run's corpus carries no POS tags (the default corpus's "
                        "Brown part does)." if task == "pos" else
                        "No source probes: too few held-out contexts of each source (raise --contexts).")
            continue
        c["k"] = c["k"].astype(int)
        fig = px.line(c, x="k", y="accuracy", color="kind", line_group="dictionary", markers=True, log_x=True,
                      hover_data=["dictionary"], title=title)
        ceiling = curves[(curves["task"] == task) & (curves["k"] == "all")]["accuracy"]
        if len(ceiling):
            fig.add_hline(y=float(ceiling.iloc[0]), line_dash="dash", annotation_text="raw, all dims")
        fig.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10))
        col.plotly_chart(fig, width="stretch", config={"displaylogo": False}, key=f"probe_{task}")

    hist = data.nmi_histograms(run, tuple(chosen))
    if len(hist):
        st.markdown("**Monosemanticity proxy**: each feature's best NMI with one tag (alive features), "
                    "against random unit directions and the residual basis at matched densities")
        cat = st.radio("category", sorted(set(hist["category"])), horizontal=True, key="eval_nmi_cat")
        h = hist[hist["category"] == cat].copy()
        h["series"] = [f"{d} ({k})" if w == "dictionary" else f"{w} [{d}]" for d, k, w in zip(h["dictionary"], h["kind"], h["who"])]
        keep = (h["who"] == "dictionary") | (h["dictionary"] == h["dictionary"].iloc[0])  # one copy of each baseline
        fig = px.line(h[keep], x="bin_left", y="fraction", color="series", line_dash="who", log_y=True,
                      labels={"bin_left": "best NMI", "fraction": "fraction of units"})
        fig.update_layout(height=320, margin=dict(l=10, r=10, t=10, b=10))
        st.plotly_chart(fig, width="stretch", config={"displaylogo": False}, key="nmi_hist")

    stab = data.stability_table(run, tuple(chosen))
    if len(stab):
        st.markdown("**Stability**: Jaccard overlap of the top-10 features between a math problem and its paraphrases, "
                    "against an unrelated problem of about the same length")
        fig = px.bar(stab, x="dictionary", y="jaccard", color="pair", barmode="group", facet_col="where",
                     hover_data=["kind"], range_y=[0, 1])
        fig.update_layout(height=320, margin=dict(l=10, r=10, t=30, b=10))
        st.plotly_chart(fig, width="stretch", config={"displaylogo": False}, key="stability")
