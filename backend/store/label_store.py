"""The label store: every label of a run with its full history, validation verdicts and scores.

Labels are the users' work, so they live in one DuckDB file per run (`<run>/labels.duckdb`) and
are never updated in place: a save appends a version, a restore appends a copy of an old one.

    ls = LabelStore(run_dir)
    v = ls.save("relu-l1", 12, "closing brackets", "ada")        # -> 1, then 2, ... per feature
    ls.current("relu-l1")                                         # latest version of every feature
    ls.history("relu-l1", 12); ls.restore("relu-l1", 12, 1, "ada")

Concurrency: DuckDB lets one process hold a database file for writing, and a process that has it
open at all (even read-only) locks the others out of writing. So every call opens a short
connection, does its work in one transaction and closes it, and when another process holds the
lock it retries with backoff for `LOCK_TIMEOUT` seconds before raising `UserError`. Writers open
read-write, readers read-only; in one process (Streamlit sessions are threads) calls are
serialised by a lock, because DuckDB refuses a read-only and a read-write connection to the same
file at once in one process. A commit is in the write-ahead log when `save` returns, so a writer
killed with SIGKILL afterwards loses nothing, and DuckDB replays the log when the file next opens.

Validation (the Validate page): an annotator judges held-out contexts of a feature as fitting the
label or not, without being told which ones activate. `add_verdicts` records one such session;
`human_scores` turns the verdicts into precision (of the contexts judged to fit, the fraction that
activate) and recall (of the activating contexts, the fraction judged to fit); `cohen_kappa`
measures two annotators' agreement on the items both judged (Cohen 1960).
"""

from __future__ import annotations

import math
import random
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from backend.common.errors import UserError, write_failure
from backend.common.layout import LABELS_DB

SOURCES = ("human", "auto-deterministic", "auto-llm")
LOCK_TIMEOUT = 8.0  # seconds a call waits for another process's lock before giving up
MAX_TEXT = 2000  # characters of a label; notes may be longer
MAX_NOTES = 20000
AGREE_MIN = 0.8  # a feature two annotators judged is "agreed" when they agree on this fraction of shared items

LABEL_COLUMNS = ["feature", "version", "text", "notes", "author", "source", "score", "created_at"]
SCORE_COLUMNS = ["feature", "version", "scorer", "precision", "recall", "f1", "n_pos", "n_neg", "created_at"]
VERDICT_COLUMNS = ["dict_name", "feature", "label_version", "annotator", "token_index", "activating", "fits", "created_at"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    dict_name VARCHAR NOT NULL, feature INTEGER NOT NULL, version INTEGER NOT NULL,
    text VARCHAR NOT NULL, notes VARCHAR NOT NULL, author VARCHAR NOT NULL, source VARCHAR NOT NULL,
    score DOUBLE, created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (dict_name, feature, version));
CREATE TABLE IF NOT EXISTS scores (
    dict_name VARCHAR NOT NULL, feature INTEGER NOT NULL, version INTEGER NOT NULL, scorer VARCHAR NOT NULL,
    precision DOUBLE, recall DOUBLE, f1 DOUBLE, n_pos INTEGER, n_neg INTEGER, created_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS verdicts (
    dict_name VARCHAR NOT NULL, feature INTEGER NOT NULL, label_version INTEGER NOT NULL, annotator VARCHAR NOT NULL,
    token_index BIGINT NOT NULL, activating BOOLEAN NOT NULL, fits BOOLEAN NOT NULL, created_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS proposals (
    dict_name VARCHAR NOT NULL, feature INTEGER NOT NULL, label_version INTEGER NOT NULL, annotator VARCHAR NOT NULL,
    text VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS archives (
    archived_as VARCHAR NOT NULL, dict_name VARCHAR NOT NULL, cfg_sha256 VARCHAR, n_rows INTEGER NOT NULL,
    reason VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL);
"""
KEYED_TABLES = ("labels", "scores", "verdicts", "proposals")  # every table keyed by dict_name
ARCHIVE_COLUMNS = ["archived_as", "dict_name", "cfg_sha256", "n_rows", "reason", "created_at"]

_process_lock = threading.RLock()  # one connection to a label file at a time in this process (see module doc)


def now() -> datetime:
    """UTC wall clock without tzinfo (stored as TIMESTAMP, read back as naive UTC)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _is_lock_error(e: Exception) -> bool:
    msg = str(e).lower()
    return "lock" in msg or "different configuration" in msg


def connect(path: Path, read_only: bool, timeout: float | None = None) -> duckdb.DuckDBPyConnection:
    """Open the label file, retrying with exponential backoff while another process holds its lock."""
    deadline = time.monotonic() + (LOCK_TIMEOUT if timeout is None else timeout)
    delay = 0.005
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except (duckdb.IOException, duckdb.ConnectionException) as e:
            if not _is_lock_error(e):
                raise UserError(f"cannot open label store {path}: {str(e).splitlines()[0]}") from None
            if time.monotonic() > deadline:
                raise UserError(f"label store {path} is busy (another process holds it); try again") from None
        time.sleep(delay * (0.5 + random.random()))  # jitter: writers that collided do not retry in step
        delay = min(delay * 2, 0.25)


def _text(value, what: str, limit: int, required: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise UserError(f"{what} must be text, not {type(value).__name__}")
    value = value.replace("\x00", "")
    if required and not value.strip():
        raise UserError(f"{what} is empty")
    if len(value) > limit:
        raise UserError(f"{what} is longer than {limit} characters")
    return value


def _feature(value) -> int:
    """A feature id from user input (int, integral float, or digits); anything else is a UserError."""
    f = None
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        f = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        f = int(value.strip())
    elif isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        f = int(value)
    if f is None:
        raise UserError(f"feature must be an integer, not {value!r}")
    if f < 0:
        raise UserError(f"feature must be >= 0, not {f}")
    return f


def _score(value) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise UserError(f"score must be a number, not {value!r}") from None
    if not math.isfinite(s):
        raise UserError(f"score must be finite, not {value!r}")
    return s


def _time(value) -> datetime | None:
    """A stored time (naive UTC) from a datetime or ISO text; None when missing; a UserError when not a time."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        t = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise UserError(f"created_at is not a time: {value!r}") from None
    if pd.isna(t):
        return None
    if t.tzinfo is not None:
        t = t.tz_convert("UTC").tz_localize(None)
    return t.to_pydatetime()


def _label_row(row: dict) -> dict:
    """Validated, normalised copy of one label version to save."""
    try:
        dict_name, feature, text, author = row["dict_name"], row["feature"], row["text"], row["author"]
    except KeyError as e:
        raise UserError(f"a label needs {e.args[0]!r}") from None
    source = row.get("source") or "human"
    if source not in SOURCES:
        raise UserError(f"label source must be one of {', '.join(SOURCES)}, not {source!r}")
    created = _time(row.get("created_at"))
    return {"dict_name": _text(dict_name, "dictionary name", 200, required=True), "feature": _feature(feature),
            "text": _text(text, "label text", MAX_TEXT), "notes": _text(row.get("notes"), "notes", MAX_NOTES),
            "author": _text(author, "author name", 200, required=True).strip(), "source": source,
            "score": _score(row.get("score")), "created_at": created}


class LabelStore:
    """Append-only labels, scores and validation verdicts of one run (`<run>/labels.duckdb`)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LABELS_DB

    # ------------------------------------------------------------------ plumbing

    def exists(self) -> bool:
        return self.path.is_file()

    def _write(self, work):
        """Run `work(con)` in one transaction on a fresh read-write connection; the file is created on first write.
        A write the disk refuses (full, file-size limit, read-only) is a UserError with nothing saved, and a label
        file this call was creating is removed again, so a half-made database never blocks later calls."""
        if not self.run_dir.is_dir():
            raise UserError(f"run folder {self.run_dir} does not exist")
        with _process_lock:
            created = not self.path.exists()
            try:
                return self._transaction(work)
            except BaseException as e:
                why = write_failure(e)
                if why is None:
                    raise
                if created:
                    for p in (self.path, self.path.with_name(self.path.name + ".wal")):
                        p.unlink(missing_ok=True)
                raise UserError(f"cannot write label store {self.path}: {why}; nothing was saved") from None

    def _transaction(self, work):
        con = connect(self.path, read_only=False)
        try:
            con.execute("BEGIN TRANSACTION")
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    con.execute(stmt)
            out = work(con)
            con.execute("COMMIT")
            return out
        except BaseException:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass
            raise
        finally:
            con.close()

    def _read(self, sql: str, params: list, columns: list[str]) -> pd.DataFrame:
        """A read-only query; an empty frame with `columns` before the file (or the table) exists."""
        if not self.exists():
            return pd.DataFrame(columns=columns)
        with _process_lock:
            con = connect(self.path, read_only=True)
            try:
                return con.execute(sql, params).df()
            except duckdb.CatalogException:
                return pd.DataFrame(columns=columns)
            finally:
                con.close()

    # ------------------------------------------------------------------ labels

    def save(self, dict_name: str, feature: int, text: str, author: str, source: str = "human", notes: str = "",
             score: float | None = None) -> int:
        """Append a version of a feature's label; returns its version number (1, 2, ... per feature)."""
        row = _label_row({"dict_name": dict_name, "feature": feature, "text": text, "author": author, "source": source,
                          "notes": notes, "score": score})
        return self._write(lambda con: self._insert(con, [row])[0])

    def save_many(self, rows: list[dict]) -> int:
        """Append many versions (same keys as `save` plus `dict_name`) in one transaction; returns how many."""
        clean = [_label_row(r) for r in rows]
        if not clean:
            return 0
        return len(self._write(lambda con: self._insert(con, clean)))

    @staticmethod
    def _insert(con, rows: list[dict]) -> list[int]:
        """Insert rows, numbering each feature's new versions after its latest; returns the versions."""
        t = now()
        keys = sorted({(r["dict_name"], r["feature"]) for r in rows})
        latest = dict(((d, f), v) for d, f, v in con.execute(
            "SELECT l.dict_name, l.feature, max(l.version) FROM labels l "
            "JOIN (SELECT unnest(?::VARCHAR[]) AS dict_name, unnest(?::INTEGER[]) AS feature) k USING (dict_name, feature) "
            "GROUP BY ALL", [[k[0] for k in keys], [k[1] for k in keys]]).fetchall())
        versions, data = [], []
        for r in rows:
            k = (r["dict_name"], r["feature"])
            latest[k] = latest.get(k, 0) + 1
            versions.append(latest[k])
            data.append((r["dict_name"], r["feature"], latest[k], r["text"], r["notes"], r["author"], r["source"],
                         r["score"], r["created_at"] or t))
        frame = pd.DataFrame(data, columns=["dict_name", "feature", "version", "text", "notes", "author", "source",
                                            "score", "created_at"])
        frame["feature"] = frame["feature"].astype("int32")
        frame["version"] = frame["version"].astype("int32")
        frame["score"] = frame["score"].astype("float64")
        con.register("incoming_labels", frame)
        con.execute("INSERT INTO labels SELECT dict_name, feature, version, text, notes, author, source, score, "
                    "CAST(created_at AS TIMESTAMP) FROM incoming_labels")
        con.unregister("incoming_labels")
        return versions

    # score of a version: the one saved with it, else the latest F1 a scorer recorded for it (scores written
    # in one call share a time: then the scorer name decides, so the answer never depends on row order)
    _LABEL_SELECT = ("SELECT l.feature, l.version, l.text, l.notes, l.author, l.source, "
                     "coalesce(l.score, s.f1) AS score, l.created_at FROM labels l "
                     "LEFT JOIN (SELECT dict_name, feature, version, arg_max(f1, (created_at, scorer)) AS f1 FROM scores "
                     "GROUP BY ALL) s USING (dict_name, feature, version) ")

    def current(self, dict_name: str, features=None) -> pd.DataFrame:
        """Latest version of each labelled feature: DataFrame[feature, version, text, notes, author, source, score, created_at]."""
        sql = self._LABEL_SELECT + "WHERE l.dict_name = ?"
        params: list = [str(dict_name)]
        if features is not None:
            sql += " AND l.feature IN (SELECT unnest(?::INTEGER[]))"
            params.append([_feature(f) for f in features])
        sql += " QUALIFY row_number() OVER (PARTITION BY l.feature ORDER BY l.version DESC) = 1 ORDER BY l.feature"
        return self._read(sql, params, LABEL_COLUMNS)

    def history(self, dict_name: str, feature: int) -> pd.DataFrame:
        """Every version of one feature's label, newest first (same columns as `current`)."""
        return self._read(self._LABEL_SELECT + "WHERE l.dict_name = ? AND l.feature = ? ORDER BY l.version DESC",
                          [str(dict_name), _feature(feature)], LABEL_COLUMNS)

    def all_versions(self, dict_name: str | None = None) -> pd.DataFrame:
        """Every version of every label (with dict_name), oldest first: what `export` writes."""
        sql = self._LABEL_SELECT.replace("SELECT l.feature", "SELECT l.dict_name, l.feature")
        params: list = []
        if dict_name is not None:
            sql += "WHERE l.dict_name = ? "
            params.append(str(dict_name))
        return self._read(sql + "ORDER BY l.dict_name, l.feature, l.version", params, ["dict_name", *LABEL_COLUMNS])

    def restore(self, dict_name: str, feature: int, version: int, author: str) -> int:
        """Append a copy of an old version (its text, source and score; notes say "restored vN"); returns the new version."""
        f, v = _feature(feature), int(version)
        author = _text(author, "author name", 200, required=True).strip()

        def work(con):
            row = con.execute("SELECT text, notes, source, score FROM labels WHERE dict_name = ? AND feature = ? "
                              "AND version = ?", [str(dict_name), f, v]).fetchone()
            if row is None:
                raise UserError(f"feature {f} of {dict_name!r} has no label version {v}")
            text, notes, source, score = row
            note = f"restored v{v}" + (f"; {notes}" if notes else "")
            return self._insert(con, [{"dict_name": str(dict_name), "feature": f, "text": text, "notes": note[:MAX_NOTES],
                                       "author": author, "source": source, "score": score, "created_at": None}])[0]

        return self._write(work)

    def import_labels(self, rows: list[dict]) -> int:
        """Append label versions from another store (export files): each row keeps its author, source, score
        and time but gets the next version number here; a row identical to a version already present (same
        text, notes, author, source and time) is skipped, so importing a file twice adds nothing. Returns
        how many versions were added."""
        clean = []
        for i, r in enumerate(rows):
            try:
                clean.append((_label_row(r), r.get("version")))
            except UserError as e:
                raise UserError(f"row {i + 1}: {e}") from None
        if not clean:
            return 0
        clean.sort(key=lambda c: (c[0]["dict_name"], c[0]["feature"], _num(c[1]), c[0]["created_at"] or now()))

        def work(con):
            keys = sorted({(r["dict_name"], r["feature"]) for r, _ in clean})
            have = set(con.execute(
                "SELECT l.dict_name, l.feature, l.text, l.notes, l.author, l.source, l.created_at FROM labels l "
                "JOIN (SELECT unnest(?::VARCHAR[]) AS dict_name, unnest(?::INTEGER[]) AS feature) k USING (dict_name, feature)",
                [[k[0] for k in keys], [k[1] for k in keys]]).fetchall())
            new = []
            for r, _ in clean:
                ident = (r["dict_name"], r["feature"], r["text"], r["notes"], r["author"], r["source"], r["created_at"])
                if r["created_at"] is not None and ident in have:
                    continue
                have.add(ident)
                new.append(r)
            return len(self._insert(con, new)) if new else 0

        return self._write(work)

    # ------------------------------------------------------------------ archiving a replaced dictionary

    def rows_of(self, dict_name: str) -> int:
        """Rows of labels, scores, verdicts and proposals that belong to `dict_name` (0 without a label file)."""
        total = 0
        for table in KEYED_TABLES:
            df = self._read(f"SELECT count(*) AS n FROM {table} WHERE dict_name = ?", [str(dict_name)], ["n"])
            total += int(df["n"].iloc[0]) if len(df) else 0
        return total

    def rename_dictionary(self, old: str, new: str, cfg_sha256: str | None = None, reason: str = "") -> int:
        """Re-key every row of `old` to `new` in one transaction (labels, scores, verdicts, proposals) and record it
        in `archives` (with the cfg.json hash of the dictionary the rows describe); returns the rows moved.
        This is how a replaced dictionary's labels are archived (`backend.store.archive`): nothing else edits keys."""
        old, new = str(old), str(new)

        def work(con):
            n = sum(con.execute(f"UPDATE {table} SET dict_name = ? WHERE dict_name = ?", [new, old]).fetchone()[0]
                    for table in KEYED_TABLES)
            con.execute("INSERT INTO archives VALUES (?, ?, ?, ?, ?, ?)", [new, old, cfg_sha256, n, reason, now()])
            return int(n)

        return self._write(work)

    def archives(self) -> pd.DataFrame:
        """Every archiving of a dictionary's labels: DataFrame[archived_as, dict_name, cfg_sha256, n_rows, reason,
        created_at], oldest first."""
        return self._read("SELECT * FROM archives ORDER BY created_at", [], ARCHIVE_COLUMNS)

    def dictionary_names(self) -> list[str]:
        """Names that have rows in the label file (dictionaries on disk or not, archived ones included)."""
        union = " UNION ".join(f"SELECT DISTINCT dict_name FROM {t}" for t in ("labels", "verdicts"))
        df = self._read(union, [], ["dict_name"])
        return sorted(df["dict_name"].astype(str).tolist())

    # ------------------------------------------------------------------ automatic scores

    def add_scores(self, rows: list[dict]) -> int:
        """Record detection scores of label versions (keys dict_name, feature, version, scorer, precision, recall,
        f1, n_pos, n_neg) in one transaction; returns how many."""
        t = now()
        data = []
        for r in rows:
            try:
                data.append((_text(r["dict_name"], "dictionary name", 200, required=True), _feature(r["feature"]),
                             int(r["version"]), _text(r["scorer"], "scorer", 200, required=True),
                             _score(r.get("precision")), _score(r.get("recall")), _score(r.get("f1")),
                             None if r.get("n_pos") is None else int(r["n_pos"]),
                             None if r.get("n_neg") is None else int(r["n_neg"]), t))
            except KeyError as e:
                raise UserError(f"a score needs {e.args[0]!r}") from None
        if not data:
            return 0

        def work(con):
            con.executemany("INSERT INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", data)
            return len(data)

        return self._write(work)

    def scores(self, dict_name: str) -> pd.DataFrame:
        """Latest score per (feature, scorer): DataFrame[feature, version, scorer, precision, recall, f1, n_pos, n_neg, created_at]."""
        return self._read("SELECT feature, version, scorer, precision, recall, f1, n_pos, n_neg, created_at FROM scores "
                          "WHERE dict_name = ? QUALIFY row_number() OVER (PARTITION BY feature, scorer "
                          "ORDER BY created_at DESC, version DESC) = 1 ORDER BY feature, scorer",
                          [str(dict_name)], SCORE_COLUMNS)

    # ------------------------------------------------------------------ validation

    def add_verdicts(self, dict_name: str, feature: int, annotator: str, verdicts: list[dict],
                     label_version: int | None = None, proposal: str = "") -> int:
        """Record one validation of a feature: each verdict is {token_index, activating, fits}.

        `label_version` is the version that was judged (default: the current one, 0 when unlabelled);
        a non-empty `proposal` is the annotator's better label, kept beside the verdicts (it does not
        become the label until someone saves it). Returns the number of verdicts written.
        """
        f = _feature(feature)
        annotator = _text(annotator, "annotator name", 200, required=True).strip()
        proposal = _text(proposal, "proposed label", MAX_TEXT).strip()
        items = []
        for v in verdicts:
            try:
                items.append((int(v["token_index"]), bool(v["activating"]), bool(v["fits"])))
            except KeyError as e:
                raise UserError(f"a verdict needs {e.args[0]!r}") from None
        if not items and not proposal:
            return 0
        t = now()

        def work(con):
            ver = label_version
            if ver is None:
                ver = con.execute("SELECT coalesce(max(version), 0) FROM labels WHERE dict_name = ? AND feature = ?",
                                  [str(dict_name), f]).fetchone()[0]
            rows = [(str(dict_name), f, int(ver), annotator, ti, act, fits, t) for ti, act, fits in items]
            if rows:
                con.executemany("INSERT INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            if proposal:
                con.execute("INSERT INTO proposals VALUES (?, ?, ?, ?, ?, ?)", [str(dict_name), f, int(ver), annotator, proposal, t])
            return len(rows)

        return self._write(work)

    def import_verdicts(self, rows: list[dict]) -> int:
        """Append verdict rows (VERDICT_COLUMNS) in one transaction, skipping ones already present; returns how many."""
        data = []
        for r in rows:
            try:
                created = _time(r.get("created_at")) or now()
                data.append((_text(r["dict_name"], "dictionary name", 200, required=True), _feature(r["feature"]),
                             int(r["label_version"]), _text(r["annotator"], "annotator name", 200, required=True).strip(),
                             int(r["token_index"]), _bool(r["activating"]), _bool(r["fits"]), created))
            except KeyError as e:
                raise UserError(f"a verdict needs {e.args[0]!r}") from None
            except (TypeError, ValueError) as e:
                raise UserError(f"bad verdict row: {e}") from None
        if not data:
            return 0

        def work(con):
            frame = pd.DataFrame(data, columns=VERDICT_COLUMNS)
            con.register("incoming_verdicts", frame)
            n = con.execute("SELECT count(*) FROM (SELECT * FROM incoming_verdicts EXCEPT SELECT * FROM verdicts)").fetchone()[0]
            con.execute("INSERT INTO verdicts SELECT i.dict_name, CAST(i.feature AS INTEGER), CAST(i.label_version AS INTEGER), "
                        "i.annotator, i.token_index, i.activating, i.fits, CAST(i.created_at AS TIMESTAMP) "
                        "FROM (SELECT * FROM incoming_verdicts EXCEPT SELECT * FROM verdicts) i")
            con.unregister("incoming_verdicts")
            return int(n)

        return self._write(work)

    def verdicts(self, dict_name: str | None = None, latest: bool = True) -> pd.DataFrame:
        """Verdicts (VERDICT_COLUMNS); with `latest`, only each annotator's last word on each item."""
        sql = "SELECT * FROM verdicts"
        params: list = []
        if dict_name is not None:
            sql += " WHERE dict_name = ?"
            params.append(str(dict_name))
        if latest:
            sql += (" QUALIFY row_number() OVER (PARTITION BY dict_name, feature, label_version, annotator, token_index "
                    "ORDER BY created_at DESC) = 1")
        return self._read(sql + " ORDER BY dict_name, feature, label_version, annotator, token_index", params,
                          VERDICT_COLUMNS)

    def proposals(self, dict_name: str, feature: int | None = None) -> pd.DataFrame:
        """Better labels annotators proposed while validating, newest first."""
        sql = "SELECT feature, label_version, annotator, text, created_at FROM proposals WHERE dict_name = ?"
        params: list = [str(dict_name)]
        if feature is not None:
            sql += " AND feature = ?"
            params.append(_feature(feature))
        return self._read(sql + " ORDER BY created_at DESC", params,
                          ["feature", "label_version", "annotator", "text", "created_at"])

    def human_scores(self, dict_name: str, features=None) -> pd.DataFrame:
        """Human precision/recall per (feature, label_version), all annotators pooled (their latest verdicts).

        DataFrame[feature, label_version, n_items, n_annotators, tp, fp, fn, tn, precision, recall, f1];
        precision is NaN when nothing was judged to fit, recall when nothing judged activated.
        """
        v = self.verdicts(dict_name)
        if features is not None:
            v = v[v["feature"].isin([_feature(f) for f in features])]
        return human_precision_recall(v)

    def cohen_kappa(self, annotator_a: str, annotator_b: str, dict_name: str | None = None) -> dict:
        """Agreement of two annotators on the items both judged (same feature, label version and context).

        Returns {"kappa", "n" (shared items), "agreement" (observed fraction)}; kappa is NaN with no shared
        item or when both always gave the same single answer (chance agreement 1).
        """
        v = self.verdicts(dict_name)
        key = ["dict_name", "feature", "label_version", "token_index"]
        a = v[v["annotator"] == annotator_a][key + ["fits"]]
        b = v[v["annotator"] == annotator_b][key + ["fits"]]
        both = a.merge(b, on=key, suffixes=("_a", "_b"))
        ya, yb = both["fits_a"].astype(bool).to_numpy(), both["fits_b"].astype(bool).to_numpy()
        return {"kappa": cohen_kappa(ya, yb), "n": int(len(both)),
                "agreement": float((ya == yb).mean()) if len(both) else float("nan")}

    def annotators(self, dict_name: str | None = None) -> list[str]:
        v = self.verdicts(dict_name)
        return sorted(v["annotator"].unique().tolist())

    def validation_status(self, dict_name: str) -> pd.DataFrame:
        """Per validated feature (its latest judged label version): DataFrame[feature, label_version, n_annotators,
        n_items, agreement, status] where status is "validated" (one annotator), "agreed" or "disputed" (two or
        more annotators agreeing on at least AGREE_MIN of their shared items, or not)."""
        v = self.verdicts(dict_name)
        cols = ["feature", "label_version", "n_annotators", "n_items", "agreement", "status"]
        if v.empty:
            return pd.DataFrame(columns=cols)
        v = v[v["label_version"] == v.groupby("feature")["label_version"].transform("max")]
        out = []
        for (f, ver), g in v.groupby(["feature", "label_version"]):
            wide = g.pivot_table(index="token_index", columns="annotator", values="fits", aggfunc="last")
            n_ann = wide.shape[1]
            agree = float("nan")
            if n_ann >= 2:
                pairs = []  # per item shared by >= 2 annotators: do they all say the same?
                for _, row in wide.iterrows():
                    vals = row.dropna().astype(bool)
                    if len(vals) >= 2:
                        pairs.append(vals.nunique() == 1)
                agree = float(np.mean(pairs)) if pairs else float("nan")
            status = "validated" if n_ann < 2 or math.isnan(agree) else ("agreed" if agree >= AGREE_MIN else "disputed")
            out.append((int(f), int(ver), n_ann, int(len(wide)), agree, status))
        return pd.DataFrame(out, columns=cols)

    def progress(self, dict_name: str, n_labelled: int | None = None) -> dict:
        """Counts for the progress view: validated, agreed, disputed features, verdicts and annotators."""
        st = self.validation_status(dict_name)
        v = self.verdicts(dict_name)
        out = {"validated": int(len(st)), "agreed": int((st["status"] == "agreed").sum()),
               "disputed": int((st["status"] == "disputed").sum()),
               "single": int((st["status"] == "validated").sum()), "verdicts": int(len(v)),
               "annotators": int(v["annotator"].nunique()) if len(v) else 0}
        if n_labelled is not None:
            out["labelled"] = int(n_labelled)
        return out

    def validation_queue(self, dict_name: str, annotator: str, features: list[int], seed: int = 0,
                         versions: dict[int, int] | None = None) -> list[int]:
        """Order in which to deal `features` to `annotator`: never-validated first, then ones only others judged
        (those give the shared items kappa needs); ones this annotator already judged are left out. Shuffled
        within each group with `seed`, so two annotators do not walk the same order. With `versions` (feature ->
        current label version), only verdicts on that version count: a relabelled feature is dealt again."""
        v = self.verdicts(dict_name)
        if versions is not None and len(v):
            cur = v["feature"].map(lambda f: versions.get(int(f), 0))
            v = v[v["label_version"] == cur]
        done_by = v.groupby("feature")["annotator"].agg(set).to_dict() if len(v) else {}
        rng = random.Random(f"{seed}:{annotator}")
        fresh = [int(f) for f in features if int(f) not in done_by]
        others = [int(f) for f in features if int(f) in done_by and annotator not in done_by[int(f)]]
        rng.shuffle(fresh)
        rng.shuffle(others)
        return fresh + others


def _num(x) -> float:
    """Sort key of an optional version number (missing ones last)."""
    try:
        v = float(x)
        return v if math.isfinite(v) else math.inf
    except (TypeError, ValueError):
        return math.inf


def _bool(x) -> bool:
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    s = str(x).strip().lower()
    if s in ("true", "1", "yes", "t"):
        return True
    if s in ("false", "0", "no", "f"):
        return False
    raise ValueError(f"not a boolean: {x!r}")


def cohen_kappa(a, b) -> float:
    """Cohen's kappa of two raters' labels on the same items: (p_o - p_e) / (1 - p_e).

    p_o is the observed agreement, p_e the agreement expected by chance from each rater's label
    frequencies. NaN with no items, or when p_e is 1 (both raters used one and the same label throughout).
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError("the two raters must judge the same items")
    if len(a) == 0:
        return float("nan")
    cats = np.union1d(a, b)
    po = float((a == b).mean())
    pe = float(sum((a == c).mean() * (b == c).mean() for c in cats))
    if pe >= 1.0:
        return float("nan")
    return (po - pe) / (1.0 - pe)


def human_precision_recall(v: pd.DataFrame) -> pd.DataFrame:
    """Pool verdict rows (activating = truth, fits = the annotator's call) per (feature, label_version)."""
    cols = ["feature", "label_version", "n_items", "n_annotators", "tp", "fp", "fn", "tn", "precision", "recall", "f1"]
    if v.empty:
        return pd.DataFrame(columns=cols)
    act, fits = v["activating"].astype(bool), v["fits"].astype(bool)
    w = v.assign(tp=act & fits, fp=~act & fits, fn=act & ~fits, tn=~act & ~fits)
    g = w.groupby(["feature", "label_version"])
    out = g[["tp", "fp", "fn", "tn"]].sum().astype(int)
    out["n_items"] = g["token_index"].nunique()
    out["n_annotators"] = g["annotator"].nunique()
    with np.errstate(invalid="ignore", divide="ignore"):
        out["precision"] = out["tp"] / (out["tp"] + out["fp"]).replace(0, np.nan)
        out["recall"] = out["tp"] / (out["tp"] + out["fn"]).replace(0, np.nan)
        out["f1"] = 2 * out["precision"] * out["recall"] / (out["precision"] + out["recall"])
    return out.reset_index()[cols]
