"""Side-by-side comparison of the dictionaries of one run: `python -m backend compare --run R --dicts a,b,c`.

Two questions a researcher asks of dictionaries trained on the same activations:
- Do they find the same features? For every pair, decoder rows are matched one-to-one by the
  Hungarian algorithm on their cosine similarity (scipy `linear_sum_assignment`, maximising the
  total cosine), and we report the fraction of matched pairs above a cosine threshold (0.7, as
  in the feature-universality literature). Greedy nearest neighbours would let many features of
  one dictionary claim the same feature of the other; a one-to-one matching does not.
- What does each cost and buy? Held-out `l0`, `explained_variance`, `dead_fraction`,
  `ce_loss_score` (from each dictionary's metrics.json), the analytic encode FLOPs per token and
  the measured encode wall time per token on the same held-out tokens (an SAE encoder is one
  matmul; sparse coding and inference-time optimisation iterate, and this is where it shows).

Results go to `<run>/comparisons/`: `summary.json` (the last comparison) and one
`<a>__<b>.parquet` per pair (`feature_a`, `feature_b`, `cos`, sorted by cosine, descending) that
the Compare page reads for its matched-features view.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from backend.common.atomic import atomic_path, write_json
from backend.common.errors import UserError
from backend.common.layout import (
    CFG_JSON,
    COMPARISONS_DIR,
    dict_dir,
    dictionary_names,
    load_run,
    read_metrics,
)

SUMMARY = "summary.json"
MATCH_THRESHOLD = 0.7  # decoder cosine above which two matched features count as "the same"
METRIC_KEYS = ("l0", "explained_variance", "explained_variance_all", "dead_fraction", "ce_loss_score", "delta_ce", "kl_div")


@dataclass
class CompareConfig:
    """What `python -m backend compare` compares (the defaults of `compare_dictionaries` too)."""

    dicts: str = "all"
    """Comma-separated dictionary names of the run, or all."""
    threshold: float = MATCH_THRESHOLD
    """Decoder cosine above which matched features count as shared."""
    time_tokens: int = 4096
    """Held-out tokens used to time each encoder."""


def comparisons_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / COMPARISONS_DIR


def pair_path(run_dir: str | Path, a: str, b: str) -> Path:
    return comparisons_dir(run_dir) / f"{a}__{b}.parquet"


def parse_dict_names(run_dir: str | Path, spec: str | list[str]) -> list[str]:
    """'a,b,c' (or a list) -> names that exist in the run; 'all' -> every dictionary. UserError otherwise."""
    have = dictionary_names(run_dir)
    names = have if spec == "all" else [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    missing = [n for n in names if n not in have]
    if missing:
        raise UserError(f"no dictionary {', '.join(map(repr, missing))} in {run_dir}; have: {', '.join(have) or 'none'}")
    if len(set(names)) < 2:
        raise UserError(f"compare needs at least two different dictionaries, got {names}")
    return list(dict.fromkeys(names))


def unit_rows(W: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(W.detach().float(), dim=1)


def match_decoders(W_a: torch.Tensor, W_b: torch.Tensor) -> pd.DataFrame:
    """One-to-one matching of decoder rows W_a [n_a, d], W_b [n_b, d] maximising the total cosine.

    Returns min(n_a, n_b) rows (`feature_a`, `feature_b`, `cos`) sorted by cosine, descending.
    """
    if W_a.shape[1] != W_b.shape[1]:
        raise UserError(f"decoders live in different spaces (d_in {W_a.shape[1]} vs {W_b.shape[1]})")
    from scipy.optimize import linear_sum_assignment

    cos = (unit_rows(W_a) @ unit_rows(W_b).T).numpy()  # [n_a, n_b]
    rows, cols = linear_sum_assignment(cos, maximize=True)
    c = cos[rows, cols]
    order = np.argsort(-c, kind="stable")
    return pd.DataFrame({"feature_a": rows[order].astype(np.int32), "feature_b": cols[order].astype(np.int32),
                         "cos": c[order].astype(np.float32)})


def matched_fraction(matches: pd.DataFrame, threshold: float = MATCH_THRESHOLD) -> float:
    return float((matches["cos"] > threshold).mean()) if len(matches) else 0.0


@torch.no_grad()
def encode_seconds_per_token(dictionary, x: torch.Tensor, batch: int = 1024, repeats: int = 2) -> float:
    """Best-of-`repeats` wall time of encoding x [N, d_in] in batches, per token (after one warm-up batch)."""
    dictionary.encode(x[:batch])
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(0, len(x), batch):
            dictionary.encode(x[i:i + batch])
        best = min(best, time.perf_counter() - t)
    return best / max(len(x), 1)


def dictionary_row(run_dir: Path, name: str, dictionary, x_time: torch.Tensor) -> dict:
    """One row of the comparison table: metrics.json values, FLOPs, measured encode time."""
    metrics = read_metrics(run_dir, name)
    flops = dictionary.flops_per_token()
    return {
        "dictionary": name,
        "kind": dictionary.cfg.get("kind") or dictionary.cfg.get("architecture"),
        "d_sae": int(dictionary.d_sae),
        **{k: metrics.get(k) for k in METRIC_KEYS},
        "encode_flops_per_token": int(flops["encode"]),
        "decode_flops_per_token": int(flops["decode"]),
        "encode_us_per_token": round(1e6 * encode_seconds_per_token(dictionary, x_time), 3),
        "train_flops": dictionary.cfg.get("train_flops"),
    }


def compare_dictionaries(run_dir: str | Path, names: str | list[str], threshold: float = CompareConfig.threshold,
                         time_tokens: int = CompareConfig.time_tokens, progress: bool = True) -> dict:
    """Compare the named dictionaries of a run; writes comparisons/summary.json and one parquet per pair."""
    from backend.activations.activation_store import ActivationStore
    from backend.dictionaries import load_dictionary

    run_dir = Path(run_dir)
    load_run(run_dir)
    names = parse_dict_names(run_dir, names)
    if not 0 < threshold < 1:
        raise UserError(f"threshold must be in (0, 1), got {threshold}")
    dicts = {n: load_dictionary(dict_dir(run_dir, n)) for n in names}
    x, _ = ActivationStore(run_dir).load_split("test", max_tokens=time_tokens)
    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    rows = []
    for n, d in dicts.items():
        rows.append(dictionary_row(run_dir, n, d, x))
        if progress:
            print(f"compare: {n}: encode {rows[-1]['encode_us_per_token']:.1f} us/token")
    pairs = []
    for a, b in itertools.combinations(names, 2):
        t = time.perf_counter()
        m = match_decoders(dicts[a].W_dec, dicts[b].W_dec)
        with atomic_path(pair_path(run_dir, a, b)) as tmp:
            m.to_parquet(tmp, index=False)
        pairs.append({"a": a, "b": b, "n_matched": len(m), "frac_above": matched_fraction(m, threshold),
                      "mean_cos": float(m["cos"].mean()), "seconds": round(time.perf_counter() - t, 2)})
    summary = {"run": run_dir.name, "threshold": threshold, "time_tokens": int(len(x)),
               "torch_threads": torch.get_num_threads(), "dictionaries": rows, "pairs": pairs}
    write_json(comparisons_dir(run_dir) / SUMMARY, summary)
    return summary


def load_matches(run_dir: str | Path, a: str, b: str) -> pd.DataFrame | None:
    """The stored matching of a pair (either order, columns oriented as (a, b)), or None if not computed."""
    p = pair_path(run_dir, a, b)
    if p.is_file():
        return pd.read_parquet(p)
    q = pair_path(run_dir, b, a)
    if q.is_file():
        m = pd.read_parquet(q)
        return m.rename(columns={"feature_a": "feature_b", "feature_b": "feature_a"})[["feature_a", "feature_b", "cos"]]
    return None


def matches_for(run_dir: str | Path, a: str, b: str) -> pd.DataFrame:
    """The matching of a pair: stored if `compare` wrote it, else computed now (about a second at d_sae 4608)."""
    from backend.dictionaries import load_dictionary

    m = load_matches(run_dir, a, b)
    if m is not None:
        return m
    for n in (a, b):
        if not (dict_dir(run_dir, n) / CFG_JSON).is_file():
            raise UserError(f"no dictionary {n!r} in {run_dir}")
    return match_decoders(load_dictionary(dict_dir(run_dir, a)).W_dec, load_dictionary(dict_dir(run_dir, b)).W_dec)


def format_summary(summary: dict) -> str:
    """The comparison as two plain-text tables."""
    cols = ["dictionary", "kind", "d_sae", *METRIC_KEYS, "encode_flops_per_token", "encode_us_per_token"]
    t = pd.DataFrame(summary["dictionaries"])[cols]
    p = pd.DataFrame(summary["pairs"])[["a", "b", "frac_above", "mean_cos"]]
    p = p.rename(columns={"frac_above": f"frac_cos>{summary['threshold']}"})
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        return f"{t.to_string(index=False)}\n\nmatched features (Hungarian on decoder cosine):\n{p.to_string(index=False)}"
