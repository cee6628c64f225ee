"""Tour: the features a researcher picked, in order, for a domain expert (`<run>/tour.json`, backend.store.tour).

A researcher adds stops from a feature page ("Add to tour", with a note), then here reorders them, edits
notes, removes stops, previews the tour as the expert will see it and downloads it as one HTML file that
opens offline. In demo mode (`./run.sh --demo`, `?demo=1`) this page opens first and is a stepper: one stop
per screen, large, with the label and whether people validated it or a scorer found it holds, the note, the
top contexts and the activation histogram; nothing can be changed.
"""

import streamlit as st

from backend.common.errors import UserError
from explorer import components, data, label_editor, state

STEP = "tour_step"  # session key: the stop shown by the stepper
N_CONTEXTS = 10

run = state.require_run()
label = st.session_state.get("run_label") or run
tour = data.tour(run)
stops = list(tour["stops"])
demo = state.is_demo()


def _go(i: int) -> None:
    st.session_state[STEP] = max(0, min(i, len(stops) - 1))


def _status_line(status: dict) -> str:
    parts = []
    if status.get("validation"):
        parts.append(f"{status['validation']} by people (Validate page)")
    hold = data.hold_f1()
    for scorer, f1 in (status.get("scores") or {}).items():
        parts.append(f"{scorer} scorer: F1 {f1:.2f} on unseen contexts, {'holds' if f1 >= hold else 'does not hold'}")
    return " · ".join(parts) or "not validated or scored yet"


def stop_view(i: int, stop: dict) -> None:
    """One stop, large: label and its status, the note, the top contexts, the activation histogram."""
    d, f = str(stop["dictionary"]), int(stop["feature"])
    dash = data.feature_dashboard(run, d, f)
    st.markdown(f"## {i + 1}. Feature {f} <span style='font-size:0.6em;color:#888'>of {components.esc(d)}</span>",
                unsafe_allow_html=True)
    text = str(dash.get("label") or "")
    st.html(label_editor.label_html(text, dash.get("label_source") or "") if text else
            "<div class='fx-label'><i>No label yet.</i></div>")
    st.caption(_status_line(data.label_status(run, d, f)))
    if stop.get("note"):
        st.info(components.md_text(stop["note"]), icon=":material/sticky_note_2:")
    left, right = st.columns([3, 2], gap="medium")
    with left:
        st.markdown(f"**Top {N_CONTEXTS} contexts** (shaded by activation, the peak outlined)")
        ctxs = list((dash.get("contexts") or {}).get("top") or [])[:N_CONTEXTS]
        st.html(components.context_rows(ctxs, vmax=float(dash.get("max_act") or 0.0),
                                        empty="No contexts: this feature never fired.", feature=f))
    with right:
        fig = components.hist_from_bins(dash.get("hist_edges") or [], dash.get("hist_counts") or [],
                                        f"Activations, density {float(dash.get('density') or 0):.3%}", "#ff7f0e",
                                        height=260, xtitle="activation (firing tokens)")
        st.plotly_chart(fig, width="stretch", config={"displayModeBar": False}, key=f"tour_hist_{i}")
        lc1, lc2 = st.columns(2)
        lc1.html(components.logit_table(list(dash.get("bottom_logit_tokens") or [])[:6],
                                        list(dash.get("bottom_logit_values") or [])[:6], positive=False, title="Suppresses"))
        lc2.html(components.logit_table(list(dash.get("top_logit_tokens") or [])[:6],
                                        list(dash.get("top_logit_values") or [])[:6], positive=True, title="Promotes"))
        st.page_link(state.FEATURE_PAGE, label="Open its full page", icon=":material/open_in_new:",
                     query_params={state.RUN: label, state.DICT: d, state.FEATURE: str(f)})


def stepper() -> None:
    i = max(0, min(int(st.session_state.get(STEP, 0)), len(stops) - 1))
    c1, c2, c3 = st.columns([1, 3, 1], vertical_alignment="center")
    c1.button("Previous", icon=":material/chevron_left:", on_click=_go, args=(i - 1,), disabled=i == 0,
              width="stretch", key="tour_prev")
    c2.progress((i + 1) / len(stops), text=f"Stop {i + 1} of {len(stops)}")
    c3.button("Next", icon=":material/chevron_right:", icon_position="right", on_click=_go, args=(i + 1,),
              disabled=i == len(stops) - 1, width="stretch", key="tour_next")
    stop_view(i, stops[i])


def _edit(action, *args) -> None:
    """Run a tour change from a button callback; a refusal becomes a message."""
    name = label_editor.author_name()
    if not name:
        st.session_state["tour_msg"] = ("error", "Enter your name first: every change to the tour records who made it.")
        return
    try:
        action(run, *args, name)
    except UserError as e:
        st.session_state["tour_msg"] = ("error", str(e))


def _save_note(i: int, key: str) -> None:
    _edit(data.set_tour_note, i, str(st.session_state.get(key) or ""))


def editor() -> None:
    """The researcher's view: every stop with up, down, remove, its note; the author asked once."""
    label_editor.ask_author(key="tour_author")
    msg = st.session_state.pop("tour_msg", None)
    if msg:
        st.error(msg[1])
    labels = {}
    for i, s in enumerate(stops):
        d, f = str(s["dictionary"]), int(s["feature"])
        if d not in labels:
            labels[d] = data.labels(run, d)
        with st.container(border=True):
            c = st.columns([0.5, 4.5, 0.6, 0.6, 0.6], vertical_alignment="center")
            c[0].markdown(f"**{i + 1}.**")
            text = labels[d].get(f, "")
            c[1].page_link(state.FEATURE_PAGE, label=f"Feature {f} of {components.md_text(d)}"
                           + (f" · {components.md_text(text[:80])}" if text else ""),
                           query_params={state.RUN: label, state.DICT: d, state.FEATURE: str(f)})
            c[2].button("", icon=":material/arrow_upward:", key=f"tour_up_{i}", disabled=i == 0, help="earlier",
                        on_click=_edit, args=(data.move_tour_stop, i, -1))
            c[3].button("", icon=":material/arrow_downward:", key=f"tour_down_{i}", disabled=i == len(stops) - 1,
                        help="later", on_click=_edit, args=(data.move_tour_stop, i, 1))
            c[4].button("", icon=":material/delete:", key=f"tour_remove_{i}", help="remove from the tour",
                        on_click=_edit, args=(data.remove_tour_stop, i))
            key = f"tour_note_{i}_{tour['version']}"  # a new version refills every box
            st.text_area("Note", value=str(s.get("note") or ""), key=key, height=68, max_chars=2000,
                         label_visibility="collapsed", placeholder="what the expert should see here",
                         on_change=_save_note, args=(i, key))
            st.caption(f"added by {s.get('added_by') or '?'} on {str(s.get('added_at') or '')[:16].replace('T', ' ')}")


def export_box() -> None:
    title = f"Tour of {label}"
    if st.button("Prepare the HTML export", icon=":material/html:", key="tour_export",
                 help="one self-contained file (plotly inline, ~5 MB) that opens offline in any browser"):
        st.session_state["tour_html"] = (tour["version"], data.export_html(run, stops, title))
    ready = st.session_state.get("tour_html")
    if ready and ready[0] == tour["version"]:
        st.download_button("Download tour.html", ready[1], file_name=f"tour-{label}.html", mime="text/html",
                           icon=":material/download:", key="tour_download")


st.title(f"Tour of {label}")
if not stops:
    if demo:
        st.info("This run has no tour yet.", icon=":material/tour:")
    else:
        st.info("The tour is empty. Open a feature's page and use **Add to tour** (with a note for the expert); "
                "the stops appear here, in order, to reorder and present.", icon=":material/tour:")
    st.stop()

if demo:
    stepper()
else:
    st.caption(f"{len(stops)} stops · version {tour['version']} (every change keeps the previous version in "
               f"tour.json's history) · experts see it with `./run.sh --demo` or `?demo=1`")
    tab_edit, tab_preview = st.tabs(["Stops", "Preview as the expert sees it"], key="tour_tab", on_change="rerun")
    if tab_edit.open is not False:
        with tab_edit:
            editor()
            export_box()
    if tab_preview.open is not False:
        with tab_preview:
            stepper()
