"""Training speed of our relu-l1 SAE next to SAELens' standard SAE, same data, same d_sae and batch.

    bash bench/setup_bench_env.sh                       # once: bench/.venv-saelens with sae-lens==6.54.12
    .venv/bin/python -m bench.bench_train_vs_saelens [--run data/demo | --random]

Both train on the same fixed activation matrix (default: the first 100k training tokens of the
demo run; `--random` plants sparse features in random directions instead) for the same number
of tokens (`--tokens`), batch size and d_sae, with matching recipes: activation scaling
estimated on 8 batches, Adam, linear warm-up + cosine decay, decoder-norm weighted L1 with the
same warm-up and an equivalent coefficient (ours is in units where E||x||^2 = 1; SAELens scales to
mean norm sqrt(d_in), so its coefficient is ours times that ratio), gradient clipping at 1.
Ours runs in this interpreter through backend.training.trainer.Trainer; SAELens runs its own `SAETrainer.fit`
(a data provider over the in-memory tensor) in bench/.venv-saelens, so it is never a dependency of
the project. Each side's wall time covers its whole fit (scaling estimate, steps, folding).
Printed: tokens/s of each, the ratio, and held-out FVU/L0 of each (mean-centred FVU, raw units).

`--device cuda` trains both sides on the GPU (ours: Trainer(device="cuda"), where the matmul that only
chooses the active latents runs in bfloat16 unless `--select-dtype float32`; SAELens: its own `device`
setting, float32, no autocast); each side's clock is read after a CUDA synchronise, the held-out FVU/L0 is
computed on the same device, and the results name it. The demo's activations are too large to carry to a
GPU machine, so a GPU session runs `--random --device cuda` (the planted random matrix, made in place) with
`--peer-python` naming a python that imports sae_lens (bench/gpu_check.sh does all of it); its CPU
baseline is the same command with `--device cpu`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.devices import DEVICES, check_device, device_name, synchronize

HERE = Path(__file__).resolve().parent
SAELENS_PY = HERE / ".venv-saelens" / "bin" / "python"


def fvu_l0(encode, decode, x: np.ndarray, batch: int = 4096, device: str = "cpu") -> tuple[float, float]:
    """Mean-centred FVU and L0 of an encode/decode pair on raw x [N, d] (numpy in, torch on `device` inside)."""
    import torch

    sse = l0 = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch], dtype=np.float32)).to(device)
            f = encode(xb)
            sse += float((decode(f) - xb).double().pow(2).sum())
            l0 += float((f > 0).sum())
    x64 = x.astype(np.float64)
    var = float((x64 ** 2).sum(1).mean() - (x64.mean(0) ** 2).sum())
    return sse / len(x) / var, l0 / len(x)


# --- the SAELens side (runs in bench/.venv-saelens) -------------------------------------------
def saelens_worker(work: Path) -> None:
    import torch
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    p = json.loads((work / "params.json").read_text())
    torch.set_num_threads(p["threads"])
    torch.manual_seed(p["seed"])
    dev = p.get("device", "cpu")
    train = torch.from_numpy(np.load(work / "train.npy")).to(dev)
    test = np.load(work / "test.npy")
    B, total = p["batch_size"], p["tokens"]

    def provider():
        g = torch.Generator().manual_seed(p["seed"])
        while True:  # shuffled passes over the fixed matrix, full batches only
            perm = torch.randperm(len(train), generator=g).to(dev)
            for i in range(0, len(train) - B + 1, B):
                yield train[perm[i:i + B]]

    steps = total // B
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(
        d_in=train.shape[1], d_sae=p["d_sae"], l1_coefficient=p["l1_saelens"], l1_warm_up_steps=p["l1_warmup_steps"],
        normalize_activations="expected_average_only_in", decoder_init_norm=0.1, dtype="float32", device=dev))
    cfg = SAETrainerConfig(
        total_training_samples=steps * B, train_batch_size_samples=B, lr=p["lr"], lr_end=p["lr"] * p["lr_min_ratio"],
        lr_scheduler_name="cosineannealing", lr_warm_up_steps=p["lr_warmup_steps"], device=dev,
        n_batches_for_norm_estimate=p["scale_batches"], logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=provider())
    t0 = time.perf_counter()
    trainer.fit()  # folds the scaling factor into the weights at the end
    synchronize(dev)
    seconds = time.perf_counter() - t0
    sae.eval()
    fvu, l0 = fvu_l0(sae.encode, sae.decode, test, device=dev)
    out = {"seconds": seconds, "tokens": steps * B, "fvu": fvu, "l0": l0, "threads": torch.get_num_threads(),
           "device": device_name(dev), "version": __import__("sae_lens").__version__}
    (work / "saelens.json").write_text(json.dumps(out))


# --- our side -------------------------------------------------------------------------------
def write_matrix_run(folder: Path, train: np.ndarray, test: np.ndarray) -> Path:
    """A run folder (tests/fake_run.py) whose 'sequences' are [dummy position 0, one token], so every row is one
    training token; one float32 shard, the test rows held out."""
    from tests.fake_run import write_run

    x = np.concatenate([train, test]).astype(np.float32)
    seqs = np.stack([np.zeros_like(x), x], axis=1)  # [N, 2, d]; position 0 is dropped by the store
    return write_run(folder, np.zeros((len(x), 2), np.int32), ["<pad>"], "bench", acts=seqs, shard_seqs=len(x),
                     dtype="float32", heldout_from=len(train), model="bench")


def ours(work: Path, p: dict) -> dict:
    import torch

    from backend.dictionaries import load_dictionary
    from backend.training.trainer import TrainConfig, Trainer

    train = np.load(work / "train.npy")
    test = np.load(work / "test.npy")
    run = write_matrix_run(work / "run", train, test)
    epochs = p["tokens"] / (len(train) // p["batch_size"] * p["batch_size"])
    cfg = TrainConfig(d_sae=p["d_sae"], l1_coeff=p["l1"], lr=p["lr"], epochs=epochs, batch_size=p["batch_size"],
                      seed=p["seed"], lr_warmup_steps=p["lr_warmup_steps"], lr_min_ratio=p["lr_min_ratio"],
                      l1_warmup_frac=p["l1_warmup_steps"] / max(1, p["tokens"] // p["batch_size"]),
                      scale_tokens=p["scale_batches"] * p["batch_size"], threads=p["threads"], checkpoint_every_s=0,
                      select_dtype=p.get("select_dtype", "auto"))
    dev = p.get("device", "cpu")
    tr = Trainer(run, cfg, "bench", device=dev)
    t0 = time.perf_counter()
    tr.fit(progress=True)
    tr.finish()
    synchronize(dev)
    seconds = time.perf_counter() - t0
    d = load_dictionary(run / "dictionaries" / "bench", device=dev)
    fvu, l0 = fvu_l0(d.encode, d.decode, test, device=dev)
    return {"seconds": seconds, "tokens": tr.step_i * p["batch_size"], "fvu": fvu, "l0": l0,
            "threads": torch.get_num_threads(), "device": device_name(dev),
            "select_dtype": str(tr.dictionary.select_dtype).removeprefix("torch.")}


def load_matrix(args) -> tuple[np.ndarray, np.ndarray, str]:
    if args.random:
        rng = np.random.default_rng(args.seed)
        d, n_feat, k = 576, 4 * 576, 16
        feats = rng.standard_normal((n_feat, d)).astype(np.float32)
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)

        def sample(n):
            idx = rng.integers(0, n_feat, size=(n, k))
            mags = rng.exponential(1.0, size=(n, k)).astype(np.float32)
            x = np.zeros((n, d), np.float32)
            for j in range(k):
                x += mags[:, j:j + 1] * feats[idx[:, j]]
            return x + 0.05 * rng.standard_normal((n, d)).astype(np.float32)

        return sample(args.rows), sample(10_000), f"random planted ({args.rows} x {d}, k={k})"
    from backend.activations.activation_store import ActivationStore

    store = ActivationStore(args.run)
    train, _ = store.load_split("train", max_tokens=args.rows)
    test, _ = store.load_split("test")
    return train, test, f"{args.run} ({len(train)} x {train.shape[1]} train, {len(test)} held-out)"


def run_and_report(train: np.ndarray, test: np.ndarray, p: dict, what: str, ours_fn, peer: str, peer_py: Path,
                   module: str, only: str | None, out: str) -> dict:
    """Both sides on the same matrices (ours here, the peer as `peer_py -m module --<peer>-worker WORK` in its
    venv from the repository root, writing WORK/<peer>.json), then tokens/s, held-out FVU/L0 of each and the speed ratio, saved to `out`."""
    res = {"params": p, "data": what, "device": device_name(p.get("device", "cpu"))}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        np.save(work / "train.npy", np.ascontiguousarray(train, dtype=np.float32))
        np.save(work / "test.npy", np.ascontiguousarray(test, dtype=np.float32))
        (work / "params.json").write_text(json.dumps(p))
        if only != peer:
            res["ours"] = ours_fn(work, p)
            print(f"ours: {res['ours']}", flush=True)
        if only != "ours":
            subprocess.run([str(peer_py), "-m", module, f"--{peer}-worker", str(work)], check=True, cwd=HERE.parent)
            res[peer] = json.loads((work / f"{peer}.json").read_text())
            print(f"{peer}: {res[peer]}", flush=True)
    return report(res, peer, out)


def report(res: dict, peer: str, out: str) -> dict:
    """Print tokens/s, held-out FVU and L0 of each side and the speed ratio; save `res` to `out`."""
    lines = []
    for k in ("ours", peer):
        if k in res:
            r = res[k]
            r["tokens_per_s"] = r["tokens"] / r["seconds"]
            dead = f"  dead {r['dead_fraction']:.3f}" if "dead_fraction" in r else ""
            lines.append(f"{k:9s} {r['tokens_per_s']:9.0f} tok/s  {r['seconds']:7.1f} s  held-out FVU {r['fvu']:.4f}  "
                         f"L0 {r['l0']:.1f}{dead}")
    if "ours" in res and peer in res:
        res["speed_ratio"] = res["ours"]["tokens_per_s"] / res[peer]["tokens_per_s"]
        lines.append(f"speed ratio (ours / {peer}): {res['speed_ratio']:.2f}x;  "
                     f"FVU ours {res['ours']['fvu']:.4f} vs {peer} {res[peer]['fvu']:.4f}; "
                     f"L0 ours {res['ours']['l0']:.1f} vs {peer} {res[peer]['l0']:.1f}")
    print(f"device: {res.get('device', 'cpu')}")
    print("\n".join(lines))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(res, indent=2))
    print(f"written: {out}")
    return res


def match_l0(train, test, p: dict, what: str, out: str, peer_py: Path = SAELENS_PY, tries: int = 5,
             tol: float = 0.10) -> dict:
    """Ours once, then SAELens with its L1 coefficient moved until its held-out L0 is within `tol` of ours
    (a secant step on log L0 against log l1, from the unit conversion's coefficient): the speed ratio of sparse
    training depends on the sparsity, so it is compared at equal L0. Every try is printed and kept."""
    res = run_and_report(train, test, p, what, ours, "saelens", peer_py, __spec__.name, "ours", out)
    target, tried = res["ours"]["l0"], []
    for i in range(tries):
        r = run_and_report(train, test, p, what, ours, "saelens", peer_py, __spec__.name, "saelens", out)["saelens"]
        tried.append((p["l1_saelens"], r))
        print(f"SAELens try {i + 1}: l1 {p['l1_saelens']:.4f} -> L0 {r['l0']:.1f} (ours {target:.1f})", flush=True)
        if abs(r["l0"] / target - 1) <= tol:
            break
        if len(tried) == 1:
            slope = -1.0  # L0 roughly halves when the coefficient doubles
        else:
            (a1, r1), (a2, r2) = tried[-2], tried[-1]
            slope = (np.log(r2["l0"]) - np.log(r1["l0"])) / (np.log(a2) - np.log(a1)) if a1 != a2 else -1.0
            slope = min(slope, -0.2)  # L0 falls as the coefficient rises
        p["l1_saelens"] = float(p["l1_saelens"] * np.exp((np.log(target) - np.log(r["l0"])) / slope))
    res["saelens"] = tried[-1][1]
    res["params"] = dict(p, l1_saelens=tried[-1][0])
    res["saelens_tries"] = [{"l1_saelens": a, "l0": r["l0"], "fvu": r["fvu"], "seconds": r["seconds"]} for a, r in tried]
    return report(res, "saelens", out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="data/demo", help="run folder to take the activation matrix from")
    ap.add_argument("--random", action="store_true", help="planted random data instead of a run")
    ap.add_argument("--rows", type=int, default=100_000, help="training tokens in the fixed matrix")
    ap.add_argument("--tokens", type=int, default=400_000, help="training tokens for each side (passes over the matrix)")
    ap.add_argument("--d-sae", type=int, default=4608)
    ap.add_argument("--batch-size", type=int, default=None, help="tokens per step of both (default: TrainConfig's)")
    ap.add_argument("--l1", type=float, default=None, help="our L1 coefficient (default: TrainConfig's)")
    ap.add_argument("--lr", type=float, default=None, help="peak lr of both (default: TrainConfig's)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--select-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="our TrainConfig.select_dtype (the matmul that only chooses active latents)")
    ap.add_argument("--l1-saelens", type=float, default=None,
                    help="SAELens's L1 coefficient (default: ours converted to its units)")
    ap.add_argument("--match-l0", action="store_true",
                    help="move SAELens's L1 coefficient until its L0 is within 10%% of ours (up to 5 SAELens runs)")
    ap.add_argument("--only", choices=["ours", "saelens"], default=None)
    ap.add_argument("--device", choices=DEVICES, default="cpu", help="where both sides train and are evaluated")
    ap.add_argument("--peer-python", type=Path, default=SAELENS_PY,
                    help="the python that runs the SAELens side (default: bench/.venv-saelens's)")
    ap.add_argument("--out", default=str(HERE / "results" / "train_vs_saelens.json"))
    ap.add_argument("--saelens-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.saelens_worker:
        saelens_worker(Path(args.saelens_worker))
        return
    from backend.training.trainer import TrainConfig

    check_device(args.device)
    if args.only != "ours" and not shutil.which(str(args.peer_python)):
        sys.exit(f"bench venv missing: run `bash {HERE / 'setup_bench_env.sh'}` first (or pass --only ours, "
                 "or --peer-python)")
    defaults = TrainConfig()
    args.batch_size = args.batch_size or defaults.batch_size
    train, test, what = load_matrix(args)
    # SAELens scales to mean norm sqrt(d_in), we to E||x||^2 = 1: c = x_saelens / x_ours, and an equal
    # penalty needs l1_saelens = c * l1_ours (its loss is c^2 times ours with that coefficient).
    norms = np.linalg.norm(train[:32768].astype(np.float64), axis=1)
    c = np.sqrt(train.shape[1]) / norms.mean() * np.sqrt((norms ** 2).mean())
    l1 = args.l1 if args.l1 is not None else defaults.l1_coeff
    steps = args.tokens // args.batch_size
    p = {"d_sae": args.d_sae, "batch_size": args.batch_size, "tokens": args.tokens, "lr": args.lr or defaults.lr,
         "l1": l1, "l1_saelens": float(args.l1_saelens or c * l1), "l1_warmup_steps": int(defaults.l1_warmup_frac * steps),
         "lr_warmup_steps": defaults.lr_warmup_steps, "lr_min_ratio": defaults.lr_min_ratio, "scale_batches": 8,
         "threads": args.threads, "seed": args.seed,
         "select_dtype": args.select_dtype, "device": args.device}
    print(f"data: {what}; {args.tokens} tokens per side, batch {args.batch_size}, d_sae {args.d_sae}, "
          f"l1 {l1} (SAELens {p['l1_saelens']:.3f}), lr {p['lr']}, {args.threads} threads, {device_name(args.device)}",
          flush=True)
    if args.match_l0:
        match_l0(train, test, p, what, args.out, args.peer_python)
    else:
        run_and_report(train, test, p, what, ours, "saelens", args.peer_python, __spec__.name, args.only, args.out)


if __name__ == "__main__":
    main()
