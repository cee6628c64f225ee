"""The explorer's only door into the backend: cached reads, plain writes.

Pages, the frame and the label editor call the backend through this module alone (they import
`backend.common.errors.UserError` and nothing else from it). Reads go through `backend.store.query`
(the query layer) and the label store wrapped in `st.cache_data(max_entries=...)`; the subject model
and dictionary weights through `st.cache_resource` (shared by every session, never mutated). Each
cached read takes a `stamp` (the mtime of the file it depends on) so a store rebuilt while the server
runs is re-read instead of served stale. Writes (label saves, restores, verdicts) are plain calls: the
next read sees them through the label file's stamp.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from backend.common.layout import (
    CFG_JSON,
    DATA_DIR,
    DICTS_DIR,
    EFFECTS,
    FEATURES,
    LABELS_DB,
    METRICS,
    RUN_JSON,
    SYNTH_DIR,
    dict_dir,
    dictionary_names,
)
from backend.common.threads import burst_threads
from backend.store import label_store
from backend.store import query as store

ENV_DATA = "FEATURE_EXPLORER_DATA"
MAX_LABEL_CHARS = label_store.MAX_TEXT  # the label editor's input limit: what LabelStore.save accepts


def data_root() -> Path:
    """Where runs live: $FEATURE_EXPLORER_DATA, else the repository's data/ folder."""
    return Path(os.environ.get(ENV_DATA) or DATA_DIR).expanduser()


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def is_run(path: str | Path) -> bool:
    """Whether `path` is a run folder (it holds a run.json)."""
    return (Path(path) / RUN_JSON).is_file()


def run_stamp(run: str) -> int:
    return _mtime(Path(run) / RUN_JSON)


def dict_stamp(run: str, dict_name: str) -> int:
    d = dict_dir(run, dict_name)
    return max(_mtime(d / FEATURES), _mtime(d / METRICS), _mtime(d / CFG_JSON))


def labels_stamp(run: str) -> tuple:
    """Version of the run's labels.duckdb (a save changes the file or its write-ahead log)."""
    p = Path(run) / LABELS_DB
    return _mtime(p), _mtime(p.with_name(p.name + ".wal")), (p.stat().st_size if p.is_file() else 0)


# ------------------------------------------------------------------ queries (st.cache_data)


def _tree_stamp(folder: Path) -> tuple:
    """mtimes of `folder` and its sub-folders: a run renamed into place, or a dictionary written, changes one."""
    try:
        return (_mtime(folder),) + tuple(_mtime(p) for p in sorted(folder.iterdir()) if p.is_dir())
    except OSError:
        return (0,)


@st.cache_data(ttl=60, max_entries=4, show_spinner=False)
def _list_runs(root: str, stamp: tuple) -> pd.DataFrame:
    return store.list_runs(root)


def list_runs(root: str) -> pd.DataFrame:
    """The runs under `root`, re-listed as soon as a run appears (the demo's cache renamed into place)."""
    return _list_runs(root, _tree_stamp(Path(root)))


@st.cache_data(max_entries=32, show_spinner=False)
def _run_info(run: str, stamp: int) -> dict:
    return store.run_info(run)


def run_info(run: str) -> dict:
    return _run_info(run, run_stamp(run))


@st.cache_data(ttl=60, max_entries=32, show_spinner=False)
def _list_dictionaries(run: str, stamp: tuple) -> pd.DataFrame:
    return store.list_dictionaries(run)


def list_dictionaries(run: str) -> pd.DataFrame:
    """The run's dictionaries with their metrics and `analysed`, re-read the moment one is trained, measured or
    analysed (a background build makes each browsable as soon as its analysis is written)."""
    folder = Path(run) / DICTS_DIR  # its mtime changes when a dictionary is published; `<name>.partial/` is not one
    return _list_dictionaries(run, (_mtime(folder), tuple((n, dict_stamp(run, n)) for n in dictionary_names(run))))


def build_order(run: str) -> list[str]:
    """The dictionaries a build of `run` made browsable, in the order it made them ([] when no build wrote it)."""
    from backend.common.build_status import read_status

    status = read_status(run)
    return [str(n) for n in (status or {}).get("ready") or []]


def build_statuses() -> list[dict]:
    """Status of every build under the data root (backend.common.build_status), newest first: small JSON files
    read on every call (the Overview polls them), never cached."""
    from backend.common.build_status import find_builds, read_status

    return [st for st in (read_status(out) for out in find_builds(data_root())) if st]


@st.cache_data(max_entries=32, show_spinner=False)
def _dictionary_metrics(run: str, dict_name: str, stamp: int) -> dict:
    return store.dictionary_metrics(run, dict_name)


def dictionary_metrics(run: str, dict_name: str) -> dict:
    return _dictionary_metrics(run, dict_name, dict_stamp(run, dict_name))


@st.cache_data(max_entries=16, show_spinner=False)
def _densities(run: str, dict_name: str, stamp: int) -> np.ndarray:
    return np.asarray(store.feature_densities(run, dict_name))


def feature_densities(run: str, dict_name: str) -> np.ndarray:
    return _densities(run, dict_name, dict_stamp(run, dict_name))


@st.cache_data(max_entries=256, show_spinner=False)
def _list_features(run: str, dict_name: str, stamp: tuple, filters: tuple, sort: str, descending: bool,
                   limit: int, offset: int) -> tuple[pd.DataFrame, int]:
    kw = dict(filters)
    df = store.list_features(run, dict_name, sort=sort, descending=descending, limit=limit, offset=offset, **kw)
    n = store.count_features(run, dict_name, **kw)
    return df, int(n)


def list_features(run: str, dict_name: str, *, sort: str = "feature", descending: bool = False, limit: int = 50,
                  offset: int = 0, **filters) -> tuple[pd.DataFrame, int]:
    """(one page of features, number of features matching the filters)."""
    key = tuple(sorted((k, v) for k, v in filters.items() if v is not None))
    stamp = (dict_stamp(run, dict_name), labels_stamp(run),  # labels come from labels.duckdb
             _mtime(dict_dir(run, dict_name) / EFFECTS))  # ablation effects, when computed
    return _list_features(run, dict_name, stamp, key, sort, descending, limit, offset)


@st.cache_data(max_entries=512, show_spinner=False)
def _dashboard(run: str, dict_name: str, stamp: int, feature: int) -> dict:
    return store.feature_dashboard(run, dict_name, feature)


def feature_dashboard(run: str, dict_name: str, feature: int) -> dict:
    return _dashboard(run, dict_name, dict_stamp(run, dict_name), int(feature))


@st.cache_data(max_entries=16, show_spinner=False)
def _labels(run: str, dict_name: str, stamp: tuple) -> dict[int, str]:
    """feature -> label of every labelled feature (for the prompt inspector's tables)."""
    df = store.list_features(run, dict_name, labelled=True, limit=10**9, offset=0)
    return {int(f): str(lab) for f, lab in zip(df["feature"], df["label"]) if lab}


def labels(run: str, dict_name: str) -> dict[int, str]:
    return _labels(run, dict_name, (dict_stamp(run, dict_name), labels_stamp(run)))


# ------------------------------------------------------------------ labels and validation (labels.duckdb)


@st.cache_data(max_entries=16, show_spinner=False)
def _current_labels(run: str, dict_name: str, stamp: tuple) -> pd.DataFrame:
    return store.current_labels(run, dict_name)


def current_labels(run: str, dict_name: str) -> pd.DataFrame:
    """DataFrame[feature, label, label_source, label_version] of the features labelled in labels.duckdb."""
    return _current_labels(run, dict_name, labels_stamp(run))


def _rows_of(feats: np.ndarray, df: pd.DataFrame, feature: int) -> pd.DataFrame:
    """One feature's rows of a table held sorted by feature (`feats` its feature column), re-indexed from 0."""
    lo, hi = np.searchsorted(feats, [int(feature), int(feature) + 1])
    return df.iloc[lo:hi].reset_index(drop=True)


@st.cache_resource(max_entries=8, show_spinner=False)
def _label_versions(run: str, dict_name: str, stamp: tuple) -> tuple[np.ndarray, pd.DataFrame]:
    """(feature of each row, every label version of the dictionary by feature, newest first): shared, never mutated.

    One read of labels.duckdb per change of the file: opening it costs ~40 ms, which a feature page paid for each
    new feature when it read one feature's history."""
    df = label_store.LabelStore(run).all_versions(dict_name).drop(columns="dict_name")
    df = df.sort_values(["feature", "version"], ascending=[True, False], kind="stable").reset_index(drop=True)
    return df["feature"].to_numpy(), df


def label_history(run: str, dict_name: str, feature: int) -> pd.DataFrame:
    """Every version of a feature's label, newest first (re-read whenever labels.duckdb changes)."""
    return _rows_of(*_label_versions(run, dict_name, labels_stamp(run)), feature).copy()


@st.cache_data(max_entries=64, show_spinner=False)
def _heldout(run: str, dict_name: str, feature: int, n: int, seed: int, stamp: int) -> list[dict]:
    from backend.labels.heldout import heldout_contexts

    return heldout_contexts(run, dict_name, feature, n=n, seed=seed)


def heldout_contexts(run: str, dict_name: str, feature: int, n: int = 10, seed: int = 0) -> list[dict]:
    """Contexts the label was not written from: n activating + n silent (each with `activating`)."""
    return _heldout(run, dict_name, int(feature), int(n), int(seed), dict_stamp(run, dict_name))


@st.cache_data(max_entries=16, show_spinner=False)
def _validation(run: str, dict_name: str, stamp: tuple) -> dict:
    ls = label_store.LabelStore(run)
    return {"status": ls.validation_status(dict_name), "human": ls.human_scores(dict_name),
            "verdicts": ls.verdicts(dict_name), "progress": ls.progress(dict_name), "proposals": ls.proposals(dict_name)}


def validation(run: str, dict_name: str) -> dict:
    """Validation state of a dictionary: status per feature, human scores, latest verdicts, progress counts."""
    return _validation(run, dict_name, labels_stamp(run))


def label_scores(run: str, dict_name: str) -> dict:
    """label_scores.json of a dictionary (`python -m backend score`): {"scorers": {name: summary}} or {}."""
    from backend.labels.score import SUMMARY_FILE

    return _label_scores(run, dict_name, _mtime(dict_dir(run, dict_name) / SUMMARY_FILE))


@st.cache_data(max_entries=32, show_spinner=False)
def _label_scores(run: str, dict_name: str, stamp: int) -> dict:
    from backend.labels.score import load_summary

    return load_summary(run, dict_name)


@st.cache_resource(max_entries=1, show_spinner="Loading the embedding model (a few seconds, once per server start)...")
def embedder():
    from backend.labels.embeddings import load_embedder

    return load_embedder("cpu")


@st.cache_data(max_entries=8, show_spinner="Embedding the labels...")
def _label_index(run: str, dict_name: str, stamp: tuple):
    from backend.labels.embeddings import label_embeddings

    return label_embeddings(run, dict_name, model=embedder())


@st.cache_data(max_entries=64, show_spinner=False)
def _search_labels(run: str, dict_name: str, stamp: tuple, query: str, k: int) -> pd.DataFrame:
    from backend.labels import embeddings

    return embeddings.search_labels(run, dict_name, query, k=k, model=embedder(), index=_label_index(run, dict_name, stamp))


def search_labels(run: str, dict_name: str, query: str, k: int = 10) -> pd.DataFrame:
    """The k labels nearest in meaning to `query` (all-MiniLM-L6-v2), re-embedded when labels change."""
    return _search_labels(run, dict_name, (dict_stamp(run, dict_name), labels_stamp(run)), str(query), int(k))


def random_feature(run: str, dict_name: str) -> int:
    return int(store.random_feature(run, dict_name, alive=True))


# ------------------------------------------------------------------ model + dictionary (st.cache_resource)


@st.cache_resource(max_entries=2, show_spinner="Loading the model (about 25 s on a CPU, once per server start)...")
def load_model(name: str):
    import torch

    from backend.model import loading

    # One prompt is a small forward pass: with every core busy (the browser, the server, another job)
    # torch's intra-op threads spin against each other, and a 100-token prompt took 1-2 s instead of
    # 0.2 s on 2 cores. Half the cores (at most 4) leave room for the rest of the machine; the long
    # computations a user waits for (Effects, steering, attribution) borrow the idle ones (burst_threads).
    torch.set_num_threads(max(1, min(4, (os.cpu_count() or 2) // 2)))
    return loading.load_model(name)


@st.cache_resource(max_entries=4, show_spinner="Loading the dictionary...")
def _load_dictionary(folder: str, stamp: int):
    from backend.dictionaries import load_dictionary

    return load_dictionary(folder)


def load_dictionary(run: str, dict_name: str):
    return _load_dictionary(str(dict_dir(run, dict_name)), dict_stamp(run, dict_name))


@st.cache_data(max_entries=64, show_spinner=False)
def _inspect(run: str, dict_name: str, stamp: int, text: str, top_k: int):
    from backend.analysis.prompt_inspect import inspect_prompt

    info = run_info(run)
    lm = load_model(info["model"])
    dictionary = load_dictionary(run, dict_name)
    return inspect_prompt(lm, dictionary, info["hook"], text, top_k=top_k)


def inspect(run: str, dict_name: str, text: str, top_k: int = 5):
    return _inspect(run, dict_name, dict_stamp(run, dict_name), text, top_k)


# ------------------------------------------------------------------ comparison of dictionaries


@st.cache_data(max_entries=8, show_spinner=False)
def _compare_summary(run: str, stamp: int) -> dict | None:
    from backend.common.atomic import read_json
    from backend.evaluation.compare import SUMMARY, comparisons_dir

    p = comparisons_dir(run) / SUMMARY
    return read_json(p) if p.is_file() else None


def compare_summary(run: str) -> dict | None:
    """The last `python -m backend compare` result of the run (measured encode times), or None."""
    from backend.evaluation.compare import SUMMARY, comparisons_dir

    return _compare_summary(run, _mtime(comparisons_dir(run) / SUMMARY))


@st.cache_data(max_entries=16, show_spinner="Matching features (Hungarian on decoder cosines)...")
def _matches(run: str, a: str, b: str, stamp: tuple) -> pd.DataFrame:
    from backend.evaluation.compare import matches_for

    return matches_for(run, a, b)


def matches(run: str, a: str, b: str) -> pd.DataFrame:
    """One-to-one feature matching of dictionaries a and b: [feature_a, feature_b, cos], best first."""
    from backend.evaluation.compare import pair_path

    stamp = (dict_stamp(run, a), dict_stamp(run, b), _mtime(pair_path(run, a, b)), _mtime(pair_path(run, b, a)))
    return _matches(run, a, b, stamp)


@st.cache_data(max_entries=32, show_spinner=False)
def _flops(run: str, dict_name: str, stamp: int) -> dict:
    return dict(load_dictionary(run, dict_name).flops_per_token())


def flops_per_token(run: str, dict_name: str) -> dict:
    """{"encode": ..., "decode": ...} analytic FLOPs per token of a dictionary."""
    return _flops(run, dict_name, dict_stamp(run, dict_name))


@st.cache_data(max_entries=4, show_spinner=False)
def _synth_results(path: str, stamp: int) -> pd.DataFrame | None:
    return pd.read_parquet(path) if Path(path).is_file() else None


def synth_results() -> pd.DataFrame | None:
    """The synthetic amortisation-gap benchmark results (`python -m backend synth`), or None."""
    p = _synth_results_path()
    return _synth_results(str(p), _mtime(p))


def _synth_results_path() -> Path:
    from backend.synth.outputs import RESULTS_FILE

    return data_root() / SYNTH_DIR.name / RESULTS_FILE


@st.cache_data(max_entries=2, show_spinner=False)
def _synth_figures(path: str, stamp: int) -> dict:
    from backend.synth.plots import synth_figures as figures

    res = _synth_results(path, stamp)
    return {} if res is None else figures(res)


def synth_figures() -> dict:
    """{name: plotly Figure} of the synthetic benchmark (MCC against FLOPs, the gap grids); {} before it has run."""
    p = _synth_results_path()
    return _synth_figures(str(p), _mtime(p))


# ------------------------------------------------------------------ writes to labels.duckdb (plain: never cached)


def save_label(run: str, dict_name: str, feature: int, text: str, author: str, notes: str = "") -> int:
    """Append a human label version; returns its version number (UserError for a bad text or a busy file)."""
    return label_store.LabelStore(run).save(dict_name, int(feature), text, author, source="human", notes=notes)


def restore_label(run: str, dict_name: str, feature: int, version: int, author: str) -> int:
    """Append a copy of an old version as the current label; returns the new version number."""
    return label_store.LabelStore(run).restore(dict_name, int(feature), int(version), author)


def add_verdicts(run: str, dict_name: str, feature: int, annotator: str, items: list[dict], label_version: int,
                 proposal: str = "") -> int:
    """Record an annotator's fits/does-not-fit verdicts on held-out contexts (and a proposed label)."""
    return label_store.LabelStore(run).add_verdicts(dict_name, int(feature), annotator, items,
                                                    label_version=int(label_version), proposal=proposal)


# ------------------------------------------------------------------ validation reads


def validation_queue(run: str, dict_name: str, annotator: str, features: list[int], versions: dict[int, int]) -> list[int]:
    """Labelled features in the order an annotator should judge them (never-validated first)."""
    return label_store.LabelStore(run).validation_queue(dict_name, annotator, features, versions=versions)


def cohen_kappa(run: str, dict_name: str, a: str, b: str) -> dict:
    """{"kappa", "n", "agreement"} of two annotators on the items both judged in this dictionary."""
    return label_store.LabelStore(run).cohen_kappa(a, b, dict_name=dict_name)


def human_precision_recall(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Human precision/recall per (feature, label_version) of verdict rows (token_index, activating, fits, ...)."""
    return label_store.human_precision_recall(verdicts)


# ------------------------------------------------------------------ interventions (backend.interventions; issue 10)
# The model and dictionary come from the cache_resource loaders above and are never mutated: every pass takes
# backend.model.forward.HOOK_LOCK and removes its hook before releasing it. Edits arrive as plain values (hashable
# cache keys) and become a backend Edit inside.


def _edit(features, op: str, value, relative: bool, positions, include_special: bool = False):
    from backend.interventions import Edit

    pos = tuple(positions) if isinstance(positions, (list, tuple)) else positions
    return Edit(tuple(int(f) for f in features), op, value, relative=relative, positions=pos,
                include_special=include_special)


@st.cache_data(max_entries=16, show_spinner=False)
def _feature_stats(run: str, dict_name: str, stamp: int):
    from backend.interventions.run_data import RunData

    return RunData(run, dict_name).stats()


def feature_stats(run: str, dict_name: str):
    """Mean and max activation of every feature (for mean ablation and relative strengths), None before analysis."""
    return _feature_stats(run, dict_name, dict_stamp(run, dict_name))


@st.cache_data(max_entries=64, show_spinner=False)
def _feature_effects(run: str, dict_name: str, stamp: int, feature: int, n: int):
    from backend.interventions import top_context_effects

    lm = load_model(run_info(run)["model"])
    with burst_threads():
        return top_context_effects(lm, load_dictionary(run, dict_name), run, dict_name, feature, n=n)


def feature_effects(run: str, dict_name: str, feature: int, n: int = 20):
    """Zero-ablate `feature` on its top `n` contexts (backend.interventions.FeatureEffects)."""
    return _feature_effects(run, dict_name, dict_stamp(run, dict_name), int(feature), int(n))


@st.cache_data(max_entries=64, show_spinner=False)
def _text_effects(run: str, dict_name: str, stamp: int, text: str, edit_key: tuple, error_term: bool):
    from backend.interventions import text_effects as _effects

    lm = load_model(run_info(run)["model"])
    with burst_threads():
        return _effects(lm, load_dictionary(run, dict_name), run_info(run)["hook"], text, _edit(*edit_key),
                        stats=feature_stats(run, dict_name), error_term=error_term)


def text_effects(run: str, dict_name: str, text: str, features, op: str = "zero", value=None, relative: bool = False,
                 positions="all", error_term: bool = True):
    """An edit's per-token effects on `text` (backend.interventions.TextEffects)."""
    key = (tuple(int(f) for f in features), op, value, bool(relative),
           tuple(positions) if isinstance(positions, (list, tuple)) else positions)
    return _text_effects(run, dict_name, dict_stamp(run, dict_name), text, key, bool(error_term))


def steer_stream(run: str, dict_name: str, prompt: str, feature: int, strength: float, relative: bool = True,
                 n_new: int = 30, temperature: float = 0.0, top_p: float = 0.9, frequency_penalty: float = 0.0,
                 seed: int = 0, positions: str = "all"):
    """Generator of GenSteps (clean row 0, steered row 1), made as the UI shows them: not cached."""
    from backend.interventions.steer import Sampling, generate_rows

    lm = load_model(run_info(run)["model"])
    sampling = Sampling(temperature=float(temperature), top_p=float(top_p), frequency_penalty=float(frequency_penalty),
                        seed=int(seed))
    edit = _edit((feature,), "steer", float(strength), relative, positions)
    return _in_burst(generate_rows(lm, load_dictionary(run, dict_name), run_info(run)["hook"], prompt, [None, edit],
                                   n_new, sampling, feature_stats(run, dict_name)))


def _in_burst(steps):
    """The generator `steps` run with the idle cores (backend.common.threads) while the UI consumes it."""
    with burst_threads():
        yield from steps


@st.cache_data(max_entries=32, show_spinner=False)
def _steer_sweep(run: str, dict_name: str, stamp: int, prompt: str, feature: int, strengths: tuple, relative: bool,
                 n_new: int):
    from backend.interventions.steer import sweep

    lm = load_model(run_info(run)["model"])
    with burst_threads():
        return sweep(lm, load_dictionary(run, dict_name), run_info(run)["hook"], prompt, feature, strengths,
                     relative=relative, n_new=n_new, stats=feature_stats(run, dict_name))


def steer_sweep(run: str, dict_name: str, prompt: str, feature: int, strengths, relative: bool = True, n_new: int = 20):
    """DataFrame[strength, kl_first, text]: clean, then 5 steering strengths (greedy)."""
    return _steer_sweep(run, dict_name, dict_stamp(run, dict_name), prompt, int(feature),
                        tuple(float(s) for s in strengths), bool(relative), int(n_new))


def has_effects(run: str, dict_name: str) -> bool:
    """The dictionary has effects.parquet (`python -m backend intervene effects`): the Features table can sort by it."""
    return (dict_dir(run, dict_name) / EFFECTS).is_file()
# ------------------------------------------------------------------ the tour (<run>/tour.json) and its HTML export


def tour_stamp(run: str) -> int:
    from backend.store.tour import tour_path

    return _mtime(tour_path(run))


@st.cache_data(max_entries=16, show_spinner=False)
def _tour(run: str, stamp: int) -> dict:
    from backend.store.tour import load_tour

    return load_tour(run)


def tour(run: str) -> dict:
    """The run's tour: {"stops": [{dictionary, feature, note, added_by, added_at}], "history": [...], "version"}."""
    return _tour(run, tour_stamp(run))


def add_to_tour(run: str, dict_name: str, feature: int, note: str, author: str) -> int:
    """Append a stop (UserError when the feature is already in the tour); returns its 0-based position."""
    from backend.store.tour import add_stop

    return add_stop(run, dict_name, int(feature), note, author)


def move_tour_stop(run: str, index: int, offset: int, author: str) -> None:
    from backend.store.tour import move_stop

    move_stop(run, int(index), int(offset), author)


def remove_tour_stop(run: str, index: int, author: str) -> None:
    from backend.store.tour import remove_stop

    remove_stop(run, int(index), author)


def set_tour_note(run: str, index: int, note: str, author: str) -> None:
    from backend.store.tour import set_note

    set_note(run, int(index), note, author)


@st.cache_data(max_entries=64, show_spinner=False)
def _label_status(run: str, dict_name: str, feature: int, stamp: tuple) -> dict:
    from backend.html_export import label_status

    return label_status(run, dict_name, feature)


def hold_f1() -> float:
    """The detection F1 at which a label counts as holding on unseen contexts (backend.labels.score)."""
    from backend.labels.score import HOLD_F1

    return float(HOLD_F1)


def label_status(run: str, dict_name: str, feature: int) -> dict:
    """{"validation": validated | agreed | disputed | None, "scores": {scorer: F1}} of a feature's current label."""
    return _label_status(run, dict_name, int(feature), labels_stamp(run))


@st.cache_data(max_entries=2, show_spinner="Writing the HTML page (plotly.js inline, ~5 MB)...")
def _export_html(run: str, stops: tuple, title: str, stamp: tuple) -> str:
    from backend.html_export import render_html

    return render_html(run, [dict(s) for s in stops], title=title)


def export_html(run: str, stops: list[dict], title: str) -> str:
    """One self-contained HTML page of these stops (backend.html_export), for a download button."""
    key = tuple(tuple(sorted((k, v) for k, v in s.items() if k in ("dictionary", "feature", "note"))) for s in stops)
    dicts = sorted({str(s["dictionary"]) for s in stops})
    stamp = (labels_stamp(run), tuple(dict_stamp(run, d) for d in dicts))
    return _export_html(run, key, title, stamp)


# ------------------------------------------------------------------ attribution and faithfulness (issue 11)


@st.cache_data(max_entries=32, show_spinner=False)
def _attribute(run: str, dict_name: str, stamp: int, text: str, target: str, contrast: str, top_n: int, ig_steps: int):
    from backend.attribution import attribute_prompt as _attribute_prompt

    info = run_info(run)
    with burst_threads():
        return _attribute_prompt(load_model(info["model"]), load_dictionary(run, dict_name), info["hook"], text,
                                 target or None, contrast or None, top_n=top_n, ig_steps=ig_steps)


def attribute_prompt(run: str, dict_name: str, text: str, target: str = "", contrast: str = "", top_n: int = 20,
                     ig_steps: int = 20):
    """Attribution of `text`'s continuation (target, or target vs contrast, or the top next token) to features and,
    by integrated gradients, to its tokens (backend.attribution.PromptAttribution)."""
    return _attribute(run, dict_name, dict_stamp(run, dict_name), text, str(target or ""), str(contrast or ""),
                      int(top_n), int(ig_steps))


def _faith_stamp(run: str) -> tuple:
    from backend.faithfulness.store import FAITH_DIR, OCCLUSION_DIR, SUMMARY

    base = Path(run) / FAITH_DIR
    stamps = sorted((p.parent.name, _mtime(p)) for p in base.glob(f"*/{SUMMARY}")) if base.is_dir() else []
    occlusion = sorted((p.name, _mtime(p)) for p in (base / OCCLUSION_DIR).glob("*.json")) if base.is_dir() else []
    return tuple(stamps + occlusion)  # the occlusion cache is read into results written before it


@st.cache_data(max_entries=8, show_spinner=False)
def _faithfulness(run: str, stamp: tuple) -> tuple[pd.DataFrame, pd.DataFrame]:
    from backend.faithfulness import store as faith

    return faith.read_all(run), faith.read_summary(run)


def faithfulness_results(run: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-item rows of every measured dictionary, summary rows) of `python -m backend faithfulness`; empty before."""
    return _faithfulness(run, _faith_stamp(run))


@st.cache_data(max_entries=16, show_spinner=False)
def _faithfulness_figures(run: str, stamp: tuple, task: str) -> dict:
    from backend.faithfulness import plots

    items, summary = _faithfulness(run, stamp)
    if items.empty:
        return {}
    return {"aopc": plots.aopc_figure(items, None if task == "all tasks" else task),
            "drop": plots.drop_figure(summary, task)}


def faithfulness_figures(run: str, task: str = "all tasks") -> dict:
    """{"aopc": curves figure, "drop": top-5% ablation drop figure} of one task (or all tasks pooled)."""
    return _faithfulness_figures(run, _faith_stamp(run), str(task))


@st.cache_data(max_entries=8, show_spinner=False)
def _task_retention(run: str, stamp: tuple) -> pd.DataFrame:
    from backend.faithfulness.store import task_retention as retention

    return retention(run)


def task_retention(run: str) -> pd.DataFrame:
    """Accuracy clean / spliced / spliced with the error term per dictionary and task (`python -m backend tasks eval`)."""
    from backend.tasks.evaluate import TASKS_SUBDIR

    base = Path(run) / TASKS_SUBDIR
    stamp = tuple(sorted((p.parent.name, _mtime(p)) for p in base.glob("*/summary.json"))) if base.is_dir() else ()
    return _task_retention(run, stamp)


def anchorx_reference() -> dict:
    """AnchorX's top-5% ablation accuracy drops in points: {"features": 27.4, "ig": 11.8} (Shah 2025)."""
    from backend.faithfulness.store import ANCHORX

    return dict(ANCHORX)


# ------------------------------------------------------------------ evaluation suite (`python -m backend evaluate`)


def evaluation_stamp(run: str, dicts: tuple) -> tuple:
    from backend.common.layout import EVALUATION_JSON

    return tuple(_mtime(dict_dir(run, n) / EVALUATION_JSON) for n in dicts)


@st.cache_data(max_entries=16, show_spinner=False)
def _evaluation_frames(run: str, dicts: tuple, stamp: tuple) -> dict:
    from backend.store import evaluations as ev

    return {"table": ev.evaluation_table(run, dicts), "curves": ev.probing_curves(run, dicts),
            "nmi": ev.nmi_histograms(run, dicts), "stability": ev.stability_table(run, dicts)}


def evaluation_table(run: str, dicts: tuple) -> pd.DataFrame:
    """One row per evaluated dictionary of `dicts` plus the raw-activation baseline."""
    return _evaluation_frames(run, dicts, evaluation_stamp(run, dicts))["table"]


def probing_curves(run: str, dicts: tuple) -> pd.DataFrame:
    return _evaluation_frames(run, dicts, evaluation_stamp(run, dicts))["curves"]


def nmi_histograms(run: str, dicts: tuple) -> pd.DataFrame:
    return _evaluation_frames(run, dicts, evaluation_stamp(run, dicts))["nmi"]


def stability_table(run: str, dicts: tuple) -> pd.DataFrame:
    return _evaluation_frames(run, dicts, evaluation_stamp(run, dicts))["stability"]


@st.cache_resource(max_entries=8, show_spinner=False)
def _feature_tags(run: str, dict_name: str, stamp: int) -> tuple[np.ndarray, pd.DataFrame]:
    """(feature of each row, every feature's tags by feature): shared, never mutated; one read of the file per
    version instead of one filtered read (~15 ms) per feature page."""
    from backend.store.evaluations import feature_tags_table

    df = feature_tags_table(run, dict_name)
    return df["feature"].to_numpy(), df


def feature_tags(run: str, dict_name: str, feature: int) -> pd.DataFrame:
    """One feature's top POS tags and source families with their NMI (empty before `evaluate --only nmi`)."""
    from backend.common.layout import FEATURE_TAGS

    rows = _rows_of(*_feature_tags(run, dict_name, _mtime(dict_dir(run, dict_name) / FEATURE_TAGS)), feature)
    return rows[["category", "tag", "nmi", "rank"]]



# ------------------------------------------------------------------ diagnosis (backend.diagnosis; issue 13)
# The Diagnose page, the feature page's domain line and the Features page's domain filter read through these.


def _domains_stamp(run: str, dict_name: str) -> tuple:
    from backend.common.layout import DOMAINS, DOMAINS_JSON

    d = dict_dir(run, dict_name)
    return _mtime(d / DOMAINS), _mtime(d / DOMAINS_JSON)


@st.cache_data(max_entries=8, show_spinner=False)
def _domains(run: str, dict_name: str, stamp: tuple):
    from backend.common.errors import UserError
    from backend.diagnosis.domains import load_domains

    try:
        return load_domains(run, dict_name)
    except UserError:
        return None


def feature_domains(run: str, dict_name: str):
    """The dictionary's FeatureDomains (domains.parquet + domains.json), or None before `python -m backend domains`."""
    return _domains(run, dict_name, _domains_stamp(run, dict_name))


def feature_domain(run: str, dict_name: str, feature: int) -> dict | None:
    """{domain, share, p: {domain: p}, fires: {...}, label: {...}, has_label} of one feature, or None."""
    fd = feature_domains(run, dict_name)
    if fd is None or not 0 <= int(feature) < len(fd.table):
        return None
    row = fd.table.iloc[int(feature)]
    return {"domain": str(row["domain"]), "share": float(row["domain_share"]), "has_label": bool(row["has_label"]),
            **{k: {d: float(row[f"{k}_{d}"]) for d in fd.domains} for k in ("p", "fires", "label")}}


@st.cache_data(max_entries=64, show_spinner=False)
def _diagnose(run: str, dict_name: str, stamp: tuple, text: str, domain: str, threshold: float | None,
              region: tuple | None):
    from backend.diagnosis.detect import diagnose_text

    info = run_info(run)
    return diagnose_text(load_model(info["model"]), load_dictionary(run, dict_name), info["hook"], text,
                         feature_domains(run, dict_name), domain, labels(run, dict_name), threshold, region)


def diagnose(run: str, dict_name: str, text: str, domain: str, threshold: float | None = None, region=None):
    """backend.diagnosis.detect.Diagnosis of `text` (flags in `region`, [start, end) characters, or everywhere)."""
    stamp = (dict_stamp(run, dict_name), _domains_stamp(run, dict_name), labels_stamp(run))
    return _diagnose(run, dict_name, stamp, text, domain, None if threshold is None else float(threshold),
                     None if region is None else (int(region[0]), int(region[1])))


@st.cache_data(max_entries=128, show_spinner=False)
def _rule_reformulation(text: str, spans: tuple, domain: str, region: tuple):
    from backend.diagnosis import reformulate
    from backend.diagnosis.rules import load_rules

    return reformulate.by_rules(text, load_rules(), domain, list(spans), region, embedder=embedder())


def rule_reformulation(text: str, spans, domain: str, region=None):
    """The rules' reformulation of `text` at the flagged character spans, with its equivalence verdict."""
    region = (0, len(text)) if region is None else (int(region[0]), int(region[1]))
    return _rule_reformulation(text, tuple((int(a), int(b)) for a, b in spans), domain, region)


@st.cache_data(max_entries=32, show_spinner=False)
def _llm_reformulation(run: str, text: str, spans: tuple, tokens: tuple, domain: str, region: tuple):
    from backend.diagnosis import reformulate
    from backend.diagnosis.rules import load_rules
    from backend.labels.llm import make_chat

    chat = make_chat("local-llm", lm=load_model(run_info(run)["model"]))
    return reformulate.by_llm(chat, text, region, list(tokens), load_rules(), domain, list(spans), embedder=embedder())


def llm_reformulation(run: str, text: str, spans, tokens, domain: str, region=None):
    """The embedded SmolLM2's rewrite of the region, checked for equivalence (seconds on a CPU)."""
    region = (0, len(text)) if region is None else (int(region[0]), int(region[1]))
    return _llm_reformulation(run, text, tuple((int(a), int(b)) for a, b in spans), tuple(tokens), domain, region)


@st.cache_data(max_entries=8, show_spinner=False)
def diagnosis_tasks() -> list[str]:
    """Task names for the Diagnose page: the experiment's tasks first, then every other known task."""
    from backend.diagnosis.commands import DEFAULT_TASKS
    from backend.tasks.suite import task_names

    try:
        known = task_names(fetch=False)
    except Exception:  # noqa: BLE001 - BIG-bench tasks not generated: the project's own math tasks remain
        known = ["math_qa", "math_symbols", "math_operators"]
    return [t for t in DEFAULT_TASKS if t in known] + [t for t in known if t not in DEFAULT_TASKS]


@st.cache_data(max_entries=16, show_spinner=False)
def task_items(task: str, n: int = 100) -> list[dict]:
    """The evaluated items of a task (the suite's eval split): [{id, input, choices, correct, prompt, region}]."""
    from backend.diagnosis.items import prompt_item
    from backend.tasks.suite import load_task, split_items

    t = split_items(load_task(task), n)
    out = []
    for it in t.items:
        p = prompt_item(t, it)
        out.append({"id": it.id, "input": it.input, "choices": list(it.choices), "correct": list(it.correct),
                    "prompt": p.prompt, "region": p.region})
    return out


def _task_item(task: str, item_id: int, text: str | None):
    from backend.diagnosis.items import with_input
    from backend.tasks.suite import load_task

    t = load_task(task)
    it = next(i for i in t.items if i.id == int(item_id))
    return t, (with_input(it, text) if text is not None else it)


@st.cache_data(max_entries=128, show_spinner=False)
def _choice_probs(run: str, task: str, item_id: int, text: str):
    from backend.diagnosis.experiment import Scorer
    from backend.diagnosis.items import choice_probs

    t, it = _task_item(task, item_id, text)
    sc = Scorer(load_model(run_info(run)["model"]))
    sc.score([(t, it, text)])
    return choice_probs(sc.get(t, it, text)).tolist()


def choice_probs(run: str, task: str, item_id: int, text: str) -> list[float]:
    """The model's probability of each choice of a task item whose question is `text` (clean model)."""
    return _choice_probs(run, task, int(item_id), text)


@st.cache_data(max_entries=64, show_spinner=False)
def _ablated_probs(run: str, dict_name: str, stamp: int, task: str, item_id: int, features: tuple, positions: tuple):
    from backend.diagnosis.experiment import Scorer, ablation_fn
    from backend.diagnosis.items import choice_probs as probs
    from backend.model.hooks import n_layers, parse_hook

    info = run_info(run)
    lm = load_model(info["model"])
    t, it = _task_item(task, item_id, None)
    sc = Scorer(lm, parse_hook(info["hook"], n_layers(lm.model)))
    fn = ablation_fn(load_dictionary(run, dict_name), list(features), list(positions))
    return probs(sc.score_with(t, it, fn)).tolist()


def ablated_probs(run: str, dict_name: str, task: str, item_id: int, features, positions) -> list[float]:
    """Choice probabilities with `features` zero-ablated at prompt `positions` (error term kept)."""
    return _ablated_probs(run, dict_name, dict_stamp(run, dict_name), task, int(item_id),
                          tuple(int(f) for f in features), tuple(int(p) for p in positions))


def diagnosis_results(run: str) -> dict | None:
    """The last `python -m backend diagnose-eval` of the run ({items, summary, tests, config}), or None."""
    from backend.diagnosis.commands import eval_dir
    from backend.diagnosis.report import SUMMARY

    p = eval_dir(run) / SUMMARY
    return _diagnosis_results(str(eval_dir(run)), _mtime(p)) if p.is_file() else None


@st.cache_data(max_entries=4, show_spinner=False)
def _diagnosis_results(folder: str, stamp: int) -> dict:
    from backend.diagnosis.report import read_results

    return read_results(folder)
