"""Selection state shared by every page: run, dictionary and feature, kept in `st.session_state`
and mirrored in the URL query params (`?run=..&dict=..&feature=N`), so any view can be linked.

The URL wins on load (a deep link opens what it names); the sidebar widgets write through
`on_change` callbacks, which run before the script, so the frame always sees one consistent choice.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
from pathlib import Path

import pandas as pd
import streamlit as st

from backend.common.errors import UserError
from explorer import components, data

log = logging.getLogger("explorer")

RUN, DICT, FEATURE = "run", "dict", "feature"  # session-state keys and query-param names
DEMO = "demo"  # query param (?demo=1) and session key of demo mode: read-only, the tour first
ENV_DEMO = "FEATURE_EXPLORER_DEMO_MODE"  # `./run.sh --demo` sets it: every session of that server is in demo mode
_W_RUN, _W_DICT = "_w_run", "_w_dict"  # widget keys
FEATURE_PAGE = "app_pages/feature.py"  # for st.page_link / st.switch_page (relative to app.py)

HOW_TO_MAKE_A_RUN = """\
A **run** is a folder with cached activations of a model at one hook point; a **dictionary** is a sparse
autoencoder (or another sparse coder) trained on it and analysed for this app.

* `./run.sh` serves this app at once and builds the default demo store in the background (SmolLM2-135M, ~200k
  tokens; the Overview shows its progress, and each dictionary can be browsed as soon as it is analysed).
* Or step by step:
  ```
  python -m backend cache --out data/runs/my-run             # model + hook + corpus -> activations
  python -m backend train --run data/runs/my-run --kind relu-l1
  python -m backend analyze --run data/runs/my-run --dict relu-l1
  ```
"""


def init_demo_mode() -> bool:
    """Whether this session is in demo mode: the server's env var, else `?demo=1` in the URL (kept for the session,
    since page switches drop query params; `?demo=0` leaves it unless the server forces it)."""
    if os.environ.get(ENV_DEMO, "").strip().lower() in ("1", "true", "yes"):
        st.session_state[DEMO] = True
    elif DEMO in st.query_params:
        st.session_state[DEMO] = st.query_params.get(DEMO, "").strip().lower() in ("1", "true", "yes", "")
    return is_demo()


_frozen = False


def freeze_startup_objects() -> None:
    """Move what the server holds after its imports (Streamlit, pandas, pyarrow, DuckDB, Plotly, torch: millions
    of objects) out of the garbage collector's reach, once per process. Otherwise a full collection walks them
    all, 80-105 ms holding the GIL, a few times per ten clicks, each time in the middle of someone's click (issue
    16). Reference counting still frees them; only cycles among them would stay, and they live as long as the
    process anyway."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.freeze()
        atexit.register(gc.unfreeze)  # at exit, everything collectable again (native bindings check for leaks)


def is_demo() -> bool:
    """Demo mode: read-only (no label editing, no tour editing, no validation), large contexts, the tour first."""
    return bool(st.session_state.get(DEMO))


def show_error(e: BaseException) -> None:
    """A backend failure as one readable message (the traceback goes to the server log only)."""
    if isinstance(e, UserError):
        st.error(str(e), icon=":material/warning:")
    else:
        log.exception("explorer page failed")
        st.error(f"The backend failed: {type(e).__name__}: {e}", icon=":material/error:")


def run_name(runs: pd.DataFrame, path: str) -> str:
    hit = runs.loc[runs["path"].astype(str) == str(path), "run"]
    return str(hit.iloc[0]) if len(hit) else str(path)


def resolve_run(runs: pd.DataFrame, wanted: str | None) -> str | None:
    """Path of the run a URL names: a run name from the data root, its path, or any run folder path."""
    if not wanted:
        return None
    for col in ("run", "path"):
        hit = runs.loc[runs[col].astype(str) == wanted, "path"]
        if len(hit):
            return str(hit.iloc[0])
    p = Path(wanted).expanduser()
    if data.is_run(p):
        return str(p.resolve())
    return None


def _on_run_change() -> None:
    st.session_state[RUN] = st.session_state[_W_RUN]
    st.session_state[DICT] = None
    st.session_state[FEATURE] = None
    for k in (RUN, DICT, FEATURE):
        st.query_params.pop(k, None)


def _on_dict_change() -> None:
    st.session_state[DICT] = st.session_state[_W_DICT]
    st.session_state[FEATURE] = None
    for k in (DICT, FEATURE):
        st.query_params.pop(k, None)


def _set_param(key: str, value: str) -> None:
    if st.query_params.get(key) != value:
        st.query_params[key] = value


def sidebar() -> None:
    """Run and dictionary pickers; fills st.session_state[run|dict|run_label] (None when nothing exists)."""
    for k in (RUN, DICT, FEATURE, "run_label"):
        st.session_state.setdefault(k, None)
    root = data.data_root()
    path = _run_picker(_runs_under(root), root)
    if path is not None and _dictionary_picker(path):
        _run_caption(path)


def _runs_under(root: Path) -> pd.DataFrame:
    try:
        return data.list_runs(str(root))
    except Exception as e:  # noqa: BLE001
        st.sidebar.error(f"Cannot list runs in {root}: {e}")
        return pd.DataFrame(columns=["run", "path"])


def _chosen_run(runs: pd.DataFrame, root: Path) -> tuple[str | None, list[str]]:
    """(the run to show: the URL's, else this session's, else the first; the picker's options)."""
    wanted = st.query_params.get(RUN)
    path = resolve_run(runs, wanted)
    if wanted and path is None:
        st.sidebar.warning(f"Run {wanted!r} from the link was not found under {root}.")
    options = [str(p) for p in runs["path"]]
    if path is None and st.session_state[RUN] in options:
        path = st.session_state[RUN]
    if path is None and options:
        path = options[0]
    if path is not None and path not in options:
        options.append(path)  # a run folder outside the data root, named by path in the URL
    return path, options


def _run_picker(runs: pd.DataFrame, root: Path) -> str | None:
    """The run selectbox; the chosen run's path (also in session state and the URL), None when there is none."""
    path, options = _chosen_run(runs, root)
    if path is None:
        st.session_state[RUN] = st.session_state[DICT] = None
        st.sidebar.info(f"No runs under `{root}` yet.")
        return None
    if path != st.session_state[RUN]:
        st.session_state[FEATURE] = None
    st.session_state[RUN] = path
    st.session_state[_W_RUN] = path
    st.sidebar.selectbox("Run", options, key=_W_RUN, format_func=lambda p: run_name(runs, p), on_change=_on_run_change,
                         help=f"Runs found under {root} (set FEATURE_EXPLORER_DATA to browse another folder)")
    name = run_name(runs, path)
    st.session_state["run_label"] = name
    _set_param(RUN, name)
    return path


def _chosen_dictionary(dicts: pd.DataFrame, path: str | None = None) -> str | None:
    """The URL's dictionary, else this session's, else the first analysed one in the order the run's build made
    them (the demo builds the best one for browsing first), else the first analysed one (else the first)."""
    names = [str(n) for n in dicts["name"]]
    wanted = st.query_params.get(DICT)
    if wanted and wanted not in names:
        st.sidebar.warning(f"Dictionary {wanted!r} from the link is not in run {st.session_state['run_label']}.")
        wanted = None
    choice = wanted or (st.session_state[DICT] if st.session_state[DICT] in names else None)
    if choice is None and names:
        analysed = [n for n, a in zip(dicts["name"], dicts["analysed"]) if a]
        first = [n for n in (data.build_order(path) if path else []) if n in analysed]
        choice = (first or analysed or names)[0]
    return choice


def _dictionary_picker(path: str) -> bool:
    """The dictionary selectbox of the run at `path`; False when the run has no dictionary."""
    try:
        dicts = data.list_dictionaries(path)
    except Exception as e:  # noqa: BLE001
        st.sidebar.error(f"Cannot list dictionaries: {e}")
        dicts = pd.DataFrame(columns=["name", "analysed"])
    choice = _chosen_dictionary(dicts, path)
    if choice != st.session_state[DICT]:
        st.session_state[FEATURE] = None
    st.session_state[DICT] = choice
    if choice is None:
        st.sidebar.info("This run has no dictionary yet.")
        st.query_params.pop(DICT, None)
        return False
    st.session_state[_W_DICT] = choice
    analysed = dict(zip(dicts["name"].astype(str), dicts["analysed"].astype(bool)))
    st.sidebar.selectbox("Dictionary", [str(n) for n in dicts["name"]], key=_W_DICT, on_change=_on_dict_change,
                         format_func=lambda n: n if analysed[n] else f"{n} (not analysed)")
    _set_param(DICT, choice)
    return True


def _run_caption(path: str) -> None:
    try:
        info = data.run_info(path)
        st.sidebar.caption(f"{components.model_label(info.get('model'))} · `{info.get('hook', '?')}` · "
                           f"{int(info.get('n_tokens', 0)):,} tokens")
    except Exception:  # noqa: BLE001 - the overview page reports a broken run.json properly
        pass


def require_run() -> str:
    """The chosen run's path, or an explained empty state and stop."""
    if not st.session_state.get(RUN):
        st.info(f"No runs in `{data.data_root()}` yet.", icon=":material/inbox:")
        st.markdown(HOW_TO_MAKE_A_RUN)
        st.stop()
    return st.session_state[RUN]


def require_dict(analysed: bool = True) -> tuple[str, str]:
    """(run path, dictionary name) of an analysed dictionary, or an explained empty state and stop."""
    run = require_run()
    d = st.session_state.get(DICT)
    label = st.session_state.get("run_label") or run
    if not d:
        st.info(f"Run **{label}** has no dictionary yet. Train and analyse one:", icon=":material/inbox:")
        st.code(f"python -m backend train --run {run} --kind relu-l1\npython -m backend analyze --run {run} --dict relu-l1",
                language="bash")
        st.stop()
    if analysed:
        dicts = data.list_dictionaries(run)
        row = dicts[dicts["name"] == d]
        if len(row) and not bool(row["analysed"].iloc[0]):
            st.info(f"Dictionary **{d}** is trained but not analysed yet, so it has no features to show. Run:", icon=":material/inbox:")
            st.code(f"python -m backend analyze --run {run} --dict {d}", language="bash")
            st.stop()
    return run, d


def feature_link_params(feature: int) -> dict:
    return {RUN: st.session_state.get("run_label") or st.session_state[RUN], DICT: st.session_state[DICT], FEATURE: str(int(feature))}


def open_feature(feature: int) -> None:
    """Switch to the feature page of `feature` (stops this run)."""
    st.session_state[FEATURE] = int(feature)
    st.switch_page(FEATURE_PAGE, query_params=feature_link_params(feature))


OPEN = "_open_feature"  # set by a table's selection callback; the frame switches pages before rendering anything


def open_selected(table_key: str, ids_key: str) -> None:
    """`on_select` callback of a feature table: remember the clicked row's feature for the frame.

    Switching in the frame, before the sidebar and the page, skips re-rendering the table page
    once more just to leave it (a click then costs one script run, not two).
    """
    rows = st.session_state[table_key]["selection"]["rows"]
    ids = st.session_state.get(ids_key) or []
    if rows and rows[0] < len(ids):
        st.session_state[OPEN] = int(ids[rows[0]])


def follow_open_request() -> None:
    """Called by the frame first: go to the feature page a table click asked for."""
    f = st.session_state.pop(OPEN, None)
    if f is not None and st.session_state.get(RUN) and st.session_state.get(DICT):
        open_feature(f)
