"""Latency of the query layer (backend/store.py) on the synthetic store.

Build the store first (`python -m bench.make_synthetic_store`, ~1 min), then
    python -m bench.bench_store [--store bench/results/synthetic_store] [--n 200]
prints p50/p95/max of feature_dashboard over random features (target p95 < 50 ms), of one
context() window and of list_features pages (filtered, sorted, paginated) and count_features.
The first call of each kind is timed separately (cold: token-id cache, Parquet footers, the features and
contexts tables read into memory); `--duckdb-only` reads a feature's rows through DuckDB instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from backend.store import feature_rows
from backend.store import query as store

HERE = Path(__file__).resolve().parent


def timed(fn, *args, **kw) -> float:
    t = time.perf_counter()
    fn(*args, **kw)
    return (time.perf_counter() - t) * 1000


def report(name: str, ms: list[float]) -> None:
    a = np.asarray(ms)
    print(f"{name:34s} n={len(a):4d}  p50 {np.percentile(a, 50):7.1f} ms  p95 {np.percentile(a, 95):7.1f} ms  "
          f"max {a.max():7.1f} ms")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, default=HERE / "results" / "synthetic_store")
    ap.add_argument("--dict", default="synth")
    ap.add_argument("--n", type=int, default=200, help="random features for the dashboard")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--duckdb-only", action="store_true",
                    help="feature_dashboard reads features/contexts rows through DuckDB, not from memory (the old path)")
    a = ap.parse_args(argv)
    if a.duckdb_only:
        feature_rows.MAX_BYTES = 0  # nothing is held: every lookup falls back to DuckDB
    run = str(a.store)
    if not (a.store / "run.json").is_file():
        print(f"no store at {a.store}: run `python -m bench.make_synthetic_store` first", file=sys.stderr)
        return 2
    info = store.run_info(run)
    dens = store.feature_densities(run, a.dict)
    print(f"store: {run}  tokens {info['n_tokens']:,}  features {len(dens):,}  "
          f"L0 {dens.sum() * 1:.1f}  alive {(dens > 0).mean():.1%}")
    rng = np.random.default_rng(a.seed)
    alive = np.flatnonzero(dens > 0)
    feats = rng.choice(alive, a.n, replace=len(alive) < a.n)

    print(f"cold feature_dashboard (first call): {timed(store.feature_dashboard, run, a.dict, int(feats[0])):.1f} ms")
    dash = [timed(store.feature_dashboard, run, a.dict, int(f)) for f in feats]
    report("feature_dashboard", dash)
    n_ctx = [sum(len(v) for v in store.feature_dashboard(run, a.dict, int(f))["contexts"].values()) for f in feats[:5]]
    print(f"  (contexts per dashboard: {n_ctx})")
    dense = np.argsort(dens)[-20:]
    report("feature_dashboard, 20 densest", [timed(store.feature_dashboard, run, a.dict, int(f)) for f in dense])

    toks = rng.integers(0, info["n_tokens"], a.n)
    report("context (one window)", [timed(store.context, run, a.dict, int(f), int(t)) for f, t in zip(feats, toks)])
    report("tokens_window", [timed(store.tokens_window, run, int(t), 24, 8) for t in toks[:50]])

    pages = []
    for i in range(50):
        sort = ["feature", "density", "max_act", "mean_act"][i % 4]
        pages.append(timed(store.list_features, run, a.dict, density_min=1e-5 if i % 2 else None,
                           label_query="quoted" if i % 3 == 0 else None, alive=True, sort=sort,
                           descending=bool(i % 2), limit=50, offset=int(rng.integers(0, 200)) * 50))
    report("list_features page", pages)
    report("count_features", [timed(store.count_features, run, a.dict, density_min=1e-4, alive=True) for _ in range(50)])
    report("feature_densities", [timed(store.feature_densities, run, a.dict) for _ in range(20)])
    p95 = float(np.percentile(dash, 95))
    print(f"feature_dashboard p95 {p95:.1f} ms: {'OK' if p95 < 50 else 'OVER'} the 50 ms target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
