"""The Overview's live view of a background build (the demo store that `./run.sh` builds while the app runs).

A fragment re-run every POLL_S seconds reads `<out>.build/status.json` (a small file: the only work it does),
shows the stage, the progress with the time left, and each dictionary's state; when a dictionary becomes
browsable (or the run folder appears) it reruns the whole app, so the sidebar and the pages pick it up.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from explorer import components, data

POLL_S = 2.0
RECENT_S = 3600.0  # a finished build is mentioned for an hour, then the Overview is the run's alone
STEP_WORDS = {"corpus": "assembling the default corpus", "load": "loading the model", "cache": "caching activations",
              "train": "training", "metrics": "measuring", "analyze": "analysing", "explain": "explaining features",
              "index": "indexing labels for search", "score": "scoring labels", "compare": "comparing dictionaries"}


def minutes(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def dictionary_table(status: dict) -> pd.DataFrame:
    """One row per dictionary of the build: its state (browsable with labels, browsable, building, waiting) and
    the step it is at."""
    rows, by_dict = [], {}
    for s in status.get("steps") or []:
        if s.get("dictionary"):
            by_dict.setdefault(s["dictionary"], []).append(s)
    ready, labelled = set(status.get("ready") or []), set(status.get("labelled") or [])
    for name, steps in by_dict.items():
        running = next((s for s in steps if s["state"] == "running"), None)
        if name in labelled:
            state = "browsable, labelled"
        elif name in ready:
            state = "browsable"
        elif running is not None or any(s["state"] in ("done", "skipped") for s in steps):
            state = "building"
        else:
            state = "waiting"
        done = sum(s["state"] in ("done", "skipped") for s in steps)
        rows.append({"dictionary": name, "state": state, "step": STEP_WORDS.get(running["name"], running["name"])
                     if running else "", "steps done": f"{done} of {len(steps)}"})
    return pd.DataFrame(rows, columns=["dictionary", "state", "step", "steps done"])


def headline(status: dict) -> str:
    name = status.get("step_name")
    what = STEP_WORDS.get(name, name or "starting")
    if status.get("dictionary"):
        what += f" **{components.md_text(status['dictionary'])}**"
    return what


def _render(status: dict) -> None:
    state = status.get("state")
    out = Path(str(status.get("out", "")))
    log = status.get("log")
    if state == "running":
        st.markdown(f"#### Building the demo store `{out.name}` in the background")
        eta = status.get("eta_seconds")
        step_pct = status.get("step_progress")
        st.progress(float(status.get("progress") or 0.0),
                    text=f"{float(status.get('progress') or 0):.0%} done · about {minutes(eta)} left · now: {headline(status)}"
                         + (f" ({step_pct:.0%})" if step_pct is not None else ""))
    elif state == "done":
        took = float(status.get("updated", 0)) - float(status.get("started", 0))
        st.success(f"The demo store `{out.name}` is complete (this build took {minutes(took)}).", icon=":material/check_circle:")
    else:
        why = "its process is gone (killed?)" if state == "stopped" else f"it failed: {status.get('error')}"
        st.warning(f"The build of `{out.name}` stopped: {why}. Run `./run.sh` again to resume it where it stopped."
                   + (f" Log: `{log}`" if log else ""), icon=":material/warning:")
    table = dictionary_table(status)
    if len(table) and state != "done":
        st.dataframe(table, hide_index=True, width="stretch")
    if log and state == "running":
        st.caption(f"log: `{log}` · each dictionary can be browsed (sidebar) as soon as it is analysed; labels follow")


def _live(out: str, seen: tuple) -> None:
    status = next((s for s in data.build_statuses() if s.get("out") == out), None)
    if status is None:
        return
    now_seen = (tuple(status.get("ready") or []), tuple(status.get("labelled") or []), data.is_run(out), status.get("state"))
    if now_seen != seen:
        st.rerun()  # a dictionary became browsable, the run appeared or the build ended: redraw the whole app
    _render(status)


def render() -> dict | None:
    """The live panel of the newest build under the data root (nothing when none is running or recent);
    returns that build's status."""
    statuses = data.build_statuses()
    if not statuses:
        return None
    status = statuses[0]
    if status.get("state") == "done" and time.time() - float(status.get("updated") or 0) > RECENT_S:
        return None
    out = str(status.get("out"))
    seen = (tuple(status.get("ready") or []), tuple(status.get("labelled") or []), data.is_run(out), status.get("state"))
    running = status.get("state") == "running"
    st.fragment(_live, run_every=POLL_S if running else None)(out, seen)
    return status


def _watch(had_runs: bool) -> None:
    if data.build_statuses() or (not data.list_runs(str(data.data_root())).empty) != had_runs:
        st.rerun()


def watch() -> None:
    """On a page with nothing to show yet: redraw the app when a build starts or a run appears (`./run.sh`
    starts the build beside the app, so the first page load may come before the build's first status)."""
    st.fragment(_watch, run_every=POLL_S * 1.5)(not data.list_runs(str(data.data_root())).empty)
