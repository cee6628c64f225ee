"""Massive-activation tokens of a run: the evidence behind `backend.activations.massive`'s rule.

    .venv/bin/python -m bench.bench_massive_tokens --run /tmp/massive_run [--spikes topk]

Prints, for the run's non-BOS tokens: norm quantiles, how many tokens lie above k x the median norm
for a range of k (a flat stretch = a gap in the distribution), the largest jump between consecutive
sorted norms, every token above the rule's threshold (text, position, source, split, cosine with the
BOS vector), and the share of the mean-centred variance they hold. Then, for every dictionary of the
run: held-out EV without / with them and the relative error on the massive tokens of both splits.
`--spikes KIND` trains KIND for `--epochs` passes twice in this process, once with the massive tokens
excluded (the default) and once with them, and prints the per-step loss spikes (loss > 3 x the median
of the previous 10 steps) next to the steps whose batch held a massive token.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HERE = Path(__file__).resolve().parent

import numpy as np
import torch

KS = (2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 50, 100)


def norm_evidence(store, rec: dict, norms: np.ndarray) -> None:
    import pyarrow.parquet as pq

    T = store.ctx_len
    bulk = norms[:, 1:].reshape(-1)
    med = float(np.median(norms[:store.heldout_from, 1:]))
    q = (0, 1, 5, 25, 50, 75, 95, 99, 99.9, 99.99, 100)
    print(f"non-BOS tokens {bulk.size:,}; position-0 norm median {np.median(norms[:, 0]):,.0f}")
    print("norm quantiles: " + "  ".join(f"p{p:g} {v:,.1f}" for p, v in zip(q, np.percentile(bulk, q))))
    print("tokens above k x median: " + "  ".join(f"{k}x:{int((bulk > k * med).sum())}" for k in KS))
    top = np.sort(bulk)[::-1][:len(rec["token_index"]) + 10]
    jumps = top[:-1] / np.maximum(top[1:], 1e-12)
    j = int(np.argmax(jumps))
    print(f"largest jump among the top {len(top)} norms: {top[j + 1]:,.1f} ({top[j + 1] / med:.1f}x median) -> "
          f"{top[j]:,.1f} ({top[j] / med:.1f}x), ratio {jumps[j]:.2f}")
    print(f"rule: {rec['rule']}, k = {rec['k']}: threshold {rec['threshold']:,.1f}, "
          f"{rec['n_train']} train + {rec['n_test']} test tokens, max {rec['max_norm']:,.0f}")
    idx = np.asarray(rec["token_index"], dtype=np.int64)
    if not len(idx):
        return
    toks = pq.read_table(store.run_dir / "tokens.parquet", columns=["token_index", "token_str", "source"],
                         filters=[("token_index", "in", idx.tolist())]).to_pandas().set_index("token_index")
    bos = store.seqs(0, 1)[0, 0].astype(np.float32)
    print(f"{'seq':>5s} {'pos':>4s} {'norm':>8s} {'x med':>6s} {'cos BOS':>7s} {'split':5s} {'source':22s} token")
    for t in idx:
        s, p = divmod(int(t), T)
        v = store.seqs(s, s + 1)[0, p].astype(np.float32)
        cos = float(v @ bos / (np.linalg.norm(v) * np.linalg.norm(bos) + 1e-12))
        split = "test" if s >= store.heldout_from else "train"
        print(f"{s:5d} {p:4d} {norms[s, p]:8,.0f} {norms[s, p] / med:6.1f} {cos:7.3f} {split:5s} "
              f"{toks.source[t]:22s} {toks.token_str[t]!r}")
    print("positions: " + ", ".join(f"{int(p)}: {int(c)}" for p, c in zip(*np.unique(idx % T, return_counts=True))))


def variance_share(store) -> None:
    """Share of the centred sum of squares sum_t ||x_t - mean||^2 that the massive tokens hold."""
    x, idx = store.load_split("all", exclude_massive=False)
    m = store.is_massive(idx)
    x = x.astype(np.float64)
    mu = x.mean(0)
    ss = ((x - mu) ** 2).sum(1)  # [N]
    kept = x[~m]
    var_kept = ((kept - kept.mean(0)) ** 2).sum(1).mean()
    print(f"massive tokens: {int(m.sum())} of {len(x):,} ({m.mean():.4%}) hold {ss[m].sum() / ss.sum():.1%} of the "
          f"centred variance; E||x - mean||^2 {ss.mean():,.0f} with them, {var_kept:,.0f} without")


def dictionary_effects(store) -> None:
    from backend.common.layout import dict_dir, list_dictionaries
    from backend.dictionaries import load_dictionary
    from backend.evaluation.metrics import reconstruction_metrics

    names = list_dictionaries(store.run_dir)
    if not names:
        print("no dictionaries in the run")
        return
    x, idx = store.load_split("test", exclude_massive=False)
    xm, _ = store.load_split("all", exclude_massive=False)
    xm = xm[store.is_massive(_)]
    print(f"{'dictionary':22s} {'EV kept':>8s} {'EV all':>8s} {'L0 kept':>8s} {'rel.err massive':>15s} {'L0 massive':>10s}")
    for n in names:
        d = load_dictionary(dict_dir(store.run_dir, n))
        m = reconstruction_metrics(d, x, massive=store.is_massive(idx))
        with torch.no_grad():
            xt = torch.from_numpy(xm.astype(np.float32))
            f = d.encode(xt)
            rel = float((xt - d.decode(f)).pow(2).sum() / xt.pow(2).sum()) if len(xt) else float("nan")
            l0m = float((f > 0).sum(1).float().mean()) if len(xt) else float("nan")
        print(f"{n:22s} {m['explained_variance']:8.4f} {m['explained_variance_all']:8.4f} {m['l0']:8.1f} "
              f"{rel:15.4f} {l0m:10.1f}")


def train_losses(run: str, kind: str, epochs: float, exclude: bool, threshold: float, d_sae: int | None,
                 batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(loss [steps], batch holds a massive token [steps]) of one training run (nothing saved)."""
    from backend.training.trainer import TrainConfig, Trainer

    cfg = TrainConfig(kind=kind, epochs=epochs, d_sae=d_sae, batch_size=batch_size, checkpoint_every_s=0)
    tr = Trainer(run, cfg, f"bench-{kind}", device="cpu", exclude_massive=exclude)
    tr.init_from_data()
    tr.dictionary.train()
    losses, flagged = [], []
    epoch = 0
    while tr.step_i < tr.total_steps:
        for x in tr.store.iter_batches(cfg.batch_size, "train", seed=cfg.seed + epoch, epochs=1.0):
            if tr.step_i >= tr.total_steps:
                break
            flagged.append(bool(x.norm(dim=1).max() > threshold))  # before step() scales x in place
            losses.append(tr.step(x)["loss"])
        epoch += 1
    return np.asarray(losses), np.asarray(flagged)


def spikes(run: str, kind: str, epochs: float, threshold: float, d_sae: int | None, batch_size: int,
           show_steps: bool) -> None:
    for exclude in (True, False):
        loss, flag = train_losses(run, kind, epochs, exclude, threshold, d_sae, batch_size)
        prev = np.array([np.median(loss[max(0, i - 10):i]) if i else loss[0] for i in range(len(loss))])
        spike = (loss > 3 * prev) & (np.arange(len(loss)) >= 10)  # the first steps fall fast: not spikes
        late = np.arange(len(loss)) >= len(loss) // 2
        label = "excluded" if exclude else "included"
        print(f"{kind}, massive tokens {label}: {len(loss)} steps of {batch_size}, final loss {loss[-1]:.4f}, "
              f"max after step 10 {loss[10:].max():.4f}; batches holding a massive token {int(flag.sum())}; "
              f"spikes {int(spike.sum())}, of which in such batches {int((spike & flag).sum())}")
        if flag.any() and (~flag & late).any() and (flag & late).any():
            print(f"    second half: mean loss {loss[late & flag].mean():.4f} with a massive token, "
                  f"{loss[late & ~flag].mean():.4f} without")
        if show_steps:
            print("    " + " ".join(f"{v:.3f}{'*' if f else ''}" for v, f in zip(loss, flag)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="data/demo")
    ap.add_argument("--spikes", default=None, help="also train this kind with and without the massive tokens")
    ap.add_argument("--epochs", type=float, default=1.0, help="--spikes: passes over the training tokens")
    ap.add_argument("--d-sae", type=int, default=None, help="--spikes: features (default 8 x d_in)")
    ap.add_argument("--batch-size", type=int, default=2048, help="--spikes: tokens per step")
    ap.add_argument("--steps", action="store_true", help="--spikes: print every step's loss (* = holds a massive token)")
    args = ap.parse_args()

    from backend.activations.activation_store import ActivationStore
    from backend.activations.massive import shard_norms

    store = ActivationStore(args.run)
    rec = store.massive
    norms = shard_norms(store.run_dir, store.shards, store.ctx_len)
    print(f"run {args.run}: {store.meta['model']} {store.meta['hook']}, {store.n_seqs} contexts of {store.ctx_len}")
    norm_evidence(store, rec, norms)
    variance_share(store)
    dictionary_effects(store)
    if args.spikes:
        spikes(args.run, args.spikes, args.epochs, rec["threshold"], args.d_sae, args.batch_size, args.steps)


if __name__ == "__main__":
    main()
