"""Faithfulness: are dictionary features more faithful explanations of task predictions than token saliency?

ERASER's comprehensiveness (p(y|x) minus p(y|x) with the top q% removed) and sufficiency (minus p with only the top
q% kept) against q, for each measured dictionary's features (ranked by attribution patching), integrated-gradients
tokens and random features and tokens; the accuracy drop when the top 5% are removed, beside AnchorX's 27.4 (SAE
features) and 11.8 (IG) points; and how much task accuracy each dictionary keeps when spliced in. The page reads
`python -m backend faithfulness` and `python -m backend tasks eval` results; it computes nothing."""

import pandas as pd
import streamlit as st

from explorer import data, state

run = state.require_run()
st.title("Faithfulness")
st.caption("For each task item, features are ranked by attribution patching to the correct choice and tokens by "
           "integrated gradients and by occlusion (each token's own removal effect); removing the top q% should hurt (comprehensiveness, higher is better) and keeping "
           "only them should not (sufficiency, lower is better). p(y|x) is the correct choice's probability "
           "normalised over the item's choices; the error term is kept, so only the removed codes change.")

items, summary = data.faithfulness_results(run)
if items.empty:
    d = st.session_state.get(state.DICT) or "<dict>"
    st.info("No faithfulness results in this run yet. Measure a dictionary (30 items per task by default; the token "
            "side is computed once per task and shared by every dictionary):", icon=":material/inbox:")
    st.code(f"python -m backend faithfulness --run {run} --dict {d}", language="bash")
else:
    tasks = list(dict.fromkeys(items["task"]))
    task = st.selectbox("Task", (["all tasks"] if len(tasks) > 1 else []) + tasks, key="fa_task")
    figs = data.faithfulness_figures(run, task)
    st.plotly_chart(figs["aopc"], width="stretch", config={"displaylogo": False}, key="fa_aopc")

    rows = summary[summary["task"] == task].copy()
    rows = rows[(rows["method"] == "features") | ~rows.duplicated(["method"])]  # the token side is the model's: once
    rows["who"] = [f"{d} ({k})" if m in ("features", "random_features") else "model" for d, k, m
                   in zip(rows["dictionary"], rows["kind"], rows["method"])]
    fmt = lambda m, lo, hi: f"{m:.3f} [{lo:.3f}, {hi:.3f}]"  # noqa: E731
    table = pd.DataFrame({
        "method": rows["method"], "features of": rows["who"], "items": rows["n_items"],
        "comprehensiveness (AOPC)": [fmt(*v) for v in rows[["aopc_comp", "aopc_comp_low", "aopc_comp_high"]].to_numpy()],
        "sufficiency (AOPC)": [fmt(*v) for v in rows[["aopc_suff", "aopc_suff_low", "aopc_suff_high"]].to_numpy()],
        "accuracy clean": rows.get("acc_clean"), "top 5% removed": rows.get("acc_top5"),
        "drop (points)": rows.get("drop_top5")})
    st.dataframe(table, hide_index=True, width="stretch", key="fa_table", column_config={
        "accuracy clean": st.column_config.NumberColumn(format="%.3f"),
        "top 5% removed": st.column_config.NumberColumn(format="%.3f"),
        "drop (points)": st.column_config.NumberColumn(format="%+.1f")})

    st.subheader("Accuracy drop with the top 5% removed")
    st.plotly_chart(figs["drop"], width="stretch", config={"displaylogo": False}, key="fa_drop")
    ref = data.anchorx_reference()
    lines = [f"AnchorX (Shah 2025) reports {ref['features']} points for SAE features against {ref['ig']} for IG."]
    for _, r in rows[rows["method"] == "features"].iterrows():
        if pd.isna(r.get("drop_top5")):
            continue
        parts = []
        for method, name in (("ig", "IG"), ("occlusion", "occlusion")):
            tok = rows[rows["method"] == method]
            if len(tok) and pd.notna(tok["drop_top5"].iloc[0]):
                g = tok.iloc[0]
                verdict = ("features hurt more" if r["drop_top5_low"] > g["drop_top5_high"] else
                           f"{name} tokens hurt more" if g["drop_top5_low"] > r["drop_top5_high"] else "the intervals overlap")
                parts.append(f"vs {name} **{g['drop_top5']:+.1f}** [{g['drop_top5_low']:+.1f}, {g['drop_top5_high']:+.1f}]: "
                             f"{verdict}")
        if parts:
            lines.append(f"Here, {r['dictionary']}: **{r['drop_top5']:+.1f}** [{r['drop_top5_low']:+.1f}, "
                         f"{r['drop_top5_high']:+.1f}] points " + "; ".join(parts) + ".")
    st.markdown("  \n".join(lines))

st.subheader("Task retention: accuracy clean, spliced and spliced with the error term")
ret = data.task_retention(run)
if ret.empty:
    st.caption(f"Run `python -m backend tasks eval --run {run} --dict <dict>` to measure how much task accuracy each "
               "dictionary keeps when its reconstruction replaces the activation.")
else:
    ci = lambda df, c: [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if pd.notna(m) else "" for m, lo, hi  # noqa: E731
                        in df[[c, f"{c}_low", f"{c}_high"]].to_numpy()]
    shown = pd.DataFrame({"dictionary": ret["dictionary"], "task": ret["task"], "items": ret["n_items"],
                          "chance": ret["chance"], "clean": ci(ret, "clean"), "spliced": ci(ret, "spliced"),
                          "spliced + error term": ci(ret, "spliced_error") if "spliced_error" in ret else "",
                          "retained": ci(ret, "retained"), "McNemar p": ret["mcnemar_p"]})
    st.dataframe(shown, hide_index=True, width="stretch", key="fa_retention", column_config={
        "chance": st.column_config.NumberColumn(format="%.3f"), "McNemar p": st.column_config.NumberColumn(format="%.3f")})
