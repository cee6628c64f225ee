"""Prompt inspector: run typed text through the model (cached) and the dictionary; show the top
features of every token, shade the text by one chosen feature, open any feature's page; then ablate,
clamp or steer features of the text and see what changes (explorer/prompt_edit_panel.py); attribute the prediction of
a chosen next token or answer to features and, by integrated gradients, to tokens (explorer/attribution_panel.py)."""

from functools import partial

import streamlit as st

from explorer import attribution_panel, components, data, prompt_edit_panel, state

run, d = state.require_dict()
info = data.run_info(run)
st.title("Prompt inspector")
st.caption(f"The text runs through **{components.model_label(info.get('model'))}** up to `{info.get('hook')}` and through dictionary **{d}**. "
           "Position 0 (the BOS token) is left out, as in training and analysis.")

EXAMPLE = "The quick brown fox jumps over the lazy dog. In 1969, Apollo 11 landed on the Moon."
st.session_state.setdefault("p_input", st.session_state.get("p_text") or EXAMPLE)  # widget keys are dropped off-page
with st.form("prompt"):
    # a stable key (no changing `value=`), so the box keeps its identity from one prompt to the next
    text = st.text_area("Text", key="p_input", height=110, max_chars=20_000, placeholder="Type or paste text")
    submitted = st.form_submit_button("Inspect", type="primary")
if submitted:
    st.session_state["p_text"] = text
    st.session_state.pop("p_feature", None)
if not st.session_state.get("p_text"):
    st.info("Type or paste some text and press **Inspect**.", icon=":material/keyboard:")
    st.stop()
text = st.session_state["p_text"]

# model and dictionary are cached for the whole server; the first load is the slow part
with st.status("Loading the model and dictionary...", expanded=False) as status:
    data.load_model(info["model"])
    data.load_dictionary(run, d)
    status.update(label="Model and dictionary ready", state="complete")
with st.spinner("Running the prompt..."):
    insp = data.inspect(run, d, text)

summary = insp.feature_summary()
labels = data.labels(run, d)
n_tok = len(insp.tokens) - 1
st.caption(f"{n_tok} tokens · {summary.shape[0]:,} distinct features fire · {insp.seconds * 1000:.0f} ms forward + encode"
           + (" · the text was cut to the model's maximum length" if insp.truncated else ""))
if summary.empty:
    st.info("No feature fires on this text.", icon=":material/volume_off:")
    st.stop()


top = summary.head(300)  # the strongest features of the text: enough to choose from, quick to send
names = {int(f): f"#{f} · max {m:.2f} on {int(n)} tokens" + (f" · {labels[int(f)][:40]}" if labels.get(int(f)) else "")
         for f, m, n in zip(top["feature"], top["max_activation"], top["n_tokens"])}
options = list(names)
c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
chosen = c1.selectbox("Shade the text by feature", options, format_func=names.get, key="p_feature")
c2.page_link(state.FEATURE_PAGE, label=f"Open feature {chosen}", icon=":material/open_in_new:", query_params=state.feature_link_params(chosen))
acts = insp.feature_acts(chosen)
peak = int(acts.argmax()) if acts.max() > 0 else None
st.html('<div class="fx-prompt">' + components.token_spans(insp.tokens, acts, peak=peak, skip=1 if insp.has_bos else 0) + "</div>")

left, right = st.columns([3, 2], gap="medium")
with left:
    st.markdown("**Top 5 features of every token** (a feature id opens its page in a new tab)")
    st.html(components.prompt_token_table(insp, labels, st.session_state.get("run_label") or run, d))
with right:
    st.markdown("**Features in this text** (click a row to open its page)")
    table = summary.head(200).assign(label=lambda df: [labels.get(int(f), "") for f in df["feature"]])
    table = table.assign(peak_token=[insp.tokens[int(p)] for p in table["peak_pos"]])
    st.session_state["_p_ids"] = table["feature"].astype(int).tolist()
    st.dataframe(
        table[["feature", "max_activation", "n_tokens", "peak_token", "label"]], hide_index=True, width="stretch",
        height=520, on_select=partial(state.open_selected, "p_table", "_p_ids"), selection_mode="single-row", key="p_table",
        column_config={"feature": st.column_config.NumberColumn("id", format="%d"),
                       "max_activation": st.column_config.NumberColumn("max act", format="%.2f"),
                       "n_tokens": st.column_config.NumberColumn("tokens", format="%d"),
                       "peak_token": "peak token"},
    )

prompt_edit_panel.render(run, d, text, insp, summary, labels, chosen)
attribution_panel.render(run, d, text, labels)
