"""The explorer's frame: page config, the shared sidebar (run + dictionary), URL sync, navigation.

    streamlit run explorer/app.py            # or ./run.sh

The run, dictionary and feature live in `st.session_state` and in the URL query params, so
`/feature?run=<run>&dict=<name>&feature=N` (or the bare `/?run=..&dict=..&feature=N`) opens exactly
one feature page. Pages in `app_pages/` only render; everything they read goes through
`explorer.data` (cached calls into `backend.store.query`).

Demo mode (`./run.sh --demo`, or `?demo=1` in the URL): for a domain expert watching, not driving. The Tour
opens first, contexts are large, and nothing can be edited: no label editor, no tour editing, no
Validate page.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from explorer import components, html_charts, state  # importable from anywhere: scripts/setup.sh installs the repo editable

st.set_page_config(page_title="Feature explorer", page_icon=":material/manage_search:", layout="wide")

HERE = Path(__file__).resolve().parent
DEMO_CSS = ".fx-contexts{font-size:18px}.fx-ctx{line-height:2.1;padding:5px 0}.fx-label{font-size:20px !important}"
demo = state.init_demo_mode()
state.freeze_startup_objects()  # once per process: full collections stop walking the imported libraries
PAGES = {
    "tour": st.Page(HERE / "app_pages" / "tour.py", title="Tour", icon=":material/tour:", url_path="tour", default=demo),
    "overview": st.Page(HERE / "app_pages" / "overview.py", title="Overview", icon=":material/dashboard:",
                        default=not demo, url_path="overview" if demo else None),
    "features": st.Page(HERE / "app_pages" / "features.py", title="Features", icon=":material/table_rows:", url_path="features"),
    "feature": st.Page(HERE / "app_pages" / "feature.py", title="Feature", icon=":material/biotech:", url_path="feature"),
    "inspect": st.Page(HERE / "app_pages" / "inspect.py", title="Prompt inspector", icon=":material/keyboard:", url_path="inspect"),
    "validate": st.Page(HERE / "app_pages" / "validate.py", title="Validate labels", icon=":material/fact_check:", url_path="validate"),
    "compare": st.Page(HERE / "app_pages" / "compare.py", title="Compare", icon=":material/compare_arrows:", url_path="compare"),
    "faithfulness": st.Page(HERE / "app_pages" / "faithfulness.py", title="Faithfulness", icon=":material/rule:",
                            url_path="faithfulness"),
    "diagnose": st.Page(HERE / "app_pages" / "diagnose.py", title="Diagnose", icon=":material/troubleshoot:", url_path="diagnose"),
}

if demo:
    PAGES.pop("validate")  # judging labels is editing
    PAGES = {"tour": PAGES.pop("tour"), **PAGES}  # the tour first
else:
    PAGES["tour"] = PAGES.pop("tour")  # last: a researcher builds it from feature pages

page = st.navigation(list(PAGES.values()))
state.follow_open_request()  # a row clicked in a feature table: straight to its page
# The bare deep link `/?run=..&dict=..&feature=N` lands on the default page: send it to the feature page.
if page.url_path == "" and "feature" in st.query_params:
    st.switch_page(PAGES["feature"], query_params=st.query_params.to_dict())

# less empty space above the page title, so a feature page fits one screen
st.html("<style>[data-testid='stMainBlockContainer']{padding-top:2.2rem}" + components.CSS + html_charts.CSS + (DEMO_CSS if demo else "")
        + "</style>")
state.sidebar()
try:
    page.run()
except Exception as e:  # noqa: BLE001 - the UI shows backend failures as a message, never a traceback
    state.show_error(e)
