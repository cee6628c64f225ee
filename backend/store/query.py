"""The query layer: the only way the explorer reads runs and analysed dictionaries (docs/CONTRACTS.md).

Every function takes the run folder (str or Path) and returns a pandas DataFrame or plain dict.
Queries are DuckDB over the Parquet files written by `backend.analysis.analyze` and `backend.activations.cache`;
every user value goes in as a `?` parameter, file paths too (`read_parquet(?)`); sorting is over a
whitelist of column names. Other backend modules that read stores (`backend.labels`) build on the public
helpers of the first section (`query_df`, `query_numpy`, `store_file`, `check_feature`, `file_key`) and of
the token-window section (`window_bounds`, `token_windows`, `context_from_window`).

Connections: each call opens its own DuckDB connection (`cursor()`) on one in-memory database per
process, never a shared connection, so Streamlit's session threads can call in concurrently. A
new in-memory *database* per call (`duckdb.connect()`) costs ~20 ms of setup on a 2-core machine,
half the latency budget of a feature page, so the database instance is what is shared; it also
keeps DuckDB's Parquet metadata cache (footers, validated against the file's modification time).

Latency (feature page p95 < 50 ms on 1M tokens x 16k features, bench/bench_store.py): feature_acts
is sorted by (feature, token_index) in large row groups so a feature is one or two row groups
found from min/max statistics; the token windows of all contexts come from a per-process cache of
the run's token ids (2-4 bytes a token, keyed by the tokens.parquet file's size and mtime; corpora
over `TOKEN_CACHE_MAX` tokens fall back to a DuckDB query) because the windows of one feature are
spread over the whole corpus, which a columnar scan can only answer by reading all of it.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from backend.common.atomic import read_json
from backend.common.errors import UserError, first_line
from backend.common.layout import (
    CFG_JSON,
    CONTEXTS,
    DATA_DIR,
    DICTS_DIR,
    DOMAINS,
    EFFECTS,
    FEATURE_ACTS,
    FEATURES,
    LABELS_DB,
    METRICS,
    TOKENS,
    dict_dir,
    dictionary_names,
    load_run,
    run_folders,
)
from backend.store import feature_rows
from backend.store.file_cache import MISSING, FileVersionCache

GROUPS = ("top", "q1", "q2", "q3", "q4", "q5")
METRIC_COLUMNS = ("l0", "explained_variance", "fvu", "mse", "dead_fraction", "ce_loss_score", "delta_ce", "kl_div")
SORT_COLUMNS = ("feature", "density", "n_fires", "max_act", "mean_act", "label",
                "loss_change_peak", "loss_change_after")  # list_features(sort=...)
EFFECT_COLUMNS = ("loss_change_peak", "loss_change_after")
TOKEN_CACHE_MAX = 32_000_000  # tokens of one run cached as ids (<= 128 MiB); larger corpora query DuckDB
TOKEN_CACHE_RUNS = 4  # runs kept in the token cache (LRU)
DEFAULT_BEFORE, DEFAULT_AFTER = 24, 8

# --------------------------------------------------------------------------- connections, queries and paths

_db: duckdb.DuckDBPyConnection | None = None
_db_pid: int | None = None
_db_lock = threading.Lock()


def connect() -> duckdb.DuckDBPyConnection:
    """A new connection to this process's in-memory DuckDB database; close it after use."""
    global _db, _db_pid
    with _db_lock:
        if _db is None or _db_pid != os.getpid():  # a forked child gets its own database
            _db = duckdb.connect(":memory:")
            _db.execute("SET parquet_metadata_cache = true")
            _db_pid = os.getpid()
        return _db.cursor()


def _files_in(params) -> list[str]:
    """The Parquet paths among a query's parameters (what an error message should name)."""
    values = params.values() if isinstance(params, dict) else (params or [])
    return [v for v in values if isinstance(v, str) and v.endswith(".parquet")]


def unreadable(files, e: BaseException) -> UserError:
    """The one-line error for store files that DuckDB or Arrow cannot read (damaged, truncated, foreign schema)."""
    files = [str(f) for f in files]
    fix = ("rebuild the run with `python -m backend cache --force`" if any(f.endswith(TOKENS) for f in files)
           else "re-run `python -m backend analyze` on the dictionary")
    return UserError(f"cannot read {', '.join(files) or 'a store file'}: {first_line(e)} (damaged or truncated? {fix})")


@contextlib.contextmanager
def _cursor(files=()) -> Iterator[duckdb.DuckDBPyConnection]:
    """A fresh cursor, closed after use; a file DuckDB cannot read (any DuckDB error but a syntax error, which
    is ours) becomes a one-line UserError naming `files`."""
    global _db
    con = connect()
    try:
        yield con
    except duckdb.ParserException:
        raise
    except duckdb.Error as e:
        if isinstance(e, (duckdb.FatalException, duckdb.InternalException)):
            with _db_lock:
                _db = None  # DuckDB invalidates a database after these: the next call opens a fresh one
        raise unreadable(files, e) from None
    finally:
        con.close()


def query_df(sql: str, params: list | dict | None = None) -> pd.DataFrame:
    """Run one parameterised query on its own cursor; the result as a DataFrame (UserError for a damaged file)."""
    with _cursor(_files_in(params)) as con:
        return con.execute(sql, params or []).df()


def query_numpy(sql: str, params: list | dict | None = None) -> dict[str, np.ndarray]:
    """Run one parameterised query on its own cursor; the result as {column: array} (no pandas overhead)."""
    with _cursor(_files_in(params)) as con:
        return con.execute(sql, params or []).fetchnumpy()


def _dict_dir(run: str | Path, dictionary: str) -> Path:
    """Folder of a dictionary; the name is user input, checked by `layout.dict_dir`."""
    name = str(dictionary)
    d = dict_dir(run, name)
    if not d.is_dir():
        load_run(run)  # a missing run is reported as such
        raise UserError(f"no dictionary {name!r} in run {run}")
    return d


def store_file(run: str | Path, dictionary: str, name: str) -> str:
    """Path of one analysed file of a dictionary (`FEATURES`, `FEATURE_ACTS`, `CONTEXTS`), as text for
    `read_parquet(?)`; a missing run or dictionary, or one not analysed yet, is a one-line UserError."""
    p = _dict_dir(run, dictionary) / name
    if not p.is_file():
        raise UserError(f"dictionary {dictionary!r} of {run} is not analysed yet; run "
                        f"`python -m backend analyze --run {run} --dict {dictionary}`")
    return str(p)


def file_key(path: str | Path) -> tuple:
    """(path, size, mtime_ns): a cache key that changes whenever the file is rewritten."""
    st = os.stat(path)
    return str(path), st.st_size, st.st_mtime_ns


_n_features: dict[tuple, int] = {}


def _num_features(path: str) -> int:
    """Rows of features.parquet (= d_sae), from the footer, cached per file version."""
    key = file_key(path)
    if key not in _n_features:
        try:
            md = pq.read_metadata(path)
        except Exception as e:  # Arrow's types for a damaged file
            raise unreadable([path], e) from None
        if "feature" not in md.schema.names:
            raise unreadable([path], ValueError("it has no 'feature' column: not a features file"))
        _n_features[key] = md.num_rows
    return _n_features[key]


def check_feature(run: str | Path, dictionary: str, feature) -> int:
    """The feature id as an int, or a one-line UserError when it is not one of the dictionary's features
    (or the dictionary is missing or not analysed)."""
    path = store_file(run, dictionary, FEATURES)
    try:
        f = int(feature)
    except (TypeError, ValueError):
        raise UserError(f"feature must be an integer, not {feature!r}") from None
    n = _num_features(path)
    if not 0 <= f < n or f != feature:
        raise UserError(f"no feature {feature} (this dictionary has features 0..{n - 1})")
    return f


# --------------------------------------------------------------------------- current labels (labels.duckdb)

_label_cache: OrderedDict[tuple, "_Labels"] = OrderedDict()
_label_lock = threading.Lock()
LABEL_CACHE_MAX = 16  # (run, dictionary) label tables kept


class _Labels:
    """The current labels of one dictionary as a DataFrame, an Arrow table (registered in queries without a
    copy) and a dict for single-feature lookups."""

    def __init__(self, df: pd.DataFrame):
        self.df = df
        self.arrow = pa.Table.from_pandas(df, preserve_index=False)
        self.by_feature = {int(f): (str(t), str(s), int(v)) for f, t, s, v in
                           zip(df["feature"], df["label"], df["label_source"], df["label_version"])}

    def __len__(self) -> int:
        return len(self.df)


def _labels_key(run: str | Path, dictionary: str) -> tuple | None:
    """Identity of the label file's current contents: stat of labels.duckdb and its write-ahead log.

    A write appends to the log and a connection's close checkpoints it into the file, so every
    committed save changes one of the two (writes are tens of ms apart: each takes the file lock).
    """
    p = Path(run) / LABELS_DB
    try:
        st = p.stat()
    except OSError:
        return None
    try:
        wst = p.with_name(p.name + ".wal").stat()
        wal = (wst.st_size, wst.st_mtime_ns)
    except OSError:
        wal = None
    return str(p.resolve()), str(dictionary), st.st_ino, st.st_size, st.st_mtime_ns, wal


_NO_LABELS = _Labels(pd.DataFrame({"feature": pd.Series(dtype="int32"), "label": pd.Series(dtype="object"),
                                   "label_source": pd.Series(dtype="object"), "label_version": pd.Series(dtype="int32")}))


def _current(run: str | Path, dictionary: str) -> _Labels:
    """Current labels from labels.duckdb, cached per process until the file changes: opening the DuckDB
    file costs ~20 ms and list_features is on the latency budget."""
    key = _labels_key(run, dictionary)
    if key is None:
        return _NO_LABELS
    with _label_lock:
        if key in _label_cache:
            _label_cache.move_to_end(key)
            return _label_cache[key]
    from backend.store.label_store import LabelStore

    cur = LabelStore(run).current(dictionary)
    entry = _NO_LABELS if cur.empty else _Labels(pd.DataFrame({
        "feature": cur["feature"].astype("int32"), "label": cur["text"].astype(str),
        "label_source": cur["source"].astype(str), "label_version": cur["version"].astype("int32")}))
    with _label_lock:
        for k in [k for k in _label_cache if k[:2] == key[:2]]:  # older contents of the same file
            del _label_cache[k]
        _label_cache[key] = entry
        while len(_label_cache) > LABEL_CACHE_MAX:
            _label_cache.popitem(last=False)
    return entry


def current_labels(run: str | Path, dictionary: str) -> pd.DataFrame:
    """DataFrame[feature, label, label_source, label_version] of the features labelled in labels.duckdb
    (what replaces features.parquet's `label` column in list_features, count_features and feature_dashboard)."""
    return _current(run, dictionary).df.copy()


def _features_source(path: str, labels: _Labels) -> str:
    """FROM clause of features.parquet with the current labels in place of its own `label`/`label_source`
    (the parquet values stay as the fallback of features never labelled in the store)."""
    if not len(labels):
        return "read_parquet(?)"
    return ("(SELECT f.* REPLACE (coalesce(l.label, f.label) AS label, coalesce(l.label_source, f.label_source) "
            "AS label_source) FROM read_parquet(?) f LEFT JOIN current_labels l ON l.feature = f.feature)")


def _query_features(sql: str, params: list, labels: _Labels, fetch: str = "df"):
    """Run a query over `_features_source` with the label table registered on this call's own cursor."""
    with _cursor(_files_in(params)) as con:
        if len(labels):
            con.register("current_labels", labels.arrow)
        cur = con.execute(sql, params)
        return cur.df() if fetch == "df" else cur.fetchall()


# --------------------------------------------------------------------------- runs and dictionaries


def list_runs(root: str | Path = DATA_DIR) -> pd.DataFrame:
    """DataFrame[run, path, model, hook, corpus, n_tokens, n_dicts] of every run under `root`."""
    rows = []
    root = Path(root)
    for d in run_folders(root):
        try:
            m = load_run(d)
        except UserError:
            continue  # a broken run.json is skipped here; run_info reports it
        rows.append({"run": d.relative_to(root).as_posix(), "path": str(d), "model": m.get("model"), "hook": m.get("hook"),
                     "corpus": m.get("corpus"), "n_tokens": int(m.get("n_tokens") or m["n_seqs"] * m["ctx_len"]),
                     "n_dicts": len(dictionary_names(d))})
    return pd.DataFrame(rows, columns=["run", "path", "model", "hook", "corpus", "n_tokens", "n_dicts"])


def run_info(run: str | Path) -> dict:
    """run.json of a run."""
    return load_run(run)


def list_dictionaries(run: str | Path) -> pd.DataFrame:
    """DataFrame[name, architecture, d_sae, <metrics>, analysed], one row per dictionary of the run."""
    load_run(run)
    rows = []
    for name in dictionary_names(run):
        d = Path(run) / DICTS_DIR / name
        try:
            cfg = read_json(d / CFG_JSON)
        except ValueError:
            cfg = {}
        met = _metrics(d)
        row = {"name": name, "architecture": cfg.get("architecture") or cfg.get("kind"), "d_sae": cfg.get("d_sae")}
        row.update({k: met.get(k) if isinstance(met.get(k), (int, float)) else math.nan for k in METRIC_COLUMNS})
        row["analysed"] = (d / FEATURES).is_file()
        rows.append(row)
    return pd.DataFrame(rows, columns=["name", "architecture", "d_sae", *METRIC_COLUMNS, "analysed"])


def analysis_problem(run: str | Path, dictionary: str) -> str | None:
    """Why a dictionary's analysed files cannot be read ("features.parquet: <reason>" for the first damaged one,
    from the Parquet footers), None when they can be or it is not analysed."""
    d = _dict_dir(run, dictionary)
    for name in (FEATURES, FEATURE_ACTS, CONTEXTS):
        if (d / name).is_file():
            try:
                pq.read_metadata(d / name)
            except Exception as e:  # Arrow's types for a damaged file
                return f"{name}: {first_line(e)}"
    return None


def _metrics(d: Path) -> dict:
    p = d / METRICS
    if not p.is_file():
        return {}
    try:
        return read_json(p)
    except ValueError:
        return {}


def dictionary_metrics(run: str | Path, dictionary: str) -> dict:
    """metrics.json of a dictionary ({} before it has any)."""
    return _metrics(_dict_dir(run, dictionary))


# --------------------------------------------------------------------------- feature lists


def _filters(density_min=None, density_max=None, label_query=None, alive=None, labelled=None,
             domain: tuple[str, str] | None = None) -> tuple[str, list]:
    where, params = [], []
    if domain is not None:  # (domains.parquet path, domain name): `python -m backend domains` wrote the file
        where.append("feature IN (SELECT feature FROM read_parquet(?) WHERE domain = ?)")
        params += list(domain)
    if density_min is not None:
        where.append("density >= ?")
        params.append(float(density_min))
    if density_max is not None:
        where.append("density <= ?")
        params.append(float(density_max))
    if label_query:
        # a substring match of the literal text: the LIKE wildcards in it are escaped
        text = str(label_query).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append("label ILIKE ? ESCAPE '\\'")
        params.append(f"%{text}%")
    if alive is not None:
        where.append("n_fires > 0" if alive else "n_fires = 0")
    if labelled is not None:
        where.append("coalesce(label, '') <> ''" if labelled else "coalesce(label, '') = ''")
    return (" WHERE " + " AND ".join(where)) if where else "", params


def list_features(run: str | Path, dictionary: str, density_min: float | None = None, density_max: float | None = None,
                  label_query: str | None = None, alive: bool | None = None, labelled: bool | None = None,
                  sort: str = "feature", descending: bool = False, limit: int = 50, offset: int = 0,
                  domain: str | None = None) -> pd.DataFrame:
    """One page of features: DataFrame[feature, label, density, max_act, mean_act, top_logits], plus
    loss_change_peak and loss_change_after when the dictionary has effects.parquet (NaN for features it lacks).
    `domain`: only features whose main domain (domains.parquet, `python -m backend domains`) is this one.

    sort: one of SORT_COLUMNS (anything else is a ValueError; an effect column without effects.parquet is a
    UserError); ties are broken by feature id, missing values last.
    """
    if sort not in SORT_COLUMNS:
        raise ValueError(f"cannot sort by {sort!r}; choose one of {', '.join(SORT_COLUMNS)}")
    limit, offset = int(limit), int(offset)
    if limit < 0 or offset < 0:
        raise ValueError("limit and offset must be >= 0")
    path = store_file(run, dictionary, FEATURES)
    labels = _current(run, dictionary)
    # the label table is joined in only when labels filter or order the features; otherwise the page's
    # (at most `limit`) labels are looked up afterwards, which keeps an unfiltered page as fast as before
    by_label = bool(label_query) or labelled is not None or sort == "label"
    source = _features_source(path, labels) if by_label else "read_parquet(?)"
    sources = [path]
    effects = _effects_file(run, dictionary)
    if sort in EFFECT_COLUMNS and effects is None:
        raise UserError(f"dictionary {dictionary!r} has no ablation effects yet; run "
                        f"`python -m backend intervene effects --run {run} --dict {dictionary}`")
    extra = ""
    if effects is not None:  # the effect columns are there only when the file is (a LEFT JOIN: NULL where not computed)
        source = (f"(SELECT s.*, e.loss_change_peak, e.loss_change_after FROM {source} s "
                  f"LEFT JOIN read_parquet(?) e ON e.feature = s.feature)")
        sources.append(effects)
        extra = ", loss_change_peak, loss_change_after"
    where, params = _filters(density_min, density_max, label_query, alive, labelled, _domain_filter(run, dictionary, domain))
    direction = "DESC" if descending else "ASC"
    order = f'"{sort}" {direction} NULLS LAST' + ("" if sort == "feature" else ", feature ASC")
    sql = (f"SELECT feature, label, density, max_act, mean_act, "
           f"array_to_string(list_slice(top_logit_tokens, 1, 3), ', ') AS top_logits{extra} "
           f"FROM {source}{where} ORDER BY {order} LIMIT ? OFFSET ?")
    df = _query_features(sql, [*sources, *params, limit, offset], labels if by_label else _NO_LABELS)
    if not by_label and len(labels) and len(df):
        got = labels.by_feature
        df["label"] = [got[f][0] if f in got else lab for f, lab in zip(df["feature"].tolist(), df["label"].tolist())]
    return df


def _domain_filter(run: str | Path, dictionary: str, domain: str | None) -> tuple[str, str] | None:
    if domain is None:
        return None
    p = _dict_dir(run, dictionary) / DOMAINS
    if not p.is_file():
        raise UserError(f"dictionary {dictionary!r} has no feature domains yet; run "
                        f"`python -m backend domains --run {run} --dict {dictionary}`")
    return str(p), str(domain)


def _effects_file(run: str | Path, dictionary: str) -> str | None:
    p = _dict_dir(run, dictionary) / EFFECTS
    return str(p) if p.is_file() else None


def count_features(run: str | Path, dictionary: str, density_min: float | None = None, density_max: float | None = None,
                   label_query: str | None = None, alive: bool | None = None, labelled: bool | None = None,
                   domain: str | None = None) -> int:
    """Number of features passing the same filters as list_features."""
    path = store_file(run, dictionary, FEATURES)
    labels = _current(run, dictionary) if (label_query or labelled is not None) else _NO_LABELS
    where, params = _filters(density_min, density_max, label_query, alive, labelled, _domain_filter(run, dictionary, domain))
    sql = f"SELECT count(*) FROM {_features_source(path, labels)}{where}"
    return int(_query_features(sql, [path, *params], labels, fetch="rows")[0][0])


def feature_densities(run: str | Path, dictionary: str) -> np.ndarray:
    """Density of every feature, indexed by feature id (float64 [d_sae])."""
    path = store_file(run, dictionary, FEATURES)
    return query_numpy("SELECT density FROM read_parquet(?) ORDER BY feature", [path])["density"].astype(np.float64)


def random_feature(run: str | Path, dictionary: str, alive: bool = True, seed: int | None = None) -> int:
    """A random feature id (only firing ones when alive); reproducible with a seed."""
    path = store_file(run, dictionary, FEATURES)
    where = " WHERE n_fires > 0" if alive else ""
    ids = query_numpy(f"SELECT feature FROM read_parquet(?){where}", [path])["feature"]
    if len(ids) == 0:
        raise UserError(f"dictionary {dictionary!r} has no {'live ' if alive else ''}features")
    return int(np.random.default_rng(seed).choice(np.sort(ids)))


# --------------------------------------------------------------------------- token windows


class _RunTokens:
    """Token ids of a whole run in token_index order, with a vocabulary table and the source of each sequence."""

    def __init__(self, path: str, ctx_len: int):
        data = query_numpy("SELECT token_index, token_id FROM read_parquet(?)", [path])
        idx, ids = data["token_index"], data["token_id"]
        if len(idx) == 0 or len(idx) % ctx_len or not np.array_equal(idx, np.arange(len(idx))):
            raise ValueError("tokens.parquet is not one row per token in token_index order")
        vocab = query_numpy("SELECT DISTINCT token_id, token_str FROM read_parquet(?)", [path])
        table = np.full(int(vocab["token_id"].max()) + 1, "", dtype=object)
        table[vocab["token_id"]] = vocab["token_str"]
        if len(np.unique(vocab["token_id"])) != len(vocab["token_id"]):
            raise ValueError("token_str is not a function of token_id")
        self.ids = ids.astype(np.uint16 if len(table) <= 65536 else np.int32)
        self.vocab = table
        src = query_numpy("SELECT seq, source FROM read_parquet(?) WHERE pos = 0 ORDER BY seq", [path])
        self.sources = np.asarray(src["source"], dtype=object)
        self.n = len(idx)


_token_cache = FileVersionCache(TOKEN_CACHE_RUNS)


def _run_tokens(run: str | Path, meta: dict) -> _RunTokens | None:
    """The cached token ids of a run, or None when it is too large (or not in the expected layout)."""
    path = Path(run) / TOKENS
    if not path.is_file():
        raise UserError(f"run {run} has no {TOKENS}")
    key = file_key(path)
    toks = _token_cache.get(key)
    if toks is not MISSING:
        return toks
    n = int(meta.get("n_tokens") or meta["n_seqs"] * meta["ctx_len"])
    toks = None
    if n <= TOKEN_CACHE_MAX:
        try:
            toks = _RunTokens(str(path), int(meta["ctx_len"]))
        except ValueError:
            toks = None
    _token_cache.put(key, toks)
    return toks


def window_bounds(centres: np.ndarray, ctx_len: int, before: int, after: int) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive [lo, hi] token-index windows around each centre, clipped to the centre's sequence."""
    start = (centres // ctx_len) * ctx_len
    lo = np.maximum(centres - max(0, int(before)), start)
    hi = np.minimum(centres + max(0, int(after)), start + ctx_len - 1)
    return lo, hi


def token_windows(run: str | Path, meta: dict, centres: np.ndarray, before: int, after: int) -> list[dict]:
    """The window around each centre token index (`window_bounds`): a dict of `token_indices`, `tokens`
    (strings) and `source` per centre, in the order given. `meta` is the run's run.json (`load_run`)."""
    T = int(meta["ctx_len"])
    centres = np.asarray(centres, dtype=np.int64)
    lo, hi = window_bounds(centres, T, before, after)
    toks = _run_tokens(run, meta)
    out = []
    if toks is not None:
        for a, b in zip(lo.tolist(), hi.tolist()):
            out.append({"token_indices": list(range(a, b + 1)), "tokens": toks.vocab[toks.ids[a:b + 1]].tolist(),
                        "source": toks.sources[a // T] if a // T < len(toks.sources) else ""})
        return out
    wanted = np.unique(np.concatenate([np.arange(a, b + 1) for a, b in zip(lo, hi)])) if len(lo) else np.zeros(0, np.int64)
    got = query_numpy("SELECT token_index, token_str, source FROM read_parquet(?) "
                      "WHERE token_index IN (SELECT unnest(?::BIGINT[])) ORDER BY token_index",
                      [str(Path(run) / TOKENS), wanted.tolist()])
    pos = {int(t): i for i, t in enumerate(got["token_index"])}
    for a, b in zip(lo.tolist(), hi.tolist()):
        rows = [pos[t] for t in range(a, b + 1) if t in pos]
        out.append({"token_indices": [int(got["token_index"][r]) for r in rows],
                    "tokens": [str(got["token_str"][r]) for r in rows],
                    "source": str(got["source"][rows[0]]) if rows else ""})
    return out


def tokens_window(run: str | Path, token_index: int, before: int = DEFAULT_BEFORE, after: int = DEFAULT_AFTER) -> pd.DataFrame:
    """DataFrame[token_index, seq, pos, token_str, source] around token_index, never crossing its sequence."""
    meta = load_run(run)
    t = _check_token(meta, token_index)
    lo, hi = window_bounds(np.array([t]), int(meta["ctx_len"]), before, after)
    path = Path(run) / TOKENS
    if not path.is_file():
        raise UserError(f"run {run} has no {TOKENS}")
    return query_df("SELECT token_index, seq, pos, token_str, CAST(source AS VARCHAR) AS source FROM read_parquet(?) "
                    "WHERE token_index BETWEEN ? AND ? ORDER BY token_index", [str(path), int(lo[0]), int(hi[0])])


def _check_token(meta: dict, token_index) -> int:
    n = int(meta.get("n_tokens") or meta["n_seqs"] * meta["ctx_len"])
    try:
        t = int(token_index)
    except (TypeError, ValueError):
        raise UserError(f"token index must be an integer, not {token_index!r}") from None
    if not 0 <= t < n:
        raise UserError(f"no token {token_index} (this run has tokens 0..{n - 1})")
    return t


def _window_acts(acts_path: str, feature: int, windows: list[dict]) -> list[list[float]]:
    """This feature's activation on every token of each window (0 where it does not fire)."""
    wanted = sorted({t for w in windows for t in w["token_indices"]})
    if not wanted:
        return [[] for _ in windows]
    got = query_numpy("SELECT token_index, value FROM read_parquet(?) WHERE feature = ? "
                      "AND token_index BETWEEN ? AND ? AND token_index IN (SELECT unnest(?::BIGINT[]))",
                      [acts_path, feature, wanted[0], wanted[-1], wanted])
    val = dict(zip(got["token_index"].tolist(), got["value"].astype(np.float64).tolist()))
    return [[val.get(t, 0.0) for t in w["token_indices"]] for w in windows]


def context_from_window(win: dict, acts: list[float], centre: int, value: float) -> dict:
    """A context dict as `context()` returns it, from one of `token_windows`' windows, the feature's activation on
    each of its tokens and the centre (which must lie in the window) with its activation `value`."""
    return {"tokens": win["tokens"], "token_indices": win["token_indices"], "acts": acts,
            "peak": win["token_indices"].index(centre), "value": float(value), "source": win["source"],
            "token_index": int(centre)}


def context(run: str | Path, dictionary: str, feature: int, token_index: int,
            before: int = DEFAULT_BEFORE, after: int = DEFAULT_AFTER) -> dict:
    """The window around token_index with this feature's activation on each token.

    Returns tokens, token_indices, acts, peak (position of token_index in the window), value (the
    activation at token_index), source.
    """
    meta = load_run(run)
    f = check_feature(run, dictionary, feature)
    acts_path = store_file(run, dictionary, FEATURE_ACTS)
    t = _check_token(meta, token_index)
    win = token_windows(run, meta, np.array([t]), before, after)[0]
    acts = _window_acts(acts_path, f, [win])[0]
    return context_from_window(win, acts, t, acts[win["token_indices"].index(t)])


# --------------------------------------------------------------------------- the feature page


def _plain(v):
    """DuckDB/NumPy values -> plain Python (lists stay lists)."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _dashboard_rows(fpath: str, ctx_path: str, f: int) -> tuple[dict | None, list[tuple]]:
    """Feature f's row of features.parquet (None if absent) and its (group, rank, token_index, value) contexts,
    from the in-memory tables (backend/store/feature_rows.py), or from DuckDB for a dictionary too large to hold."""
    try:
        table, contexts = feature_rows.feature_table(fpath), feature_rows.context_table(ctx_path)
    except (OSError, KeyError, ValueError, pa.ArrowException) as e:  # damaged, truncated or a foreign schema
        raise unreadable([fpath, ctx_path], e) from None
    if table is not None and contexts is not None:
        return table.row(f), contexts.rows(f)
    with _cursor([fpath, ctx_path]) as con:
        cur = con.execute("SELECT * FROM read_parquet(?) WHERE feature = ?", [fpath, f])
        names = [d[0] for d in cur.description]
        row = cur.fetchone()
        ctx = con.execute('SELECT "group", rank, token_index, value FROM read_parquet(?) WHERE feature = ? '
                          'ORDER BY "group", rank', [ctx_path, f]).fetchall()
    return (None if row is None else {k: _plain(v) for k, v in zip(names, row)}), ctx


def feature_dashboard(run: str | Path, dictionary: str, feature: int,
                      before: int = DEFAULT_BEFORE, after: int = DEFAULT_AFTER) -> dict:
    """Everything a feature page shows: the features.parquet row as a dict plus `contexts`
    {"top": [ctx, ...], "q1": [...], ..., "q5": [...]}, each ctx as `context()` returns it plus `rank`."""
    meta = load_run(run)
    fpath = store_file(run, dictionary, FEATURES)
    f = check_feature(run, dictionary, feature)
    acts_path = store_file(run, dictionary, FEATURE_ACTS)
    ctx_path = store_file(run, dictionary, CONTEXTS)
    out, ctx = _dashboard_rows(fpath, ctx_path, f)
    if out is None:
        raise UserError(f"no feature {feature} in {fpath}")
    out["label_version"] = 0  # 0: the label (if any) is features.parquet's, not a version in labels.duckdb
    mine = _current(run, dictionary).by_feature.get(f)
    if mine is not None:
        out["label"], out["label_source"], out["label_version"] = mine
    centres = np.array([c[2] for c in ctx], dtype=np.int64)
    wins = token_windows(run, meta, centres, before, after)
    acts = _window_acts(acts_path, f, wins)
    groups: dict[str, list[dict]] = {g: [] for g in GROUPS}
    for (g, rank, t, v), w, a in zip(ctx, wins, acts):
        c = context_from_window(w, a, int(t), v)
        c["rank"] = int(rank)
        groups.setdefault(g, []).append(c)
    out["contexts"] = groups
    return out
