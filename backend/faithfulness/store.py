"""Faithfulness results on disk, and the summary the CLI prints and the app shows.

    <run>/faithfulness/<dict>/<task>.parquet   one row per (item, q): the feature side of this dictionary and the
                                               token side (IG, random tokens), docs/CONTRACTS.md "Faithfulness"
    <run>/faithfulness/<dict>/summary.json     {config: {task: settings}, summary: rows per (task, method)}
    <run>/faithfulness/.tokens/<task>.parquet  the token side alone (it depends on the model, not the dictionary):
                                               computed once per task and settings, reused by every dictionary
    <run>/faithfulness/.occlusion/<task>.parquet  the occlusion side alone, cached the same way; a dictionary measured
                                               before it existed reads it in (read_items), its files unchanged
    <run>/faithfulness/aopc.html               the AOPC chart of every dictionary measured (Plotly)

Summary per task and method (features | ig | occlusion | random_features | random_tokens): AOPC comprehensiveness and
sufficiency (the per-item mean over the q's, averaged over items) with percentile bootstrap 95% intervals over
items, clean accuracy, accuracy with the top 5% removed and the drop in points with its paired interval. The
"all tasks" rows pool every item (each item weighs the same); `paired` compares two methods item by item. Every
file is written atomically.
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
OCCLUSION_DIR = ".occlusion"
SUMMARY = "summary.json"
CHART = "aopc.html"
METHODS = ("features", "ig", "occlusion", "random_features", "random_tokens")
TOKEN_METHODS = ("ig", "occlusion", "random_tokens")  # the model's: the same for every dictionary
ANCHORX = {"features": 27.4, "ig": 11.8}  # top-5% ablation accuracy drop in points (Shah 2025)
TOP_Q = 5.0  # the q of the ablated-accuracy comparison
# method -> (comprehensiveness column, sufficiency column, still-correct column, clean p column, clean-correct column)
COLUMNS = {
    "features": ("comp_features", "suff_features", "correct_features", "p_clean", "correct_clean"),
    "random_features": ("comp_random_features", "suff_random_features", "correct_random_features", "p_clean", "correct_clean"),
    "ig": ("comp_ig", "suff_ig", "correct_ig", "p_clean_tokens", "correct_clean_tokens"),
    "occlusion": ("comp_occlusion", "suff_occlusion", "correct_occlusion", "p_clean_tokens", "correct_clean_tokens"),
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


def cached_token_side(run: str | Path, task: str, key: dict, folder: str = TOKENS_DIR) -> pd.DataFrame | None:
    """The cached rows of `task` in `folder` (TOKENS_DIR | OCCLUSION_DIR) if made with the same settings `key`, else None."""
    path = task_file(Path(run) / FAITH_DIR / folder, task)
    meta = path.with_suffix(".json")
    if not (path.is_file() and meta.is_file()) or read_json(meta) != json.loads(json.dumps(key)):
        return None
    return pd.read_parquet(path)


def save_token_side(run: str | Path, task: str, key: dict, rows: pd.DataFrame, folder: str = TOKENS_DIR) -> None:
    path = task_file(Path(run) / FAITH_DIR / folder, task)
    write_parquet(rows, path)
    write_json(path.with_suffix(".json"), key)


# ------------------------------------------------------------------ summary


def _aopc(df: pd.DataFrame, col: str) -> np.ndarray:
    """Per-item AOPC: the mean of `col` over the item's q rows [n_items]."""
    return df.groupby("item", sort=True)[col].mean().to_numpy(np.float64)


def has_method(df: pd.DataFrame, method: str) -> bool:
    """Whether `df` holds `method`'s columns with values (results made before occlusion existed have none)."""
    comp, *_ = COLUMNS[method]
    return comp in df and bool(df[comp].notna().any())


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


def summarize(items: pd.DataFrame, n_resamples: int = bootstrap.N_RESAMPLES, methods=METHODS) -> pd.DataFrame:
    """Rows per (task, method) of the `methods` the items hold, then the pooled "all tasks" rows when there are
    several tasks."""
    rows = []
    groups = [(t, g) for t, g in items.groupby("task", sort=False)]
    if len(groups) > 1:
        pooled = items.assign(item=items["task"] + "/" + items["item"].astype(str))
        groups.append(("all tasks", pooled))
    for task, g in groups:
        for method in methods:
            if has_method(g, method):
                rows.append({"task": task, **summarize_method(g, method, n_resamples)})
    return pd.DataFrame(rows)


def per_item_aopc(items: pd.DataFrame, method: str) -> pd.DataFrame:
    """[item key, comp, suff, correct_top5] of one method, one row per (task, item), sorted: what `paired` pairs."""
    comp, suff, right, *_ = COLUMNS[method]
    key = items["task"] + "/" + items["item"].astype(str)
    g = items.assign(key=key).groupby("key", sort=True)
    top = items[np.isclose(items["q"], TOP_Q)].assign(key=key).set_index("key")[right]
    return pd.DataFrame({"comp": g[comp].mean(), "suff": g[suff].mean()}).assign(correct_top5=top).reset_index()


def paired(items: pd.DataFrame, a: str, b: str, n_resamples: int = bootstrap.N_RESAMPLES) -> dict:
    """Method b against method a on the same items (per-item AOPC, and still correct with the top 5% removed):
    the mean per-item difference b - a with its paired percentile bootstrap 95% interval over items, and a p-value:
    the Wilcoxon signed-rank test (two-sided; NaN when every difference is zero) for the AOPCs, McNemar's exact test
    for the 0/1 still-correct column (key `<column>_p`)."""
    from scipy.stats import wilcoxon

    A, B = per_item_aopc(items, a), per_item_aopc(items, b)
    if A["key"].tolist() != B["key"].tolist():
        raise ValueError(f"{a} and {b} were measured on different items")
    out = {"a": a, "b": b, "n_items": len(A)}
    for col in ("comp", "suff", "correct_top5"):
        p = bootstrap.paired_bootstrap(A[col].to_numpy(), B[col].to_numpy(), n_resamples)
        d = B[col].to_numpy() - A[col].to_numpy()
        out.update({f"{col}_diff": p["diff"], f"{col}_diff_low": p["diff_low"], f"{col}_diff_high": p["diff_high"],
                    f"{col}_p": p["mcnemar_p"] if col == "correct_top5" else
                    float(wilcoxon(d).pvalue) if np.any(d != 0) else float("nan")})
    return out


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
    """Every task's rows of one dictionary (UserError when there are none), with the run's cached occlusion side
    read in where the dictionary's files were written before it existed."""
    files = sorted(faith_dir(run, dict_name).glob("*.parquet"))
    if not files:
        raise UserError(f"no faithfulness results for {dict_name!r} in {run}; run `python -m backend faithfulness "
                        f"--run {run} --dict {dict_name} --task ...` first")
    summary = faith_dir(run, dict_name) / SUMMARY
    config = read_json(summary).get("config", {}) if summary.is_file() else {}
    return pd.concat([_with_occlusion(run, pd.read_parquet(f), config) for f in files], ignore_index=True)


def _with_occlusion(run: str | Path, df: pd.DataFrame, config: dict) -> pd.DataFrame:
    """One task's rows with the occlusion columns from the run's cache when they lack them and the cache was made
    with the task's prompt format and q's (else unchanged)."""
    if "comp_occlusion" in df or df.empty:
        return df
    task = str(df["task"].iloc[0])
    cfg = config.get(task) or {}
    path = task_file(Path(run) / FAITH_DIR / OCCLUSION_DIR, task)
    if not (path.is_file() and path.with_suffix(".json").is_file()):
        return df
    key = read_json(path.with_suffix(".json"))
    if key.get("prompt_format") != cfg.get("prompt_format") or key.get("qs") != cfg.get("qs"):
        return df
    occl = pd.read_parquet(path)
    return df.merge(occl, on=["task", "item", "q"], how="left", validate="one_to_one")


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
            rows = pd.DataFrame(s.get("summary") or [])
            if len(rows) and "occlusion" not in set(rows["method"]):  # written before occlusion: from its cache
                rows = pd.concat([rows, summarize(read_items(run, d), methods=("occlusion",))], ignore_index=True)
            frames.append(rows.assign(dictionary=d, kind=",".join(sorted(kinds)) or None))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def curves(items: pd.DataFrame) -> pd.DataFrame:
    """Mean comprehensiveness and sufficiency per (dictionary, task, method, q): the AOPC chart's points. The token
    side (ig, occlusion, random_tokens) is one model's, so it is taken once per task (from the first dictionary)."""
    rows = []
    for (d, task), g in items.groupby(["dictionary", "task"], sort=False):
        for method in METHODS:
            if not has_method(g, method):
                continue
            comp, suff, right, *_ = COLUMNS[method]
            m = g.groupby("q", sort=True).agg(comp=(comp, "mean"), suff=(suff, "mean"), acc=(right, "mean")).reset_index()
            rows.append(m.assign(dictionary=d, task=task, method=method))
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    if out.empty:
        return out
    first = out.groupby("task")["dictionary"].transform("first")
    token = out["method"].isin(TOKEN_METHODS)
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
