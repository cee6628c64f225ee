"""Export and import of labels and validation verdicts as CSV or JSON (`python -m backend labels ...`).

Labels export one row per feature and version: dictionary, feature id, version, text, notes, author,
time, source, score (detection F1 of that version when known) and the human precision/recall of the
validations of that version. Verdicts export one row per judged context. JSON is a list of row
objects with ISO times, so the same rows load back either way.

Import only appends (label versions get the next free numbers in the target store, keeping their
author, source, score and time) and skips rows already present, so re-importing a file is harmless.
A file that cannot be read, or a row that is not a label or a verdict, is one `UserError`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import pandas as pd

from backend.common.atomic import atomic_path
from backend.common.errors import UserError
from backend.common.layout import CFG_JSON, dict_dir, dictionary_names, load_run
from backend.common.names import check_dict_name, check_output
from backend.store.label_store import VERDICT_COLUMNS, LabelStore

Format = Literal["csv", "json"]
FORMATS = get_args(Format)
LABEL_EXPORT_COLUMNS = ["dict_name", "feature", "version", "text", "notes", "author", "created_at", "source", "score",
                        "human_precision", "human_recall", "human_f1", "n_verdicts"]
LABEL_REQUIRED = ("dict_name", "feature", "text", "author")


@dataclass
class ExportConfig:
    """What `python -m backend labels export` writes (the defaults of `export` too)."""

    format: Format = "csv"
    """csv (opens in any spreadsheet) or json (a list of row objects); both load back with `labels import`."""
    what: Literal["labels", "verdicts"] = "labels"
    """Every label version, or the validation verdicts."""


def label_rows(run: str | Path, dict_name: str | None = None) -> pd.DataFrame:
    """Every label version (LABEL_EXPORT_COLUMNS), with the human scores of the validations of that version."""
    ls = LabelStore(run)
    lab = ls.all_versions(dict_name)
    v = ls.verdicts(dict_name)
    if lab.empty:
        return pd.DataFrame(columns=LABEL_EXPORT_COLUMNS)
    from backend.store.label_store import human_precision_recall

    parts = []
    for d, g in v.groupby("dict_name") if len(v) else []:
        h = human_precision_recall(g).rename(columns={"label_version": "version", "precision": "human_precision",
                                                      "recall": "human_recall", "f1": "human_f1", "n_items": "n_verdicts"})
        parts.append(h.assign(dict_name=d)[["dict_name", "feature", "version", "human_precision", "human_recall",
                                            "human_f1", "n_verdicts"]])
    if parts:
        hum = pd.concat(parts)
        hum["feature"], hum["version"] = hum["feature"].astype("int64"), hum["version"].astype("int64")
        lab = lab.astype({"feature": "int64", "version": "int64"}).merge(hum, on=["dict_name", "feature", "version"], how="left")
    for c in LABEL_EXPORT_COLUMNS:
        if c not in lab:
            lab[c] = math.nan
    lab["n_verdicts"] = lab["n_verdicts"].fillna(0).astype(int)
    return lab[LABEL_EXPORT_COLUMNS]


def export(run: str | Path, out: str | Path, fmt: str = ExportConfig.format, dict_name: str | None = None,
           what: str = ExportConfig.what) -> int:
    """Write labels (or verdicts) of a run to `out`; returns the number of rows."""
    if fmt not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if not Path(run).is_dir():
        raise UserError(f"run folder {run} does not exist")
    if what == "labels":
        df = label_rows(run, dict_name)
    elif what == "verdicts":
        df = LabelStore(run).verdicts(dict_name, latest=False)[VERDICT_COLUMNS]
    else:
        raise UserError(f"can export labels or verdicts, not {what!r}")
    out = check_output(out, "--out", folder=False)
    with atomic_path(out) as tmp:
        if fmt == "csv":
            df.to_csv(tmp, index=False, date_format="%Y-%m-%dT%H:%M:%S.%f")
        else:
            tmp.write_text(df.to_json(orient="records", date_format="iso", date_unit="us", indent=1) + "\n")
    return len(df)


def read_rows(path: str | Path) -> tuple[list[dict], set[str]]:
    """(rows, column names) of an export file (.csv, or .json: a list of objects or {"labels"|"verdicts": [...]})."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no file {path}")
    kind = path.suffix.lower().lstrip(".")
    try:
        if kind == "csv":
            df = pd.read_csv(path, dtype={"text": str, "notes": str, "author": str, "annotator": str, "dict_name": str,
                                          "source": str}, keep_default_na=False, na_values={"score": [""]})
            return df.to_dict("records"), set(df.columns)
        if kind == "json":
            obj = json.loads(path.read_text())
            if isinstance(obj, dict):
                obj = obj.get("labels") or obj.get("verdicts") or []
            if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
                raise UserError(f"{path} is not a list of label or verdict rows")
            return obj, set().union(*(r.keys() for r in obj))
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise UserError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    raise UserError(f"{path}: expected a .csv or .json file")


def check_targets(run: str | Path, rows: list[dict], ls: LabelStore) -> None:
    """Every row names a dictionary of the run (a folder with cfg.json, or a name the label file already holds,
    e.g. an archived one) and, where the dictionary is on disk, one of its features; else a UserError naming
    the first bad row. Checked before anything is written."""
    sizes: dict[str, int | None] = {}
    known = None
    for i, r in enumerate(rows):
        name, feature = r.get("dict_name"), r.get("feature")
        if not isinstance(name, str) or not name:
            continue  # the row's own checks report it
        if name not in sizes:
            check_dict_name(name, new=False)
            cfg = dict_dir(run, name) / CFG_JSON
            if cfg.is_file():
                sizes[name] = _d_sae(cfg)
            else:
                known = set(ls.dictionary_names()) if known is None else known
                if name not in known:
                    have = ", ".join(dictionary_names(run)) or "none"
                    raise UserError(f"row {i + 1}: no dictionary {name!r} in {run} (it has: {have}); "
                                    "pass --dict NAME to import into another one")
                sizes[name] = None
        n = sizes[name]
        f = _int_or_none(feature)
        if n is not None and f is not None and not 0 <= f < n:
            raise UserError(f"row {i + 1}: dictionary {name!r} has features 0..{n - 1}, not {feature}")


def _d_sae(cfg_path: Path) -> int | None:
    try:
        d_sae = json.loads(cfg_path.read_text()).get("d_sae")
    except (ValueError, AttributeError):
        return None
    return d_sae if isinstance(d_sae, int) and not isinstance(d_sae, bool) else None


def _int_or_none(v) -> int | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) and f.is_integer() else None


def import_file(run: str | Path, path: str | Path, dict_name: str | None = None) -> tuple[str, int, int]:
    """Append the labels or verdicts of an export file to a run's store; returns (kind, rows read, rows added).

    `dict_name` fills in the dictionary of rows that do not name one.
    """
    load_run(run)  # a folder that is not a run gets no labels.duckdb
    rows, cols = read_rows(path)
    if not rows and not cols:
        return "labels", 0, 0  # an empty JSON list
    if dict_name:
        rows = [dict(r, dict_name=r.get("dict_name") or dict_name) for r in rows]
        cols.add("dict_name")
    ls = LabelStore(run)
    if "dict_name" in cols:
        check_targets(run, rows, ls)
    if {"annotator", "fits"} <= cols:
        missing = [c for c in VERDICT_COLUMNS if c != "created_at" and c not in cols]
        if missing:
            raise UserError(f"{path}: verdict rows lack {', '.join(missing)}")
        return "verdicts", len(rows), ls.import_verdicts(rows)
    missing = [c for c in LABEL_REQUIRED if c not in cols]
    if missing:
        raise UserError(f"{path}: label rows lack {', '.join(missing)} (need {', '.join(LABEL_REQUIRED)})")
    clean = []
    for r in rows:
        r = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for k in ("text", "notes"):
            if r.get(k) is None:
                r[k] = ""
        clean.append(r)
    return "labels", len(rows), ls.import_labels(clean)
