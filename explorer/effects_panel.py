"""The feature page's "What this feature does" panel: Effects (ablate it on its top contexts) and Steer.

Effects: on a click, the feature is zero-ablated at every position of the shown window of its top 20 contexts (the dictionary
spliced in with its error term, so only this feature changes) and each token is shaded by the change of the
model's next-token loss there (red: worse without the feature), with the promoted and suppressed tokens on
hover. Steer: clean and steered continuations of a prompt side by side, streamed as they are generated, or a
sweep of 5 strengths with the KL of the first generated token. Everything runs through explorer/data.py.
"""

from __future__ import annotations

import streamlit as st

from explorer import data, effects_view, state

DEFAULT_PROMPT = "I think the most important thing is"
SWEEP = (0.25, 0.5, 1.0, 2.0, 4.0)  # multiples of the chosen strength


def render(run: str, d: str, feature: int, dash: dict, dead: bool) -> None:
    c1, c2 = st.columns([2, 5], vertical_alignment="bottom")
    c1.markdown("#### What this feature does")
    names = ["Effects of ablation", "Steer"]
    view = c2.segmented_control("view", names, default=names[0], key="fx_do_view", label_visibility="collapsed")
    try:  # only the chosen view is drawn
        if view == names[1]:
            _steer(run, d, feature, dash, dead)
        else:
            _effects(run, d, feature, dash, dead)
    except Exception as e:  # noqa: BLE001 - a failed intervention is a message; the page stays
        state.show_error(e)


def _effects(run: str, d: str, feature: int, dash: dict, dead: bool) -> None:
    if dead:
        st.info("A dead feature has no contexts to ablate it on.", icon=":material/bedtime:")
        return
    key = f"fx_ablated_{feature}"
    if st.button(f"Ablate feature {feature} on its top 20 contexts", key="fx_ablate", type="primary",
                 icon=":material/content_cut:"):
        st.session_state[key] = True
    if not st.session_state.get(key):
        st.caption("Zero-ablates the feature at every token of each top context (the dictionary is spliced in with its "
                   "error term kept, so nothing else changes) and shades every token by the change of the model's loss "
                   "on the next token: red = worse without the feature, blue = better. A few seconds on a CPU.")
        return
    with st.spinner("Running the top contexts clean and with the feature ablated..."):
        fe = data.feature_effects(run, d, feature)
    if not fe.contexts:
        st.info("This feature has no top contexts.")
        return
    vmax = effects_view.effect_scale([c.table for c in fe.contexts])
    src = "from the run's cached activations (layers after the hook only)" if fe.from_cache else "with a full forward pass"
    st.caption(f"Zero-ablating #{feature} on its top {len(fe.contexts)} contexts: mean loss change at the peak "
               f"**{fe.at_peak:+.4f}** nats, over the 8 tokens after it **{fe.after_peak:+.4f}** nats "
               f"({fe.seconds:.1f} s, {src}). The badge is each context's change at its peak.")
    st.html(effects_view.legend(vmax))
    st.html(effects_view.effect_contexts(fe.contexts, vmax))


def _steer(run: str, d: str, feature: int, dash: dict, dead: bool) -> None:
    max_act = float(dash.get("max_act") or 0.0)
    relative = not dead and max_act > 0
    with st.form("fx_steer_form", border=False):
        prompt = st.text_area("Prompt", value=DEFAULT_PROMPT, key="steer_prompt", height=70, max_chars=2000)
        c1, c2, c3, c4 = st.columns([2, 3, 2, 2])
        mode = c1.radio("Strengths", ["one", "sweep of 5"], key="steer_mode", horizontal=True)
        unit = f"x max activation ({max_act:.3g})" if relative else "(absolute: the feature never fired)"
        strength = c2.slider(f"Strength, {unit}", -10.0, 10.0, 1.0 if relative else 10.0, 0.25, key="steer_strength",
                             help="adds strength * W_dec[feature] to the hook activation at every token (error term kept)")
        n_new = c3.slider("New tokens", 5, 80, 30, key="steer_tokens")
        temperature = c4.number_input("Temperature", 0.0, 2.0, 0.0, 0.1, key="steer_temp", help="0 = greedy")
        with st.expander("Sampling (temperature > 0)"):
            s1, s2, s3 = st.columns(3)
            top_p = s1.number_input("top-p", 0.05, 1.0, 0.9, 0.05, key="steer_top_p")
            penalty = s2.number_input("frequency penalty", -2.0, 2.0, 0.0, 0.1, key="steer_penalty",
                                      help="subtracted from a token's logit per earlier use in the same text")
            seed = s3.number_input("seed", 0, 2**31 - 1, 0, key="steer_seed",
                                   help="one seed for both texts: they differ only where the steering changes the odds")
        go = st.form_submit_button("Steer", type="primary", icon=":material/tune:")
    last = st.session_state.get("_steer_last")
    if not go:
        if last and last["feature"] == feature and last["dict"] == d:
            _show_result(last)
        return
    if mode == "one":
        sampling = dict(temperature=temperature, top_p=top_p, frequency_penalty=penalty, seed=int(seed))
        st.session_state["_steer_last"] = _stream(run, d, feature, prompt, strength, relative, n_new, sampling)
    else:
        strengths = [strength * m for m in SWEEP] if strength else list(SWEEP)
        with st.spinner(f"Generating {n_new} tokens (greedy) for the clean text and 5 strengths..."):
            table = data.steer_sweep(run, d, prompt, feature, strengths, relative=relative, n_new=n_new)
        st.session_state["_steer_last"] = {"feature": feature, "dict": d, "prompt": prompt, "sweep": table,
                                           "unit": "x max act" if relative else ""}
        _show_result(st.session_state["_steer_last"])


def _stream(run, d, feature, prompt, strength, relative, n_new, sampling: dict) -> dict:
    """Generate clean and steered text, updating both columns at every token; returns what to show on reruns."""
    label = f"Steered: #{feature} {strength:+g}" + (" x max act" if relative else "")
    left, right = st.columns(2)
    left.markdown("**Clean**")
    right.markdown(f"**{label}**")
    slots = (left.empty(), right.empty())
    last = None
    for last in data.steer_stream(run, d, prompt, feature, strength, relative=relative, n_new=n_new, **sampling):
        for slot, text in zip(slots, last.texts):
            slot.html(effects_view.generated_html(text, prompt))
        if last.step == 0:
            kl = last.kl_first[1]
    n = last.step + 1
    note = (f"{n} new tokens per text, {n / max(last.seconds, 1e-9):.1f} tokens/s each (one batch per step, KV cache); "
            f"KL(clean || steered) of the first token {kl:.3f} nats")
    st.caption(note)
    return {"feature": feature, "dict": d, "prompt": prompt, "label": label, "texts": list(last.texts), "note": note}


def _show_result(last: dict) -> None:
    if "sweep" in last:
        table = last["sweep"].copy()
        table["strength"] = ["clean" if s == 0 and i == 0 else f"{s:+g} {last['unit']}".strip()
                             for i, s in enumerate(table["strength"])]
        st.dataframe(table, hide_index=True, width="stretch", key="steer_sweep_table",
                     column_config={"kl_first": st.column_config.NumberColumn("KL first token", format="%.4f",
                                                                              help="KL(clean || steered) of the first "
                                                                                   "generated token, nats"),
                                    "text": st.column_config.TextColumn("continuation", width="large")})
        return
    left, right = st.columns(2)
    left.markdown("**Clean**")
    right.markdown(f"**{last['label']}**")
    left.html(effects_view.generated_html(last["texts"][0], last["prompt"]))
    right.html(effects_view.generated_html(last["texts"][1], last["prompt"]))
    st.caption(last["note"])
