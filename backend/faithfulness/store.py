"""Faithfulness results on disk, and the summary the CLI prints and the app shows.

    <run>/faithfulness/<dict>/<task>.parquet   one row per (item, q): the feature side of this dictionary and the
                                               token side (IG, random tokens), docs/CONTRACTS.md "Faithfulness"
    <run>/faithfulness/<dict>/summary.json     {config: {task: settings}, summary: rows per (task, method)}
    <run>/faithfulness/.tokens/<task>.parquet  the token side alone (it depends on the model, not the dictionary):
                                               computed once per task and settings, reused by every dictionary
    <run>/faithfulness/aopc.html               the AOPC chart of every dictionary measured (Plotly)

Summary per task and method (features | ig | random_features | random_tokens): AOPC comprehensiveness and
sufficiency (the per-item mean over the q's, averaged over items) with percentile bootstrap 95% intervals over
items, clean accuracy, accuracy with the top 5% removed and the drop in points with its paired interval. The
"all tasks" rows pool every item (each item weighs the same). Every file is written atomically.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from backend.common.atomic import atomic_path, read_json, write_json
from backend.common.errors import UserError
from backend.common.layout import check_dict_name
from backend.tasks import bootstrap

FAITH_DIR = "faithfulness"
TOKENS_DIR = ".tokens"  # a dictionary name never starts with "." (layout.check_dict_name)
SUMMARY = "summary.json"
CHART = "aopc.html"
METHODS = ("features", "ig", "random_features", "random_tokens")
ANCHORX = {"features": 27.4, "ig": 11.8}  # top-5% ablation accuracy drop in points (Shah 2025)
TOP_Q = 5.0  # the q of the ablated-accuracy comparison
# method -> (comprehensiveness column, sufficiency column, still-correct column, clean p column, clean-correct column)
COLUMNS = {
    "features": ("comp_features", "suff_features", "correct_features", "p_clean", "correct_clean"),
    "random_features": ("comp_random_features", "suff_random_features", "correct_random_features", "p_clean", "correct_clean"),
    "ig": ("comp_ig", "suff_ig", "correct_ig", "p_clean_tokens", "correct_clean_tokens"),
    "random_tokens": ("comp_random_tokens", "suff_random_tokens", "correct_random_tokens", "p_clean_tokens",
                      "correct_clean_tokens"),
}


def faith_dir(run: str | Path, dict_name: str | None = None) -> Path:
    base = Path(run) / FAITH_DIR
    return base if dict_name is None else base / check_dict_name(dict_name)


def task_file(folder: Path, task: str) -> Path:
    return folder / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', task)}.parquet"


def write_parquet(df: pd.DataFrame, dest: Path) -> Path:
    with atomic_path(dest) as tmp:
        df.reset_index(drop=True).to_parquet(tmp, index=False)
    return dest


# ------------------------------------------------------------------ the token side, cached per task


def cached_token_side(run: str | Path, task: str, key: dict) -> pd.DataFrame | None:
    """The cached token-side rows of `task` if they were made with the same settings `key`, else None."""
    path = task_file(Path(run) / FAITH_DIR / TOKENS_DIR, task)
    meta = path.with_suffix(".json")
    if not (path.is_file() and meta.is_file()) or read_json(meta) != json.loads(json.dumps(key)):
        return None
    return pd.read_parquet(path)


def save_token_side(run: str | Path, task: str, key: dict, rows: pd.DataFrame) -> None:
    path = task_file(Path(run) / FAITH_DIR / TOKENS_DIR, task)
    write_parquet(rows, path)
    write_json(path.with_suffix(".json"), key)


# ------------------------------------------------------------------ summary


def _aopc(df: pd.DataFrame, col: str) -> np.ndarray:
    """Per-item AOPC: the mean of `col` over the item's q rows [n_items]."""
    return df.groupby("item", sort=True)[col].mean().to_numpy(np.float64)


def summarize_method(df: pd.DataFrame, method: str, n_resamples: int = bootstrap.N_RESAMPLES) -> dict:
    """One summary row of one task's (or pooled) rows for one method."""
    comp, suff, right, _, clean = COLUMNS[method]
    row = {"method": method, "n_items": int(df["item"].nunique())}
    for name, col in (("comp", comp), ("suff", suff)):
        m, lo, hi = bootstrap.bootstrap_ci(_aopc(df, col), n_resamples)
        row.update({f"aopc_{name}": m, f"aopc_{name}_low": lo, f"aopc_{name}_high": hi})
    top = df[np.isclose(df["q"], TOP_Q)].sort_values("item")
    if len(top):
        a, b = top[clean].to_numpy(np.float64), top[right].to_numpy(np.float64)
        p = bootstrap.paired_bootstrap(a, b, n_resamples)
        row.update(acc_clean=float(a.mean()), acc_top5=float(b.mean()), drop_top5=-100 * p["diff"],
                   drop_top5_low=-100 * p["diff_high"], drop_top5_high=-100 * p["diff_low"])
    if method == "ig" and "ig_error" in df:
        err = df.groupby("item")["ig_error"].first()
        row.update(ig_error_median=float(err.median()), ig_error_max=float(err.max()))
    return row


def summarize(items: pd.DataFrame, n_resamples: int = bootstrap.N_RESAMPLES) -> pd.DataFrame:
    """Rows per (task, method), then the pooled "all tasks" rows when there are several tasks."""
    rows = []
    groups = [(t, g) for t, g in items.groupby("task", sort=False)]
    if len(groups) > 1:
        pooled = items.assign(item=items["task"] + "/" + items["item"].astype(str))
        groups.append(("all tasks", pooled))
    for task, g in groups:
        for method in METHODS:
            rows.append({"task": task, **summarize_method(g, method, n_resamples)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ writing and reading one dictionary's results


def write_results(run: str | Path, dict_name: str, items: pd.DataFrame, config: dict,
                  n_resamples: int = bootstrap.N_RESAMPLES) -> Path:
    """Write each task's rows, then summary.json over every task file of the dictionary (earlier tasks included)."""
    folder = faith_dir(run, dict_name)
    for task, g in items.groupby("task", sort=False):
        write_parquet(g, task_file(folder, task))
    old = read_json(folder / SUMMARY).get("config", {}) if (folder / SUMMARY).is_file() else {}
    every = read_items(run, dict_name)
    summary = summarize(every, n_resamples)
    write_json(folder / SUMMARY, {"config": {**old, **config},
                                  "summary": summary.astype(object).where(summary.notna(), None).to_dict("records")})
    return folder


def read_items(run: str | Path, dict_name: str) -> pd.DataFrame:
    """Every task's rows of one dictionary (UserError when there are none)."""
    files = sorted(faith_dir(run, dict_name).glob("*.parquet"))
    if not files:
        raise UserError(f"no faithfulness results for {dict_name!r} in {run}; run `python -m backend faithfulness "
                        f"--run {run} --dict {dict_name} --task ...` first")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def measured_dictionaries(run: str | Path) -> list[str]:
    """Dictionaries of the run with faithfulness results."""
    base = Path(run) / FAITH_DIR
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".") and any(p.glob("*.parquet")))


def read_all(run: str | Path) -> pd.DataFrame:
    """Every dictionary's rows (columns `dictionary` and `kind` tell them apart); empty when none were measured."""
    frames = [read_items(run, d) for d in measured_dictionaries(run)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_summary(run: str | Path) -> pd.DataFrame:
    """Summary rows of every measured dictionary, with `dictionary` and `kind` columns."""
    frames = []
    for d in measured_dictionaries(run):
        p = faith_dir(run, d) / SUMMARY
        if p.is_file():
            s = read_json(p)
            kinds = {c.get("kind") for c in s.get("config", {}).values() if isinstance(c, dict)} - {None}
            frames.append(pd.DataFrame(s.get("summary") or []).assign(dictionary=d, kind=",".join(sorted(kinds)) or None))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def curves(items: pd.DataFrame) -> pd.DataFrame:
    """Mean comprehensiveness and sufficiency per (dictionary, task, method, q): the AOPC chart's points. The token
    side (ig, random_tokens) is one model's, so it is taken once per task (from the first dictionary)."""
    rows = []
    for (d, task), g in items.groupby(["dictionary", "task"], sort=False):
        for method in METHODS:
            comp, suff, right, *_ = COLUMNS[method]
            m = g.groupby("q", sort=True).agg(comp=(comp, "mean"), suff=(suff, "mean"), acc=(right, "mean")).reset_index()
            rows.append(m.assign(dictionary=d, task=task, method=method))
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    if out.empty:
        return out
    first = out.groupby("task")["dictionary"].transform("first")
    token = out["method"].isin(["ig", "random_tokens"])
    return out[~token | (out["dictionary"] == first)].reset_index(drop=True)


def task_retention(run: str | Path) -> pd.DataFrame:
    """Task accuracy clean / spliced / spliced with the error term per (dictionary, task), from the run's `tasks
    eval` results (<run>/tasks/<dict>/summary.json); empty when none evaluated a dictionary."""
    from backend.tasks.evaluate import TASKS_SUBDIR

    base = Path(run) / TASKS_SUBDIR
    rows = []
    for folder in sorted(base.iterdir()) if base.is_dir() else []:
        p = folder / "summary.json"
        if not p.is_file():
            continue
        by = {}
        for r in read_json(p).get("summary") or []:
            by.setdefault(r["task"], {})[r["condition"]] = r
        for task, conds in by.items():
            if "spliced" not in conds or "clean" not in conds:
                continue  # a clean-only evaluation: no dictionary to retain anything
            row = {"dictionary": folder.name, "task": task, "n_items": conds["clean"].get("n_items"),
                   "chance": conds["clean"].get("chance")}
            for c in ("clean", "spliced", "spliced_error"):
                if c in conds:
                    row.update({c: conds[c]["accuracy"], f"{c}_low": conds[c]["acc_low"], f"{c}_high": conds[c]["acc_high"]})
            s = conds["spliced"]
            row.update(retained=s.get("retained"), retained_low=s.get("retained_low"), retained_high=s.get("retained_high"),
                       mcnemar_p=s.get("mcnemar_p"))
            rows.append(row)
    return pd.DataFrame(rows)
