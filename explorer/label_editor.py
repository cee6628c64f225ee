"""The label editor of the feature page: current label, edit form, version history with restore.

Every save appends a version to `<run>/labels.duckdb` (through explorer.data); nothing is overwritten, so
restore is "append a copy of that version". The author's name is asked once per browser session and
kept in `st.session_state`. Label text is user input: it is shown with `st.text`/`st.dataframe` or
escaped into markup, never rendered as Markdown or HTML.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from backend.common.errors import UserError
from explorer import components, data

AUTHOR = "author"  # session key of the person's name (shared with the Validate page)
HISTORY_ROWS = 30  # versions listed with a restore button (newest first)


def author_name() -> str:
    return str(st.session_state.get(AUTHOR) or "").strip()


def ask_author(key: str = "author_box") -> str:
    """The session's author name; asks for it (once per browser session) when not known yet."""
    name = author_name()
    if name:
        c1, c2 = st.columns([5, 1], vertical_alignment="center")
        c1.caption(f"Signed as **{components.md_text(name)}** for this session.")
        c2.button("change", key=f"{key}_change", on_click=lambda: st.session_state.pop(AUTHOR, None))
        return name
    st.text_input("Your name (asked once per session; recorded with every label you save)", key=key,
                  on_change=lambda: st.session_state.update({AUTHOR: st.session_state[key].strip()}),
                  max_chars=200, placeholder="e.g. Ada Lovelace")
    return author_name()


def label_html(text: str, meta: str) -> str:
    """The current label as escaped markup: user text can never become a tag or a link."""
    return (f'<div class="fx-label" style="font-size:15px"><span style="font-weight:600">Label:</span> <span class="fx-label-text">{components.esc(text)}</span>'
            f' <span style="color:#888;font-size:12px">{components.esc(meta)}</span></div>')


def _meta(row: pd.Series) -> str:
    score = row.get("score")
    f1 = f" · F1 {float(score):.2f}" if score is not None and pd.notna(score) else ""
    return f"v{int(row['version'])} · {row['author']} · {row['source']} · {pd.Timestamp(row['created_at']):%Y-%m-%d %H:%M} UTC{f1}"


def editor_key(feature: int) -> str:
    """Session key of the open/closed state of a feature's label editor."""
    return f"label_editor_{int(feature)}"


def _keep_open(feature: int) -> None:
    """A save or restore changes the expander's title (its version count), which Streamlit takes for a new
    expander, closed; the writer keeps seeing the editor."""
    st.session_state[editor_key(feature)] = True


def _save(run: str, d: str, feature: int, text_key: str, notes_key: str) -> None:
    _keep_open(feature)
    name = author_name()
    if not name:
        st.session_state["label_msg"] = ("error", "Enter your name first: every version records who wrote it.")
        return
    text = str(st.session_state.get(text_key) or "").strip()
    try:
        v = data.save_label(run, d, feature, text, name, notes=str(st.session_state.get(notes_key) or ""))
    except UserError as e:
        st.session_state["label_msg"] = ("error", f"Not saved: {e}")
        return
    st.session_state["label_msg"] = ("success", f"Saved version {v} of feature {feature}'s label.")


def _restore(run: str, d: str, feature: int, version: int, text: str, text_key: str) -> None:
    _keep_open(feature)
    name = author_name()
    if not name:
        st.session_state["label_msg"] = ("error", "Enter your name first: a restore is a new version signed by you.")
        return
    try:
        v = data.restore_label(run, d, feature, version, name)
    except UserError as e:
        st.session_state["label_msg"] = ("error", f"Not restored: {e}")
        return
    st.session_state[text_key] = text  # the edit box shows the restored text
    st.session_state["label_msg"] = ("success", f"Restored version {version} as version {v}.")


def current_label(run: str, d: str, feature: int, dash: dict) -> tuple[str, str, pd.DataFrame]:
    """(text, one-line provenance, history) of the feature's label: labels.duckdb first, else features.parquet."""
    hist = data.label_history(run, d, feature)
    if len(hist):
        return str(hist.iloc[0]["text"]), _meta(hist.iloc[0]), hist
    text = str(dash.get("label") or "")
    src = str(dash.get("label_source") or "")
    return text, (f"from the analysis ({src})" if src else "from the analysis") if text else "", hist


def render(run: str, d: str, feature: int, dash: dict, read_only: bool = False) -> None:
    """Current label line plus an expander with the editor and the history (the line alone when `read_only`:
    demo mode)."""
    text, meta, hist = current_label(run, d, feature, dash)
    if text:
        st.html(label_html(text, meta))
    else:
        st.caption("No label yet." + (" (The last version is empty.)" if len(hist) else ""))
    if read_only:
        return
    msg = st.session_state.pop("label_msg", None)
    if msg:
        (st.success if msg[0] == "success" else st.error)(msg[1])
    # drawn only while open (it reruns on opening): its ~40 elements were most of what a feature page sent first
    editor = st.expander(f"Edit label · history ({len(hist)} version{'s' if len(hist) != 1 else ''})",
                         key=editor_key(feature), on_change="rerun")
    if not editor.open:
        return
    with editor:
        ask_author(key="author_box")
        text_key, notes_key = f"label_text_{feature}", f"label_notes_{feature}"
        notes = str(hist.iloc[0]["notes"]) if len(hist) else ""
        # defaults through session state (not `value=`), so a save or restore can refill the boxes
        st.session_state.setdefault(text_key, text)
        st.session_state.setdefault(notes_key, "" if notes.startswith("restored v") else notes)
        with st.form(f"label_form_{feature}", border=False):
            st.text_input("Label", key=text_key, max_chars=data.MAX_LABEL_CHARS,
                          placeholder="what this feature detects, e.g. 'closing parenthesis in Python calls'")
            st.text_area("Notes", key=notes_key, height=68, placeholder="evidence, doubts, counter-examples (free text)")
            st.form_submit_button("Save label", icon=":material/save:", type="primary",
                                  on_click=_save, args=(run, d, feature, text_key, notes_key))
        _history(run, d, feature, hist, text_key)
        _proposals(run, d, feature)


def _history(run: str, d: str, feature: int, hist: pd.DataFrame, text_key: str) -> None:
    if hist.empty:
        return
    st.markdown("**History** (newest first; restore appends a copy, nothing is lost)")
    widths = [0.6, 1.4, 1.7, 1.5, 0.7, 4.5, 1.1]
    head = st.columns(widths)
    for c, name in zip(head, ["ver.", "who", "when (UTC)", "source", "score", "text", ""]):
        c.caption(name)
    latest = int(hist.iloc[0]["version"])
    for _, row in hist.head(HISTORY_ROWS).iterrows():
        v = int(row["version"])
        c = st.columns(widths, vertical_alignment="center")
        c[0].text(f"v{v}")
        c[1].text(str(row["author"]))
        c[2].text(f"{pd.Timestamp(row['created_at']):%Y-%m-%d %H:%M:%S}")
        c[3].text(str(row["source"]))
        c[4].text(f"{float(row['score']):.2f}" if pd.notna(row["score"]) else "")
        c[5].text(str(row["text"]) + (f"\n({row['notes']})" if row["notes"] else ""))
        c[6].button("restore", key=f"restore_{feature}_{v}", disabled=v == latest, on_click=_restore,
                    args=(run, d, feature, v, str(row["text"]), text_key),
                    help="current version" if v == latest else f"append a copy of v{v} as the new current label")
    if len(hist) > HISTORY_ROWS:
        st.caption(f"{len(hist) - HISTORY_ROWS} older versions not listed (`python -m backend labels export` has all).")


def _proposals(run: str, d: str, feature: int) -> None:
    props = data.validation(run, d)["proposals"]
    props = props[props["feature"] == feature]
    if props.empty:
        return
    st.markdown("**Proposed by annotators** (from the Validate page; save one above to adopt it)")
    st.dataframe(props[["text", "annotator", "label_version", "created_at"]], hide_index=True, width="stretch")
