"""Validate page: annotators judge whether held-out contexts fit a feature's label, blind.

For the dictionary chosen in the sidebar, features with a label are dealt one at a time (never-validated
first, then ones only other annotators judged, so pairs share items for Cohen's kappa). Each shows its
label and a shuffled mix of activating and non-activating contexts the label was not written from
(backend.labels.heldout), with no shading, value or order that would tell which is which. The annotator
marks each "fits" or "does not fit" and may propose a better label; the verdicts go to labels.duckdb
and give the feature's human precision and recall. The Progress tab counts validated, agreed and
disputed features and the kappa of every annotator pair.
"""

import itertools
import random

import pandas as pd
import streamlit as st

from backend.common.errors import UserError
from explorer import components, data, label_editor, state

N_PER_SIDE = 5  # activating and as many non-activating contexts per feature (10 judgements, about a minute)
MAX_PROBE = 8  # features tried per page run when dealt ones lack held-out contexts of one kind
CHOICES = ("fits", "does not fit")

run, d = state.require_dict()
st.markdown(f"## Validate labels <span style='font-size:0.6em;color:#888'>{components.esc(d)}</span>",
            unsafe_allow_html=True)
tab_val, tab_prog = st.tabs(["Validate", "Progress"], key="val_tab")


def _candidates() -> list[int]:
    """Live features with a non-empty current label (labels.duckdb, else the analysis)."""
    df, _ = data.list_features(run, d, labelled=True, alive=True, limit=10**9)
    return [int(f) for f in df["feature"]]


def _deal(annotator: str, labelled: list[int]) -> tuple[int | None, list[dict], int]:
    """(feature, shuffled held-out contexts, features left) for this annotator; skipped ones go last."""
    cur = data.current_labels(run, d)  # a feature relabelled since it was judged is dealt again
    versions = dict(zip(cur["feature"].tolist(), cur["label_version"].tolist()))
    queue = data.validation_queue(run, d, annotator, labelled, versions)
    skipped = st.session_state.setdefault("val_skipped", [])
    queue = [f for f in queue if f not in skipped] + [f for f in queue if f in skipped]
    for f in queue[:MAX_PROBE]:
        try:
            ctxs = data.heldout_contexts(run, d, f, n=N_PER_SIDE)
        except UserError:
            ctxs = []
        if any(c["activating"] for c in ctxs) and not all(c["activating"] for c in ctxs):
            ctxs = list(ctxs)
            random.Random(f"{d}:{f}:{annotator}").shuffle(ctxs)  # stable across reruns, differs per annotator
            return f, ctxs, len(queue)
        if f not in skipped:
            skipped.append(f)  # too few held-out contexts to judge: deal it last
    return None, [], len(queue)


def _submit(f: int, version: int, annotator: str, ctxs: list[dict]) -> None:
    keys = [f"val_{f}_{i}" for i in range(len(ctxs))]
    marks = [st.session_state.get(k) for k in keys]
    if any(m is None for m in marks):
        st.session_state["val_msg"] = ("error", f"Mark every context first ({sum(m is None for m in marks)} left).")
        return
    items = [{"token_index": int(c["token_index"]), "activating": bool(c["activating"]), "fits": m == CHOICES[0]}
             for c, m in zip(ctxs, marks)]
    try:
        data.add_verdicts(run, d, f, annotator, items, label_version=version,
                          proposal=str(st.session_state.get(f"val_prop_{f}") or ""))
    except UserError as e:
        st.session_state["val_msg"] = ("error", f"Not saved: {e}")
        return
    h = data.human_precision_recall(pd.DataFrame([dict(i, feature=f, label_version=version, annotator=annotator) for i in items]))
    p, r = h["precision"].iloc[0], h["recall"].iloc[0]
    fmt = lambda x: "n/a" if pd.isna(x) else f"{x:.2f}"  # noqa: E731
    st.session_state["val_msg"] = ("success", f"Feature {f}: saved {len(items)} verdicts. Your precision {fmt(p)}, "
                                              f"recall {fmt(r)} (of the contexts you said fit, the fraction that activate; "
                                              "of those that activate, the fraction you said fit).")
    for k in keys:
        st.session_state.pop(k, None)


def _skip(f: int) -> None:
    skipped = st.session_state.setdefault("val_skipped", [])
    if f in skipped:
        skipped.remove(f)
    skipped.append(f)


with tab_val:
    annotator = label_editor.ask_author(key="val_author")
    msg = st.session_state.pop("val_msg", None)
    if msg:
        (st.success if msg[0] == "success" else st.error)(msg[1])
    labelled = _candidates()
    if not annotator:
        st.info("Enter your name to start: verdicts are recorded per annotator, so two people's can be compared.")
    elif not labelled:
        st.info(f"No feature of **{components.esc(d)}** has a label yet. Label some on the Feature page (or run the "
                "automatic labeller), then validate them here.", icon=":material/label_off:")
    else:
        f, ctxs, left = _deal(annotator, labelled)
        if f is None:
            st.success(f"Nothing left for you in {d}: you have judged every labelled feature that has held-out "
                       "contexts of both kinds.", icon=":material/task_alt:")
        else:
            hist = data.label_history(run, d, f)
            text, meta, _ = label_editor.current_label(run, d, f, {"label": data.labels(run, d).get(f, "")})
            version = int(hist.iloc[0]["version"]) if len(hist) else 0
            st.caption(f"{left} labelled feature{'s' if left != 1 else ''} to go for {annotator} · dictionary {d} "
                       "(change it in the sidebar)")
            st.markdown(f"#### Feature {f}")
            st.html(label_editor.label_html(text, meta))
            st.caption("Does each context below fit this label? Some make the feature fire and some do not; "
                       "judge the underlined token in its context, from the text alone.")
            with st.form(f"val_form_{f}", border=False):
                for i, c in enumerate(ctxs):
                    left_col, right_col = st.columns([5, 2], vertical_alignment="center")
                    left_col.html(components.plain_context(c["tokens"], number=i + 1, marked=c.get("peak")))
                    right_col.radio(f"Context {i + 1}", CHOICES, index=None, key=f"val_{f}_{i}", horizontal=True,
                                    label_visibility="collapsed")
                st.text_input("Better label (optional)", key=f"val_prop_{f}", max_chars=2000,
                              placeholder="propose a label that fits these contexts better")
                st.form_submit_button("Submit verdicts", type="primary", icon=":material/fact_check:",
                                      on_click=_submit, args=(f, version, annotator, ctxs))
            st.button("Skip this feature", key=f"val_skip_{f}", on_click=_skip, args=(f,))

with tab_prog:
    val = data.validation(run, d)
    prog = val["progress"]
    n_lab = len(_candidates())
    m = st.columns(5)
    m[0].metric("labelled (live)", f"{n_lab:,}")
    m[1].metric("validated", f"{prog['validated']:,}")
    m[2].metric("agreed", f"{prog['agreed']:,}", help="judged by two or more annotators who agree on at least "
                "80% of the contexts they share")
    m[3].metric("disputed", f"{prog['disputed']:,}", help="judged by two or more annotators who agree on less "
                "than 80% of shared contexts")
    m[4].metric("verdicts", f"{prog['verdicts']:,}", help=f"from {prog['annotators']} annotator(s)")
    status = val["status"]
    if status.empty:
        st.caption("No verdicts yet.")
    else:
        human = val["human"][["feature", "label_version", "precision", "recall", "f1"]]
        table = status.merge(human, on=["feature", "label_version"], how="left")
        st.markdown("**Per feature** (human precision/recall pooled over annotators, on the latest judged label version)")
        st.dataframe(table, hide_index=True, width="stretch",
                     column_config={"precision": st.column_config.NumberColumn(format="%.2f"),
                                    "recall": st.column_config.NumberColumn(format="%.2f"),
                                    "f1": st.column_config.NumberColumn(format="%.2f"),
                                    "agreement": st.column_config.NumberColumn(format="%.2f")})
        names = sorted(val["verdicts"]["annotator"].unique())
        if len(names) >= 2:
            rows = []
            for a, b in itertools.combinations(names, 2):
                k = data.cohen_kappa(run, d, a, b)
                rows.append({"annotator A": a, "annotator B": b, "shared items": k["n"], "agreement": k["agreement"],
                             "Cohen's kappa": k["kappa"]})
            st.markdown("**Annotator pairs** (Cohen's kappa on the contexts both judged)")
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        props = val["proposals"]
        if len(props):
            st.markdown("**Proposed labels**")
            st.dataframe(props, hide_index=True, width="stretch")
