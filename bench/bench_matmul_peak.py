"""Achieved TFLOP/s of a dictionary's products at the demo's shapes, as a fraction of the device's bf16 peak.

    .venv/bin/python -m bench.bench_matmul_peak [--device cuda] [--d-in 576 --d-sae 4608 --batch 2048 --k 32]

Issue 16 asks for the encoder and decoder matmuls as a fraction of the GPU's bf16 peak. One training batch
x [B, d_in] of a dictionary with d_sae latents and k active per token (the demo: 2048, 576, 4608, 32):

    encoder          x [B, d_in] @ W_enc [d_in, d_sae]       2 B d_in d_sae FLOPs   the only dense product of our step
    decoder          f [B, d_sae] @ W_dec [d_sae, d_in]      2 B d_sae d_in         a dense SAE's decoder (SAELens)
    enc_wgrad        x^T [d_in, B] @ g [B, d_sae]            2 d_in B d_sae         W_enc's gradient in a dense step
    sparse_decoder   k rows of W_dec summed per token        2 B k d_in (useful)    ours: sparse_ops.sparse_decode
    sparse_wgrad     W_enc's gradient over the active pairs  2 B k d_in (useful)    ours: sparse_ops.col_scatter

The sparse ops do k / d_sae of the dense work (0.7% at the demo's shapes) and are bound by memory traffic, so
their TFLOP/s is low by nature: read their time (and the effective GB/s printed beside it, counting each
input read once and each output written once) against the dense decoder's.

Peaks: (a) measured in the same run, an N^3 matmul per dtype (N = 8192 on CUDA, 2048 on CPU; `--peak-n`);
(b) for known GPUs, the datasheet's dense bf16 rate (DATASHEET_BF16_TFLOPS). Each op is timed in every dtype
of `--dtypes` (float32; tf32 = float32 inputs through the tensor cores, CUDA only; bfloat16 inputs with
float32 accumulation): `--warmup` calls, then `--repeats` timings of `--reps` back-to-back calls, median; on
CUDA with CUDA events around the calls, elsewhere with perf_counter after a synchronise. Inputs are fresh
random numbers (never zeros, which can run faster than real data); the inputs of one op (at most ~40 MB)
fit a H100's 50 MB L2, as a training step's weights do. Python's launch overhead (a few us per call) is
inside the times, as it is in training.

Correctness: every op's output is compared with a float64 CPU reference computed from the same inputs
(rounded to the op's dtype first), as ||out - ref|| / ||ref||; a row fails above TOLERANCE[dtype].
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from backend.dictionaries.sparse_ops import Pairs, col_scatter, sparse_decode
from bench.devices import DEVICES, check_device, device_name, synchronize

HERE = Path(__file__).resolve().parent

# Dense (no 2:4 sparsity) bf16 tensor-core TFLOP/s from NVIDIA's datasheets, which print the sparsity figure,
# twice these: H100 Tensor Core GPU datasheet (H100 SXM 1,979 -> 989.4; H100 NVL 1,671 -> 835.5; H100 PCIe
# 1,513 -> 756.5), H200 Tensor Core GPU datasheet (H200 SXM 1,979 -> 989.4), A100 datasheet (312, dense).
# torch.cuda.get_device_name calls the H100 SXM "NVIDIA H100 80GB HBM3". First match wins (NVL before H200).
DATASHEET_BF16_TFLOPS = (("H100 NVL", 835.5), ("H200 NVL", 835.5), ("H200", 989.4), ("H100 80GB HBM3", 989.4),
                         ("H100 SXM", 989.4), ("H100 PCIe", 756.5), ("A100", 312.0))
DTYPES = {"float32": torch.float32, "tf32": torch.float32, "bfloat16": torch.bfloat16}
TOLERANCE = {"float32": 1e-4, "tf32": 5e-3, "bfloat16": 2e-2}  # ||out - ref|| / ||ref|| (METHOD: bf16 1e-3..1e-2)


@dataclass(frozen=True)
class Shape:
    batch: int
    d_in: int
    d_sae: int
    k: int


@dataclass
class Op:
    """One product: `run(t)` on the tensors of `make_tensors`, `reference(t64)` on their float64 CPU copies."""

    name: str
    flops: int
    elems_moved: int  # floats read once + written once (the sparse ops' int64 indices not counted)
    run: Callable[[dict], torch.Tensor]
    reference: Callable[[dict], torch.Tensor]


def dense_flops(m: int, n: int, k: int) -> int:
    """FLOPs of an [m, k] @ [k, n] product: one multiply and one add per term."""
    return 2 * m * n * k


def ops(s: Shape) -> list[Op]:
    B, d, n, k = s.batch, s.d_in, s.d_sae, s.k
    nnz = B * k

    def dense_codes(t, vals):  # [B, n] with the pairs' values at their places: the sparse ops' dense equivalent
        return torch.zeros(B, n, dtype=vals.dtype).index_put_((t["rows"].cpu(), t["cols"].cpu()), vals, accumulate=True)

    return [
        Op("encoder", dense_flops(B, n, d), B * d + d * n + B * n,
           lambda t: t["x"] @ t["W_enc"], lambda t: t["x"] @ t["W_enc"]),
        Op("decoder", dense_flops(B, d, n), B * n + n * d + B * d,
           lambda t: t["f"] @ t["W_dec"], lambda t: t["f"] @ t["W_dec"]),
        Op("enc_wgrad", dense_flops(d, n, B), B * d + B * n + d * n,
           lambda t: t["x"].T @ t["g"], lambda t: t["x"].T @ t["g"]),
        Op("sparse_decoder", 2 * nnz * d, nnz * (d + 1) + B * d,  # one multiply-add per active pair and feature
           lambda t: sparse_decode(t["pairs"], t["vals"], t["W_dec"]),
           lambda t: dense_codes(t, t["vals"]) @ t["W_dec"]),
        Op("sparse_wgrad", 2 * nnz * d, nnz * (d + 1) + n * d,
           lambda t: col_scatter(t["pairs"], t["w"], t["x"]),
           lambda t: dense_codes(t, t["w"]).T @ t["x"]),
    ]


def make_tensors(s: Shape, seed: int) -> dict:
    """Random float32 CPU inputs of every op: x, weights, a dense code f, an upstream gradient g, and k distinct
    active latents per token (idx, with their values vals and pair gradients w, in CSR order)."""
    g = torch.Generator().manual_seed(seed)
    B, d, n, k = s.batch, s.d_in, s.d_sae, s.k
    W_dec = torch.randn(n, d, generator=g)
    idx = torch.rand(B, n, generator=g).topk(k, dim=1).indices  # [B, k] distinct latents per token
    return {"x": torch.randn(B, d, generator=g), "W_enc": torch.randn(d, n, generator=g) / math.sqrt(d),
            "W_dec": W_dec / W_dec.norm(dim=1, keepdim=True), "f": torch.relu(torch.randn(B, n, generator=g)),
            "g": torch.randn(B, n, generator=g), "idx": idx, "vals": torch.rand(B * k, generator=g) + 0.1,
            "w": torch.randn(B * k, generator=g)}


def place(t: dict, device: str, dtype: torch.dtype) -> dict:
    """The float tensors in `dtype` on `device`, the pairs built there (their column order too, outside the clock)."""
    out = {key: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for key, v in t.items()}
    pairs = Pairs.from_topk(out["idx"], t["g"].shape[1])
    _ = pairs.order  # builds the column (CSC) view once, as a training step does before its backward
    out.update(pairs=pairs, rows=pairs.rows, cols=pairs.cols)
    return out


def as_reference(t: dict) -> dict:
    """float64 CPU copies of the (already dtype-rounded) inputs."""
    return {key: (v.detach().cpu().double() if v.is_floating_point() else v.cpu()) if torch.is_tensor(v) else v
            for key, v in t.items()}


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    diff = out.detach().cpu().double() - ref
    return float(diff.norm() / ref.norm())


def median_seconds(fn: Callable[[], object], device: str, warmup: int, reps: int, repeats: int) -> float:
    """Median over `repeats` of the mean time of `reps` back-to-back calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / reps)
        else:
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            synchronize(device)
            times.append((time.perf_counter() - t0) / reps)
    return statistics.median(times)


class tf32_matmuls:
    """Inside: float32 matmuls may use TF32 tensor cores (CUDA's torch default is full float32)."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        self.before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.on

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32 = self.before


def measure_peak(n: int, dtype_name: str, device: str, warmup: int, repeats: int, seed: int) -> float:
    """TFLOP/s of an n x n x n product in `dtype_name` on `device` (random inputs)."""
    g = torch.Generator().manual_seed(seed)
    a, b = (torch.randn(n, n, generator=g).to(device=device, dtype=DTYPES[dtype_name]) for _ in range(2))
    with tf32_matmuls(dtype_name == "tf32"):
        sec = median_seconds(lambda: a @ b, device, warmup, reps=10 if device.startswith("cuda") else 2, repeats=repeats)
    return dense_flops(n, n, n) / sec / 1e12


def datasheet_peak(name: str) -> float | None:
    for key, tflops in DATASHEET_BF16_TFLOPS:
        if key in name:
            return tflops
    return None


def bench(s: Shape, device: str, dtypes: list[str], peak_n: int, warmup: int, reps: int, repeats: int,
          seed: int = 0) -> dict:
    """Time and check every op in every dtype; peaks measured in the same run. Returns the results as a dict."""
    base = make_tensors(s, seed)
    name = device_name(device)
    peaks = {dt: measure_peak(peak_n, dt, device, warmup, repeats, seed) for dt in dtypes}
    if "bfloat16" not in peaks:
        peaks["bfloat16"] = measure_peak(peak_n, "bfloat16", device, warmup, repeats, seed)
    res = {"device": name, "shape": vars(s), "peak_n": peak_n, "measured_peak_tflops": peaks,
           "datasheet_bf16_tflops": datasheet_peak(name), "rows": []}
    for dt in dtypes:
        t = place(base, device, DTYPES[dt])
        t64 = as_reference(t)
        for op in ops(s):
            row = {"op": op.name, "dtype": dt, "flops": op.flops}
            try:
                with tf32_matmuls(dt == "tf32"):
                    out = op.run(t)
                    row["rel_error"] = rel_error(out, op.reference(t64))
                    sec = median_seconds(lambda: op.run(t), device, warmup, reps, repeats)
            except (RuntimeError, NotImplementedError) as e:  # an op this device cannot run in this dtype
                row["error"] = str(e).splitlines()[0][:200]
                res["rows"].append(row)
                continue
            tflops = op.flops / sec / 1e12
            row.update(seconds=sec, tflops=tflops, gb_per_s=op.elems_moved * t["x"].element_size() / sec / 1e9,
                       ok=row["rel_error"] < TOLERANCE[dt],
                       frac_measured_bf16_peak=tflops / peaks["bfloat16"],
                       frac_measured_same_dtype_peak=tflops / peaks[dt],
                       frac_datasheet_bf16_peak=tflops / res["datasheet_bf16_tflops"] if res["datasheet_bf16_tflops"] else None)
            res["rows"].append(row)
    return res


def table(res: dict) -> str:
    s = res["shape"]
    ds = res["datasheet_bf16_tflops"]
    peaks = ", ".join(f"{k} {v:.1f}" for k, v in res["measured_peak_tflops"].items())
    lines = [f"device: {res['device']}; B {s['batch']}, d_in {s['d_in']}, d_sae {s['d_sae']}, k {s['k']}",
             f"measured peak TFLOP/s ({res['peak_n']}^3): {peaks}; datasheet dense bf16: "
             f"{f'{ds:.1f}' if ds else 'unknown for this device'}",
             f"{'op':15s} {'dtype':9s} {'us':>9s} {'TFLOP/s':>9s} {'GB/s':>8s} {'/bf16 meas':>10s} {'/bf16 sheet':>11s} "
             f"{'rel err':>9s}"]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"{r['op']:15s} {r['dtype']:9s} not run: {r['error']}")
            continue
        sheet = f"{r['frac_datasheet_bf16_peak']:11.1%}" if r["frac_datasheet_bf16_peak"] is not None else f"{'-':>11s}"
        lines.append(f"{r['op']:15s} {r['dtype']:9s} {r['seconds'] * 1e6:9.1f} {r['tflops']:9.3f} {r['gb_per_s']:8.1f} "
                     f"{r['frac_measured_bf16_peak']:10.1%} {sheet} {r['rel_error']:9.2e}{'' if r['ok'] else '  FAIL'}")
    if any(r.get("frac_measured_bf16_peak", 0) > 1 for r in res["rows"]):  # seen on CPUs: oneDNN's square kernel is slower
        lines.append(f"note: an op beat the {res['peak_n']}^3 product, which is then not this device's peak: "
                     "read '/bf16 meas' as relative to that product only")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=DEVICES, default="cpu")
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--d-in", type=int, default=576)
    ap.add_argument("--d-sae", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, tf32 (CUDA), bfloat16")
    ap.add_argument("--peak-n", type=int, default=None, help="size of the square peak matmul (8192 CUDA, 2048 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls first (CUDA 20, CPU 3)")
    ap.add_argument("--reps", type=int, default=None, help="calls per timing (CUDA 50, CPU 5)")
    ap.add_argument("--repeats", type=int, default=5, help="timings; the median is kept")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--out", default=str(HERE / "results" / "matmul_peak.json"))
    args = ap.parse_args()
    check_device(args.device)
    cuda = args.device == "cuda"
    dtypes = [d for d in args.dtypes.split(",") if d]
    bad = [d for d in dtypes if d not in DTYPES or (d == "tf32" and not cuda)]
    if bad:
        ap.error(f"--dtypes: {', '.join(bad)} not one of float32, bfloat16 (tf32 on cuda only)")
    if args.threads:
        torch.set_num_threads(args.threads)
    res = bench(Shape(args.batch, args.d_in, args.d_sae, args.k), args.device, dtypes,
                args.peak_n or (8192 if cuda else 2048), args.warmup if args.warmup is not None else (20 if cuda else 3),
                args.reps or (50 if cuda else 5), args.repeats)
    print(table(res))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"written: {args.out}")
    if not all(r.get("ok", True) for r in res["rows"]):
        raise SystemExit("error: an op's output is off its float64 reference (FAIL rows above)")


if __name__ == "__main__":
    main()
