"""Reading the evaluation suite's results (`python -m backend evaluate`) as tables for the app and the README.

`dictionaries/<d>/evaluation.json` (backend/evalsuite/suite.py writes it; docs/CONTRACTS.md) holds one record
per dictionary; these functions flatten the records of several dictionaries into DataFrames: one row per
dictionary with a column per measure, probing accuracy against k, the NMI histograms, the stability pairs,
and one feature's top tags from `feature_tags.parquet`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from backend.common.atomic import read_json
from backend.common.errors import UserError
from backend.common.layout import EVALUATION_JSON, FEATURE_TAGS, dict_dir, dictionary_names


def read_evaluation(run: str | Path, name: str) -> dict:
    """The evaluation record of dictionaries/<name>, {} when `evaluate` has not run on it."""
    p = dict_dir(run, name) / EVALUATION_JSON
    if not p.is_file():
        return {}
    try:
        return read_json(p)
    except ValueError as e:
        raise UserError(f"{p} is not valid JSON: {e}") from None


def _records(run, dicts) -> list[dict]:
    names = dictionary_names(run) if dicts is None else list(dicts)
    return [r for r in (read_evaluation(run, n) for n in names) if r]


def _get(d: dict, *path, default=None):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def summary_row(r: dict) -> dict:
    """One dictionary's headline figures (None where a part has not run)."""
    p = r.get("parts", {})
    ks = [str(k) for k in _get(p, "probing", "ks", default=[1, 2, 5, 20])]
    row = {"dictionary": r["dictionary"], "kind": r.get("display_kind", r.get("kind"))}
    row.update({k: v for k, v in (p.get("core") or {}).items()})
    for cond in ("clean", "spliced", "spliced_error"):
        row[f"task_{cond}"] = _get(p, "tasks", cond, "accuracy")
    row["task_retained"] = _get(p, "tasks", "spliced", "retained")
    row["task_retained_low"] = _get(p, "tasks", "spliced", "retained_low")
    row["task_retained_high"] = _get(p, "tasks", "spliced", "retained_high")
    row["task_control_retained"] = _get(p, "tasks", "spliced_error", "retained")
    for task in ("pos", "source"):
        for k in ks:
            row[f"probe_{task}_k{k}"] = _get(p, "probing", task, "mean", k)
    for cat in ("pos", "source"):
        for who, key in (("dictionary", ""), ("random directions", "_random"), ("residual basis", "_residual")):
            row[f"nmi_{cat}_above{key}"] = _get(p, "nmi", cat, who, "fraction_above")
            row[f"nmi_{cat}_median{key}"] = _get(p, "nmi", cat, who, "median")
    for where in ("answer", "pooled"):
        for pair in ("paraphrase", "unrelated"):
            row[f"stability_{where}_{pair}"] = _get(p, "stability", "dictionary", where, pair)
    row["seconds"] = sum(v for v in (r.get("seconds") or {}).values())
    return row


def raw_row(r: dict) -> dict:
    """The baselines that do not depend on the dictionary: probes on the raw activations (basis coordinates, top k
    and all d_in), stability of the residual basis."""
    p = r.get("parts", {})
    ks = [str(k) for k in _get(p, "probing", "ks", default=[1, 2, 5, 20])]
    row = {"dictionary": "raw activations", "kind": "baseline"}
    for task in ("pos", "source"):
        for k in ks + ["all"]:
            row[f"probe_{task}_k{k}"] = _get(p, "probing", "raw", task, "mean", k)
    for where in ("answer", "pooled"):
        for pair in ("paraphrase", "unrelated"):
            row[f"stability_{where}_{pair}"] = _get(p, "stability", "residual basis", where, pair)
    return row


def evaluation_table(run: str | Path, dicts=None, baseline: bool = True) -> pd.DataFrame:
    """One row per evaluated dictionary (of `dicts`, default all) and, with `baseline`, a row for the raw
    activations; empty when none was evaluated."""
    recs = _records(run, dicts)
    rows = [summary_row(r) for r in recs]
    if baseline and recs:
        with_raw = [r for r in recs if _get(r, "parts", "probing", "raw") or _get(r, "parts", "stability")]
        if with_raw:
            rows.append(raw_row(with_raw[0]))
    return pd.DataFrame(rows)


def probing_curves(run: str | Path, dicts=None) -> pd.DataFrame:
    """[dictionary, kind, task, k, accuracy]: mean probe accuracy per k (raw activations as their own rows, k "all"
    = every coordinate)."""
    rows, raw_done = [], False
    for r in _records(run, dicts):
        pr = _get(r, "parts", "probing") or {}
        for task in ("pos", "source"):
            for k, acc in (_get(pr, task, "mean") or {}).items():
                rows.append({"dictionary": r["dictionary"], "kind": r.get("display_kind"), "task": task, "k": k, "accuracy": acc})
            if not raw_done:
                for k, acc in (_get(pr, "raw", task, "mean") or {}).items():
                    rows.append({"dictionary": "raw activations", "kind": "baseline", "task": task, "k": k, "accuracy": acc})
        raw_done = raw_done or bool(pr.get("raw"))
    return pd.DataFrame(rows, columns=["dictionary", "kind", "task", "k", "accuracy"])


def nmi_histograms(run: str | Path, dicts=None) -> pd.DataFrame:
    """[dictionary, kind, category, who, bin_left, bin_right, fraction]: the distribution of per-unit best NMI for the
    dictionary's alive features and its two baselines."""
    rows = []
    for r in _records(run, dicts):
        for cat, by_who in (_get(r, "parts", "nmi") or {}).items():
            if not isinstance(by_who, dict):
                continue
            for who, s in by_who.items():
                if not isinstance(s, dict) or not s.get("hist_counts"):
                    continue
                total = max(1, sum(s["hist_counts"]))
                for i, c in enumerate(s["hist_counts"]):
                    rows.append({"dictionary": r["dictionary"], "kind": r.get("display_kind"), "category": cat,
                                 "who": who, "bin_left": s["hist_edges"][i], "bin_right": s["hist_edges"][i + 1],
                                 "fraction": c / total})
    return pd.DataFrame(rows, columns=["dictionary", "kind", "category", "who", "bin_left", "bin_right", "fraction"])


def stability_table(run: str | Path, dicts=None) -> pd.DataFrame:
    """[dictionary, kind, where, pair, jaccard]: mean top-10 Jaccard, paraphrase and unrelated pairs."""
    rows = []
    for r in _records(run, dicts):
        st = _get(r, "parts", "stability") or {}
        for who in ("dictionary", "residual basis"):
            for where in ("answer", "pooled"):
                for pair in ("paraphrase", "unrelated"):
                    v = _get(st, who, where, pair)
                    if v is not None:
                        name = r["dictionary"] if who == "dictionary" else "residual basis"
                        rows.append({"dictionary": name, "kind": r.get("display_kind") if who == "dictionary" else "baseline",
                                     "where": where, "pair": pair, "jaccard": v})
    df = pd.DataFrame(rows, columns=["dictionary", "kind", "where", "pair", "jaccard"])
    return df.drop_duplicates(["dictionary", "where", "pair"])


def feature_tags(run: str | Path, name: str, feature: int) -> pd.DataFrame:
    """[category, tag, nmi, rank] of one feature (its top POS tags and source families), empty without the file."""
    p = dict_dir(run, name) / FEATURE_TAGS
    if not p.is_file():
        return pd.DataFrame(columns=["category", "tag", "nmi", "rank"])
    df = pd.read_parquet(p, filters=[("feature", "==", int(feature))])
    return df[["category", "tag", "nmi", "rank"]].reset_index(drop=True)


def feature_tags_table(run: str | Path, name: str) -> pd.DataFrame:
    """[feature, category, tag, nmi, rank] of every feature, sorted by feature (each feature's rows in file order),
    empty without the file: what the explorer keeps in memory to slice one feature's tags out per page."""
    p = dict_dir(run, name) / FEATURE_TAGS
    if not p.is_file():
        return pd.DataFrame({"feature": pd.Series(dtype="int64"), "category": pd.Series(dtype="object"),
                             "tag": pd.Series(dtype="object"), "nmi": pd.Series(dtype="float64"),
                             "rank": pd.Series(dtype="int64")})
    df = pd.read_parquet(p, columns=["feature", "category", "tag", "nmi", "rank"])
    return df.sort_values("feature", kind="stable").reset_index(drop=True)
