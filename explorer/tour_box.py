"""The feature page's "Add to tour" box: a researcher puts the feature into the run's tour with a note for the expert.

The tour itself (order, notes, history) is kept by backend.store.tour in `<run>/tour.json` and edited on the Tour page.
"""

from __future__ import annotations

import streamlit as st

from backend.common.errors import UserError
from explorer import data, label_editor

TOUR_PAGE = "app_pages/tour.py"


def _add(run: str, d: str, feature: int, note_key: str) -> None:
    name = label_editor.author_name()
    if not name:
        st.session_state["tour_box_msg"] = ("error", "Enter your name first: every stop records who added it.")
        return
    try:
        i = data.add_to_tour(run, d, feature, str(st.session_state.get(note_key) or ""), name)
    except UserError as e:
        st.session_state["tour_box_msg"] = ("error", f"Not added: {e}")
        return
    st.session_state["tour_box_msg"] = ("success", f"Feature {feature} is stop {i + 1} of the tour.")


def render(run: str, d: str, feature: int) -> None:
    """"In the tour as stop N" with a link, or the Add-to-tour popover (author, note, button)."""
    msg = st.session_state.pop("tour_box_msg", None)
    if msg:
        (st.success if msg[0] == "success" else st.error)(msg[1])
    stops = data.tour(run)["stops"]
    at = next((i for i, s in enumerate(stops) if s["dictionary"] == d and int(s["feature"]) == int(feature)), None)
    if at is not None:
        st.page_link(TOUR_PAGE, label=f"In the tour as stop {at + 1} of {len(stops)}", icon=":material/tour:")
        return
    box = st.popover("Add to tour", icon=":material/add_location_alt:", key=f"tour_box_{feature}", on_change="rerun")
    if not box.open:  # filled only while open (it reruns on opening): less for every feature page to send
        return
    with box:
        label_editor.ask_author(key="tour_box_author")
        note_key = f"tour_add_note_{d}_{feature}"
        st.text_area("Note for the expert (optional)", key=note_key, height=80, max_chars=2000,
                     placeholder="what to look at: e.g. 'fires on the closing bracket of a call, not of a list'")
        st.button("Add to tour", key=f"tour_add_{feature}", type="primary", icon=":material/add:",
                  on_click=_add, args=(run, d, int(feature), note_key))
