"""bench/bench_matmul_peak.py on tiny shapes, CPU: the FLOP accounting, and every op's output against float64."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bench.bench_matmul_peak import (
    TOLERANCE,
    Shape,
    as_reference,
    bench,
    datasheet_peak,
    make_tensors,
    ops,
    place,
    rel_error,
    table,
)

TINY = Shape(batch=8, d_in=16, d_sae=64, k=4)


def test_flop_accounting():
    flops = {op.name: op.flops for op in ops(TINY)}
    B, d, n, k = 8, 16, 64, 4
    assert flops == {"encoder": 2 * B * d * n, "decoder": 2 * B * n * d, "enc_wgrad": 2 * d * B * n,
                     "sparse_decoder": 2 * B * k * d, "sparse_wgrad": 2 * B * k * d}
    assert flops["encoder"] == 16384 and flops["sparse_decoder"] == 1024  # k / d_sae of the dense work


def test_every_op_matches_float64_and_rates_follow_from_the_time():
    res = bench(TINY, "cpu", ["float32", "bfloat16"], peak_n=64, warmup=1, reps=2, repeats=3)
    rows = res["rows"]
    assert [(r["op"], r["dtype"]) for r in rows] == [(op.name, dt) for dt in ("float32", "bfloat16") for op in ops(TINY)]
    for r in rows:
        assert "error" not in r, r
        assert r["ok"] and r["rel_error"] < TOLERANCE[r["dtype"]], r
        assert r["tflops"] == pytest.approx(r["flops"] / r["seconds"] / 1e12)
        assert r["frac_measured_bf16_peak"] == pytest.approx(r["tflops"] / res["measured_peak_tflops"]["bfloat16"])
        assert r["frac_datasheet_bf16_peak"] is None  # no datasheet figure for a CPU
    assert max(r["rel_error"] for r in rows if r["dtype"] == "float32") < 1e-5
    assert min(r["rel_error"] for r in rows if r["dtype"] == "bfloat16") > 1e-4  # bf16 rounding is visible
    assert "sparse_decoder" in table(res) and "FAIL" not in table(res)


def test_the_reference_check_catches_a_wrong_output():
    t = place(make_tensors(TINY, seed=1), "cpu", torch.float32)
    t64 = as_reference(t)
    dec = next(op for op in ops(TINY) if op.name == "sparse_decoder")
    assert rel_error(dec.run(t), dec.reference(t64)) < 1e-6
    t["vals"] = t["vals"].flip(0)  # values paired with the wrong latents
    assert rel_error(dec.run(t), dec.reference(t64)) > 0.1


def test_datasheet_peaks_of_known_gpus():
    assert datasheet_peak("NVIDIA H100 80GB HBM3") == 989.4
    assert datasheet_peak("NVIDIA H200") == 989.4
    assert datasheet_peak("NVIDIA H100 NVL") == 835.5
    assert datasheet_peak("CPU: Intel(R) Xeon(R) Processor") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where there is no GPU")
def test_cuda_without_a_gpu_is_one_line():
    p = subprocess.run([sys.executable, "-m", "bench.bench_matmul_peak", "--device", "cuda"], capture_output=True,
                       text=True)
    assert p.returncode == 2
    assert p.stderr.strip() == "error: --device cuda but torch sees no CUDA GPU (torch.cuda.is_available() is False)"
