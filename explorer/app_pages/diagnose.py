"""Diagnose: which tokens of a prompt the model reads as another domain, what the features behind them say,
a reformulation with its equivalence verdict, and the answer probabilities before and after; or the
off-domain features ablated instead (backend/diagnosis; after Yang et al. 2025, arXiv 2507.06427)."""

import pandas as pd
import streamlit as st

from explorer import components, data, diagnose_view, state

run, d = state.require_dict()
st.title("Diagnose a prompt")
st.caption("Each token's features vote with their domain (where they fire in the corpus, what their label says); a token "
           "whose activation mass lies mostly outside the expected domain is flagged. The flagged tokens are spelled out "
           "by rules (or rewritten by the local LLM), the rewrite is checked to ask the same question, and the model "
           "answers again.")

fd = data.feature_domains(run, d)
if fd is None:
    st.info(f"Dictionary **{d}** has no feature domains yet. Run `python -m backend explain --run {run} --dict {d}` "
            f"(labels), then `python -m backend domains --run {run} --dict {d}`.", icon=":material/category:")
    st.stop()

c1, c2, c3 = st.columns([2, 1, 1], vertical_alignment="bottom")
source = c1.radio("Prompt", ["Task item", "Your own text"], horizontal=True, key="dg_source")
domain = c2.selectbox("Expected domain", fd.domains, index=fd.domains.index("math") if "math" in fd.domains else 0,
                      key="dg_domain")
calibrated = (fd.meta.get("thresholds") or {}).get(domain, {}).get("threshold")
threshold = c3.number_input("Flag threshold", 0.0, 1.0, value=float(calibrated if calibrated is not None else 0.9),
                            step=0.01, format="%.3f", key=f"dg_thr_{domain}",
                            help="out-of-domain mass above which a token is flagged; the default is the 1 - rate quantile "
                                 "on held-out text of this domain (domains.json)")

item = None
if source == "Task item":
    t1, t2 = st.columns([3, 1], vertical_alignment="bottom")
    task = t1.selectbox("Task", data.diagnosis_tasks(), key="dg_task")
    items = data.task_items(task)
    idx = int(t2.number_input(f"Item (0-{len(items) - 1})", 0, len(items) - 1, 0, key=f"dg_item_{task}"))
    item = items[idx]
    text, region = item["prompt"], tuple(item["region"])
    st.caption(f"Question: {components.md_text(item['input'])}")
else:
    st.session_state.setdefault("dg_input", "What is |3 - 11| x 2 ^ 3?")
    with st.form("dg_form"):
        st.text_area("Text", key="dg_input", height=90, max_chars=4000)
        st.form_submit_button("Diagnose", type="primary")
    text, region = st.session_state["dg_input"], None
    if not text.strip():
        st.info("Type a prompt and press **Diagnose**.")
        st.stop()

with st.spinner("Running the prompt..."):
    diag = data.diagnose(run, d, text, domain, threshold, region)
s = diag.summary()
st.html(diagnose_view.ood_spans(diag))
st.caption(f"{s['n_flagged']} of {s['n_tokens']} tokens flagged · prompt score (largest out-of-domain mass) "
           f"{s['score']:.2f} · threshold {diag.threshold:.3f} · {diag.seconds * 1000:.0f} ms"
           + (" · grey tokens are the task's framing, not diagnosed" if item else ""))

flagged = diag.flagged
left, right = st.columns([3, 2], gap="medium")
with left:
    st.markdown("**Features behind a token** (click an id to open its page)")
    pool = flagged if len(flagged) else diag.table[diag.table["in_region"]]
    names = {int(r["pos"]): f"{'⚑ ' if r['flagged'] else ''}{r['token']!r} · out-of-domain {r['ood']:.2f}"
             for _, r in pool.iterrows()}
    pos = st.selectbox("Token", list(names), format_func=names.get, key="dg_pos")
    feats = diag.features[diag.features["pos"] == pos].copy()
    link_run = st.session_state.get("run_label") or run
    feats["page"] = [components.feature_href(link_run, d, int(f)) for f in feats["feature"]]
    st.dataframe(feats[["page", "label", "domain", "p_expected", "weight", "activation"]], hide_index=True, width="stretch",
                 column_config={"page": st.column_config.LinkColumn("id", display_text=r"feature=(\d+)"),
                                "p_expected": st.column_config.NumberColumn(f"p({domain})", format="%.2f"),
                                "weight": st.column_config.NumberColumn(
                                    "off-domain", format="%.2f",
                                    help="how much more the feature belongs to another domain than to this one"),
                                "activation": st.column_config.NumberColumn("act", format="%.2f")})
with right:
    st.markdown("**Reformulation**")
    start, end = region or (0, len(text))
    question = text[start:end]
    spans = [(a - start, b - start) for a, b in diag.flagged_spans]
    ref = data.rule_reformulation(question, spans, domain)
    if not len(flagged):
        st.caption("No token is flagged: nothing to reformulate.")
    elif not ref.changed:
        st.caption("No rule of rules.toml matches a flagged token; try the local LLM.")
    else:
        st.markdown(f"Rules ({', '.join(ref.rules)}): *{components.md_text(ref.proposed)}*")
        (st.success if ref.accepted else st.warning)(ref.verdict.describe()
                                                     + (f" ({'; '.join(ref.verdict.reasons)})" if ref.verdict.reasons else ""))
    llm = None
    if len(flagged) and st.button("Ask the local LLM to rewrite it", icon=":material/smart_toy:", key="dg_llm"):
        st.session_state["dg_llm_for"] = (text, domain, threshold)
    if len(flagged) and st.session_state.get("dg_llm_for") == (text, domain, threshold):
        with st.spinner("SmolLM2 is rewriting the question..."):
            llm = data.llm_reformulation(run, question, spans, flagged["token"].tolist(), domain)
        st.markdown(f"LLM: *{components.md_text(llm.proposed) or '(empty reply)'}*")
        (st.success if llm.accepted else st.warning)(llm.verdict.describe() if llm.verdict else "unchanged")

if item is not None:
    st.markdown("**Answer probabilities before and after**")
    series = {"original": data.choice_probs(run, task, item["id"], item["input"])}
    if ref.accepted:
        series["reformulated"] = data.choice_probs(run, task, item["id"], ref.proposed)
    if llm is not None and llm.accepted:
        series["LLM rewrite"] = data.choice_probs(run, task, item["id"], llm.proposed)
    feats_off, positions = diag.ablation()
    b1, b2 = st.columns([1, 3], vertical_alignment="center")
    if b1.button("Ablate the off-domain features instead", icon=":material/content_cut:", disabled=not feats_off,
                 key="dg_ablate"):
        st.session_state["dg_ablate_for"] = (text, domain, threshold)
    b2.caption(f"zero-ablates the {len(feats_off)} active features that belong to another domain (weight >= 0.25) at "
               f"the {len(positions)} flagged tokens, error term kept" if feats_off else "no flagged token with off-domain features")
    if feats_off and st.session_state.get("dg_ablate_for") == (text, domain, threshold):
        series["ablated"] = data.ablated_probs(run, d, task, item["id"], feats_off, positions)
    st.plotly_chart(diagnose_view.probs_chart(item["choices"], series, item["correct"]), width="stretch",
                    config={"displayModeBar": False}, key="dg_probs")

res = data.diagnosis_results(run)
with st.expander("The experiment on this run (`python -m backend diagnose-eval`)", icon=":material/science:",
                 expanded=False):
    if res is None:
        st.caption(f"Not run yet: `python -m backend diagnose-eval --run {run}` measures accuracy with the original "
                   "prompts, the flagged ones reformulated, every prompt reformulated, and random flags.")
    else:
        summ = res["summary"]
        mine = summ[summ["dict"] == d] if d in set(summ["dict"]) else summ
        st.dataframe(mine[["family", "dict", "condition", "n_items", "accuracy", "acc_low", "acc_high", "flag_rate",
                           "changed_rate", "n_rejected"]], hide_index=True, width="stretch")
        tests = res["tests"]
        st.dataframe(pd.DataFrame(tests[tests["dict"] == d] if d in set(tests["dict"]) else tests)[
            ["family", "dict", "a", "b", "diff", "diff_low", "diff_high", "mcnemar_p"]], hide_index=True, width="stretch")
