"""Plain against anchored dictionaries, pair by pair: the README's anchoring table with intervals and paired tests.

    .venv/bin/python -m bench.bench_anchoring --run /tmp/anch_run --pairs relu-l1:relu-l1-anchored,topk:topk-anchored

For each dictionary: L0, EV (massive tokens excluded) and EV with them, delta_ce and kl_div (metrics.json: the
full model on the held-out contexts), task accuracy retained spliced / clean (the evaluation suite's tasks part,
evaluation_tasks.parquet), labels that hold (the lexical scorer's label_scores.json), training seconds. For each
pair, on the same held-out contexts: the per-context delta CE recomputed from the cached activations (the layers
after the hook only), the paired bootstrap 95% interval of anchored - plain and of the ratio; McNemar's exact test
on the task items both got spliced (same items); the L0 ratio (matched within 10%?).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def per_context_ce(lm, hook: str, run: str, names: list[str], n_seqs: int | None = None) -> dict[str, np.ndarray]:
    """{"clean": [S], name: [S]}: mean CE per held-out context (predictions from positions 1..T-2), spliced without
    the error term at every position >= 1, from the cached activations."""
    from backend.activations.activation_store import ActivationStore
    from backend.dictionaries import load_dictionary
    from backend.evaluation.metrics import heldout_token_ids
    from backend.model.forward import run_downstream, unembed
    from backend.model.hooks import parse_hook

    store, hp = ActivationStore(run), parse_hook(hook)
    ids = torch.from_numpy(heldout_token_ids(run, n_seqs or store.n_seqs))
    dicts = {n: load_dictionary(f"{run}/dictionaries/{n}").eval() for n in names}
    out: dict[str, list] = {k: [] for k in ["clean", *names]}
    for s0 in range(0, len(ids), 4):
        seq = np.arange(store.heldout_from + s0, min(store.heldout_from + s0 + 4, store.heldout_from + len(ids)))
        acts = torch.from_numpy(np.asarray(store.seqs(int(seq[0]), int(seq[-1]) + 1), dtype=np.float32))
        tgt = ids[s0:s0 + len(seq), 2:, None]
        with torch.no_grad():
            for key in out:
                a = acts.clone()
                if key != "clean":
                    a[:, 1:] = dicts[key](a[:, 1:].reshape(-1, a.shape[-1])).reshape(a[:, 1:].shape)
                lp = torch.log_softmax(unembed(lm.model, run_downstream(lm.model, hp, a)[:, 1:-1]).float(), -1)
                out[key] += (-lp.gather(-1, tgt)[..., 0].mean(1)).tolist()
    return {k: np.asarray(v) for k, v in out.items()}


def paired(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> dict:
    """Mean of b - a and b / a over resampled contexts, percentile 95% intervals."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (n, len(a)))
    d = b[idx].mean(1) - a[idx].mean(1)
    r = b[idx].mean(1) / a[idx].mean(1)
    return {"diff": float(b.mean() - a.mean()), "diff_lo": float(np.quantile(d, 0.025)), "diff_hi": float(np.quantile(d, 0.975)),
            "ratio": float(b.mean() / a.mean()), "ratio_lo": float(np.quantile(r, 0.025)), "ratio_hi": float(np.quantile(r, 0.975))}


def row(run: str, name: str) -> dict:
    import pandas as pd

    from backend.common.atomic import read_json
    from backend.common.layout import CFG_JSON, EVALUATION_TASKS, dict_dir, read_metrics

    d = dict_dir(run, name)
    m, cfg = read_metrics(run, name), read_json(d / CFG_JSON)
    t = cfg.get("training", {})
    out = {k: m.get(k) for k in ("l0", "explained_variance", "explained_variance_all", "delta_ce", "kl_div")}
    out["train_s"] = t.get("train_seconds")
    out["train_cpu_s"] = t.get("train_cpu_seconds")
    out["anchor"] = t.get("anchor")
    if (d / EVALUATION_TASKS).is_file():
        items = pd.read_parquet(d / EVALUATION_TASKS)
        out["items"] = items
        acc = items.groupby("task")[["correct_clean", "correct_spliced"]].mean()
        out["retained"] = float(acc["correct_spliced"].mean() / acc["correct_clean"].mean())
    ls = d / "label_scores.json"
    if ls.is_file():
        s = (read_json(ls).get("scorers") or {}).get("lexical")
        if s:
            out["labels_hold"] = s["fraction_hold"]
            out["labels_n"] = s["n_scored"]
    return out


def mcnemar(items_a, items_b) -> tuple[int, int, float]:
    """(plain right/anchored wrong, plain wrong/anchored right, exact p) on the items both have, spliced."""
    from scipy.stats import binomtest

    a = items_a.set_index(["task", "item"])["correct_spliced"]
    b = items_b.set_index(["task", "item"])["correct_spliced"]
    both = a.index.intersection(b.index)
    a, b = a.loc[both].to_numpy(), b.loc[both].to_numpy()
    n10, n01 = int((a & ~b).sum()), int((~a & b).sum())
    p = binomtest(n10, n10 + n01, 0.5).pvalue if n10 + n01 else 1.0
    return n10, n01, float(p)


def fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--pairs", required=True, help="plain:anchored,plain:anchored,...")
    ap.add_argument("--no-paired-ce", action="store_true", help="skip the per-context CE recomputation")
    a = ap.parse_args()

    from backend.common.layout import load_run
    from backend.model.loading import load_model

    pairs = [tuple(p.split(":")) for p in a.pairs.split(",")]
    names = list(dict.fromkeys(n for p in pairs for n in p))
    rows = {n: row(a.run, n) for n in names}
    print("| dictionary | L0 | EV | EV (with massive) | delta_ce | kl_div | tasks retained | labels hold | train s (CPU s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in names:
        r = rows[n]
        hold = f"{r['labels_hold']:.1%} of {r['labels_n']}" if r.get("labels_hold") is not None else "-"
        print(f"| {n} | {fmt(r['l0'], '.1f')} | {fmt(r['explained_variance'])} | {fmt(r['explained_variance_all'])} | "
              f"{fmt(r['delta_ce'])} | {fmt(r['kl_div'])} | {fmt(r.get('retained'), '.1%')} | {hold} | "
              f"{fmt(r['train_s'], '.0f')} ({fmt(r['train_cpu_s'], '.0f')}) |")
    ce = None
    if not a.no_paired_ce:
        meta = load_run(a.run)
        lm = load_model(meta["model"], device="cpu")
        ce = per_context_ce(lm, meta["hook"], a.run, names)
        print(f"\nper-context CE from the cached activations ({len(ce['clean'])} held-out contexts): clean {ce['clean'].mean():.3f}")
    for p, q in pairs:
        rp, rq = rows[p], rows[q]
        print(f"\n{p} -> {q}: L0 ratio {fmt(rq['l0'] / rp['l0'] if rp['l0'] else None)}"
              f" (matched within 10%: {abs(rq['l0'] / rp['l0'] - 1) <= 0.1 if rp['l0'] else '-'})")
        if ce is not None:
            s = paired(ce[p] - ce["clean"], ce[q] - ce["clean"])
            print(f"  delta_ce {(ce[p] - ce['clean']).mean():.3f} -> {(ce[q] - ce['clean']).mean():.3f}: difference "
                  f"{s['diff']:+.3f} [{s['diff_lo']:+.3f}, {s['diff_hi']:+.3f}], ratio {s['ratio']:.2f} "
                  f"[{s['ratio_lo']:.2f}, {s['ratio_hi']:.2f}] (paired bootstrap over contexts; halved: ratio <= 0.5)")
        if "items" in rp and "items" in rq:
            n10, n01, pv = mcnemar(rp["items"], rq["items"])
            print(f"  task items spliced: plain right / anchored wrong {n10}, the reverse {n01}, McNemar p = {pv:.3f}")
        if rq.get("anchor"):
            an = rq["anchor"]
            print(f"  anchored with g={an.get('anchor_kl')} l={an.get('task_loss')} a={an.get('mse_coeff')} "
                  f"b={an.get('b_sparsity')} init_from={an.get('init_from')}; {an.get('seconds_per_step')} s/step")


if __name__ == "__main__":
    main()
