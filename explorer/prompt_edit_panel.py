"""The prompt inspector's intervention panel: pick features of the text, ablate / clamp / scale / steer them, and
see each token's next-token loss change (shaded, details on hover) and the next-token distribution before and
after at any position (Plotly bars). Runs through explorer/data.py (cached per prompt and edit)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from explorer import data, effects_view, state
from explorer.components import show_token

OPS = {"zero-ablate": "zero", "mean-ablate": "mean", "clamp to value": "clamp", "scale by value": "scale",
       "steer: add value x W_dec": "steer"}


def render(run: str, d: str, text: str, insp, summary, labels: dict[int, str], chosen: int | None) -> None:
    st.markdown("#### Intervene on this text")
    options = [int(f) for f in summary["feature"].head(300)]
    names = {f: f"#{f}" + (f" · {labels[f][:40]}" if labels.get(f) else "") for f in options}
    T = len(insp.tokens)
    with st.form("p_edit_form"):
        c1, c2, c3 = st.columns([4, 2, 2])
        feats = c1.multiselect("Features to edit", options, default=[chosen] if chosen in options else None,
                               format_func=names.get, key="p_edit_feats", max_selections=16,
                               help="features that fire on this text, strongest first")
        op = c2.selectbox("Edit", list(OPS), key="p_edit_op")
        value = c3.number_input("Value", value=0.0, step=0.5, key="p_edit_value",
                                help="clamp: the activation; scale: the factor; steer: the strength (ignored by ablations)")
        c4, c5, c6 = st.columns([4, 2, 2])
        positions = c4.multiselect("Only at these tokens (empty: every token)", list(range(1 if insp.has_bos else 0, T)),
                                   format_func=lambda p: f"{p}: {show_token(insp.tokens[p])!r}", key="p_edit_pos")
        relative = c5.checkbox("value x max activation", key="p_edit_rel", help="clamp and steer: a multiple of each "
                               "feature's largest activation in the run")
        no_error = c6.checkbox("drop the error term", key="p_edit_noerr",
                               help="splice the bare reconstruction decode(edit(f)) instead of x + the change")
        go = st.form_submit_button("Apply edit", type="primary", icon=":material/content_cut:")
    if go:
        if not feats:
            st.warning("Choose at least one feature to edit.")
            return
        st.session_state["p_edit"] = {"text": text, "features": tuple(int(f) for f in feats), "op": OPS[op],
                                      "value": None if OPS[op] in ("zero", "mean") else float(value),
                                      "relative": bool(relative), "positions": tuple(positions) or "all",
                                      "error_term": not no_error}
    params = st.session_state.get("p_edit")
    if not params or params["text"] != text:
        st.caption("Choose features and an edit, then **Apply edit**: the text runs again with the dictionary spliced in "
                   "at the hook (error term kept) and the chosen codes changed.")
        return
    try:
        with st.spinner("Running the text clean and edited..."):
            eff = data.text_effects(run, d, text, params["features"], params["op"], params["value"], params["relative"],
                                    params["positions"], params["error_term"])
    except Exception as e:  # noqa: BLE001 - a bad edit (absurd value, mean without analysis) is a message
        state.show_error(e)
        return
    _show(eff, insp.has_bos)


def _show(eff, has_bos: bool) -> None:
    table = eff.table
    skip = 1 if has_bos else 0
    vmax = effects_view.effect_scale([table.iloc[skip:]])
    st.caption(f"{eff.edit}{'' if eff.error_term else ' (no error term)'}: mean loss change "
               f"**{eff.mean_loss_change:+.4f}** nats per token, largest KL {float(table['kl'].max()):.4f} "
               f"({eff.seconds * 1000:.0f} ms)")
    st.html(effects_view.legend(vmax))
    st.html('<div class="fx-prompt">' + effects_view.effect_spans(table, vmax, skip=skip) + "</div>")
    rows = table.iloc[skip:]
    default = int(rows["kl"].to_numpy().argmax()) + skip if len(rows) else skip
    left, right = st.columns([2, 3], gap="medium")
    with left:
        pos = st.selectbox("Next-token distribution after token", list(range(skip, len(table))), index=default - skip,
                           format_func=lambda p: f"{p}: {show_token(table['token'].iloc[p])!r} "
                                                 f"(KL {table['kl'].iloc[p]:.3f})", key="p_edit_dist_pos")
        st.plotly_chart(effects_view.distribution_figure(table.iloc[pos]), width="stretch",
                        config={"displayModeBar": False}, key="p_edit_dist")
    with right:
        show = rows[["pos", "token", "act", "loss_change", "kl"]].copy()
        show["promoted"] = [", ".join(repr(show_token(t)) for t in p[:3]) for p in rows["promoted_prob"]]
        show["suppressed"] = [", ".join(repr(show_token(t)) for t in p[:3]) for p in rows["suppressed_prob"]]
        show["loss_change"] = show["loss_change"].astype(np.float64)
        st.dataframe(show, hide_index=True, width="stretch", height=360, key="p_edit_table",
                     column_config={"act": st.column_config.NumberColumn("act", format="%.2f",
                                                                         help="largest clean activation of the edited features"),
                                    "loss_change": st.column_config.NumberColumn("loss change", format="%+.4f",
                                                                                 help="nats; > 0: the edit made the next token less likely"),
                                    "kl": st.column_config.NumberColumn("KL", format="%.4f"),
                                    "promoted": "promoted (probability)", "suppressed": "suppressed"})
