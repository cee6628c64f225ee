"""TopK training speed of ours next to EleutherAI sparsify's, same data, same d_sae, k and batch.

    bash bench/setup_bench_env.sh sparsify             # once: bench/.venv-sparsify with eai-sparsify==1.3.3
    .venv/bin/python -m bench.bench_topk_vs_sparsify [--run data/demo | --random]

Both train a TopK SAE on the same fixed activation matrix (default: the first 100k training tokens
of the demo run) for the same number of tokens, batch size, d_sae and k, with AuxK on dead latents
(coefficient 1/32, k_aux = d_in/2, as Gao et al. 2024) counted over the same window. Each side
uses its own optimiser recipe: ours is backend.training.trainer.Trainer (Adam at topk's default lr 5e-3,
warm-up + cosine decay);
sparsify's is what its trainer does by default (schedule-free SignSGD at lr 5e-3/sqrt(d_sae/2^14),
b_dec at the data mean, unit-norm decoder with the parallel gradient removed), re-created step by
step over in-memory batches because its own Trainer needs a model and a dataset. Sparsify runs in
bench/.venv-sparsify, so it is never a dependency of the project. Wall time covers each whole fit.
Printed: tokens/s of each, the ratio (target >= 1.0), and the held-out FVU and L0 of each.

`--device cuda` trains both sides on the GPU (ours: Trainer(device="cuda"), the latent-choosing matmul in
bfloat16 unless `--select-dtype float32`; sparsify: SparseCoder(device="cuda"), float32, its Triton sparse
decoder where triton is installed); each side's clock is read after a CUDA synchronise, the held-out
FVU/L0 is computed on the same device, and the results name it. The demo's activations are too large to
carry to a GPU machine, so a GPU session runs `--random --device cuda` (the planted random matrix, made in
place) with `--peer-python` naming a python that imports sparsify (bench/gpu_check.sh does all of it); its
CPU baseline is the same command with `--device cpu`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from bench.bench_train_vs_saelens import load_matrix, run_and_report, write_matrix_run
from bench.devices import DEVICES, check_device, device_name, synchronize

HERE = Path(__file__).resolve().parent
SPARSIFY_PY = HERE / ".venv-sparsify" / "bin" / "python"


def fvu_l0_topk(encode_topk, decode_topk, x: np.ndarray, batch: int = 4096, device: str = "cpu") -> tuple[float, float]:
    """Mean-centred FVU and L0 on raw x [N, d] for an encoder returning (values, indices), on `device`."""
    import torch

    sse = l0 = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch], dtype=np.float32)).to(device)
            vals, idx = encode_topk(xb)
            sse += float((decode_topk(vals, idx) - xb).double().pow(2).sum())
            l0 += float((vals > 0).sum())
    x64 = x.astype(np.float64)
    var = float((x64 ** 2).sum(1).mean() - (x64.mean(0) ** 2).sum())
    return sse / len(x) / var, l0 / len(x)


# --- the sparsify side (runs in bench/.venv-sparsify) -----------------------------------------
def sparsify_worker(work: Path) -> None:
    import torch
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    p = json.loads((work / "params.json").read_text())
    torch.set_num_threads(p["threads"])
    torch.manual_seed(p["seed"])
    dev = p.get("device", "cpu")
    train = torch.from_numpy(np.load(work / "train.npy")).to(dev)
    test = np.load(work / "test.npy")
    B, steps, d_sae = p["batch_size"], p["tokens"] // p["batch_size"], p["d_sae"]
    t0 = time.perf_counter()
    sae = SparseCoder(train.shape[1], SparseCoderConfig(num_latents=d_sae, k=p["k"]), device=dev, dtype=torch.float32)
    opt = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": 5e-3 / (d_sae / 2 ** 14) ** 0.5}]), momentum=0.95)
    opt.train()
    since_fired = torch.zeros(d_sae, dtype=torch.long, device=dev)
    g = torch.Generator().manual_seed(p["seed"])
    step = 0
    while step < steps:  # shuffled passes over the fixed matrix, full batches only
        perm = torch.randperm(len(train), generator=g).to(dev)
        for i in range(0, len(train) - B + 1, B):
            if step >= steps:
                break
            x = train[perm[i:i + B]]
            if step == 0:
                sae.b_dec.data = x.mean(0)
            sae.set_decoder_norm_to_unit_norm()
            dead = since_fired > p["dead_tokens"]
            out = sae(x, dead_mask=dead)
            (out.fvu + p["aux_coeff"] * out.auxk_loss).backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            opt.zero_grad()
            with torch.no_grad():
                since_fired += B
                since_fired[out.latent_indices.flatten().unique()] = 0
            step += 1
    opt.eval()  # schedule-free: evaluate at the averaged weights
    sae.set_decoder_norm_to_unit_norm()
    synchronize(dev)
    seconds = time.perf_counter() - t0
    sae.eval()

    def enc(x):
        o = sae.encode(x)
        return o.top_acts, o.top_indices

    fvu, l0 = fvu_l0_topk(enc, sae.decode, test, device=dev)
    out = {"seconds": seconds, "tokens": steps * B, "fvu": fvu, "l0": l0, "threads": torch.get_num_threads(),
           "device": device_name(dev),
           "dead_fraction": float((since_fired > p["dead_tokens"]).float().mean()),
           "version": __import__("importlib.metadata").metadata.version("eai-sparsify")}
    (work / "sparsify.json").write_text(json.dumps(out))


# --- our side -------------------------------------------------------------------------------
def ours(work: Path, p: dict) -> dict:
    import torch

    from backend.dictionaries import load_dictionary
    from backend.training.trainer import TrainConfig, Trainer

    train = np.load(work / "train.npy")
    test = np.load(work / "test.npy")
    run = write_matrix_run(work / "run", train, test)
    epochs = p["tokens"] / (len(train) // p["batch_size"] * p["batch_size"])
    cfg = TrainConfig(kind="topk", k=p["k"], d_sae=p["d_sae"], epochs=epochs, batch_size=p["batch_size"], seed=p["seed"],
                      aux_coeff=p["aux_coeff"], auxk_dead_tokens=p["dead_tokens"], dead_window_tokens=p["dead_tokens"],
                      threads=p["threads"],
                      checkpoint_every_s=0, select_dtype=p.get("select_dtype", "auto"), **({"lr": p["lr"]} if p.get("lr") else {}))
    dev = p.get("device", "cpu")
    tr = Trainer(run, cfg, "bench", device=dev)
    t0 = time.perf_counter()
    tr.fit(progress=True)
    tr.finish()
    synchronize(dev)
    seconds = time.perf_counter() - t0
    d = load_dictionary(run / "dictionaries" / "bench", device=dev)

    def enc(x):
        f = d.encode(x)
        v, i = f.topk(p["k"], dim=-1)
        return v, i

    def dec(v, i):
        return d.decode(torch.zeros(len(v), d.d_sae, device=v.device).scatter_(-1, i, v))

    fvu, l0 = fvu_l0_topk(enc, dec, test, device=dev)
    return {"seconds": seconds, "tokens": tr.step_i * p["batch_size"], "fvu": fvu, "l0": l0,
            "threads": torch.get_num_threads(), "dead_fraction": float(tr.dead_mask().float().mean()),
            "device": device_name(dev), "select_dtype": str(tr.dictionary.select_dtype).removeprefix("torch.")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="data/demo", help="run folder to take the activation matrix from")
    ap.add_argument("--random", action="store_true", help="planted random data instead of a run")
    ap.add_argument("--rows", type=int, default=100_000, help="training tokens in the fixed matrix")
    ap.add_argument("--tokens", type=int, default=400_000, help="training tokens for each side (passes over the matrix)")
    ap.add_argument("--d-sae", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=None, help="our peak lr (default: topk's, TopKConfig.default_lr)")
    ap.add_argument("--dead-tokens", type=int, default=100_000, help="a latent silent this many tokens is dead (AuxK)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--select-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="our TrainConfig.select_dtype (the matmul that only chooses active latents)")
    ap.add_argument("--only", choices=["ours", "sparsify"], default=None)
    ap.add_argument("--device", choices=DEVICES, default="cpu", help="where both sides train and are evaluated")
    ap.add_argument("--peer-python", type=Path, default=SPARSIFY_PY,
                    help="the python that runs the sparsify side (default: bench/.venv-sparsify's)")
    ap.add_argument("--out", default=str(HERE / "results" / "topk_vs_sparsify.json"))
    ap.add_argument("--sparsify-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sparsify_worker:
        sparsify_worker(Path(args.sparsify_worker))
        return
    check_device(args.device)
    if args.only != "ours" and not shutil.which(str(args.peer_python)):
        sys.exit(f"bench venv missing: run `bash {HERE / 'setup_bench_env.sh'} sparsify` first (or pass --only ours, "
                 "or --peer-python)")
    train, test, what = load_matrix(args)
    p = {"d_sae": args.d_sae, "k": args.k, "batch_size": args.batch_size, "tokens": args.tokens, "lr": args.lr,
         "aux_coeff": 1 / 32, "dead_tokens": args.dead_tokens, "threads": args.threads, "seed": args.seed,
         "select_dtype": args.select_dtype, "device": args.device}
    print(f"data: {what}; {args.tokens} tokens per side, batch {args.batch_size}, d_sae {args.d_sae}, k {args.k}, "
          f"{args.threads} threads, {device_name(args.device)}", flush=True)
    run_and_report(train, test, p, what, ours, "sparsify", args.peer_python, __spec__.name, args.only, args.out)


if __name__ == "__main__":
    main()
