"""Detection scoring of a dictionary's deterministic labels against the same labels shuffled between features.

The README's figures: the seeded sample `python -m backend score --sample N` draws (the same features), each
feature's latest *deterministic* label (the CLI scores current labels, and some features of the demo now have
an LLM label as their current one), scored with one scorer; then the same labels handed to other features
(a derangement, seeded) and scored again. A scorer that cannot tell a true label from a shuffled one is not
measuring the labels. `--write` stores the true-label scores and summary (label_scores.json, key = scorer) as
`score` would, with the shuffled baseline beside it.

    python -m bench.bench_label_scoring --run data/demo --dict relu-l1 --scorer lexical --sample 1000 [--write]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from backend.common.atomic import read_json, write_json
from backend.common.layout import dict_dir
from backend.labels.score import (
    HOLD_F1,
    SUMMARY_FILE,
    make_scorer,
    score_features,
    summarise,
)
from backend.store.label_store import LabelStore

KEYS = ("n_scored", "n_hold", "fraction_hold", "mean_precision", "mean_recall", "mean_f1", "mean_accuracy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="data/demo")
    ap.add_argument("--dict", dest="dict_name", default="relu-l1")
    ap.add_argument("--scorer", default="lexical", choices=["lexical", "embedding"])
    ap.add_argument("--sample", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    ls = LabelStore(a.run)
    cur = ls.current(a.dict_name)
    cur = cur[cur["text"].astype(str).str.strip() != ""].sort_values("feature")
    feats = cur.sample(n=min(a.sample, len(cur)), random_state=a.seed)["feature"].astype(int)  # run_scoring's draw
    allv = ls.all_versions(a.dict_name)
    det = allv[(allv["source"] == "auto-deterministic") & allv["feature"].isin(feats)]
    lab = det.sort_values("version").groupby("feature").tail(1).sort_values("feature")[["feature", "version", "text", "source"]]
    lab = lab.reset_index(drop=True)
    shuffled = lab.copy()
    order = np.random.default_rng(a.seed).permutation(len(lab))
    texts = lab["text"].to_numpy()
    new = texts.copy()
    new[order] = texts[np.roll(order, -1)]  # a derangement: every feature gets another feature's label
    shuffled["text"] = new
    print(f"{len(feats)} sampled features, {len(lab)} deterministic labels, scorer {a.scorer}")
    sc = make_scorer(a.scorer)
    out = {}
    for kind, labels in (("true", lab), ("shuffled", shuffled)):
        t0 = time.perf_counter()
        df = score_features(a.run, a.dict_name, labels, sc, n=10, seed=a.seed, progress=False)
        sec = time.perf_counter() - t0
        s = summarise(df, HOLD_F1)
        out[kind] = (df, s, sec)
        print(f"{kind:9s} {s['n_hold']}/{s['n_scored']} hold ({s['fraction_hold']:.1%}); precision {s['mean_precision']:.3f}, "
              f"recall {s['mean_recall']:.3f}, F1 {s['mean_f1']:.3f}, accuracy {s['mean_accuracy']:.3f}; {sec:.1f} s")
    if a.write:
        df, s, sec = out["true"]
        ls.add_scores([{"dict_name": a.dict_name, "feature": int(r.feature), "version": int(r.version), "scorer": sc.name,
                        "precision": float(r.precision), "recall": float(r.recall), "f1": float(r.f1),
                        "n_pos": int(r.n_pos), "n_neg": int(r.n_neg)} for r in df.itertuples(index=False)])
        path = dict_dir(a.run, a.dict_name) / SUMMARY_FILE
        old = read_json(path) if path.is_file() else {}
        s.update({"scorer": sc.name, "model": "all-MiniLM-L6-v2" if a.scorer == "embedding" else None,
                  "region": getattr(sc, "region", None), "threshold": HOLD_F1, "n_per_class": 10, "seed": a.seed,
                  "n_labels": len(lab), "n_unscorable": len(lab) - len(df), "sampled": True, "seconds": round(sec, 2),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "key": sc.name,
                  "shuffled_baseline": {k: out["shuffled"][1][k] for k in KEYS}})
        old.setdefault("scorers", {})[sc.name] = s
        write_json(path, old)
        print("wrote", path)


if __name__ == "__main__":
    main()
