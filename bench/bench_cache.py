"""Caching throughput relative to the truncated forward pass alone (target ratio >= 0.9).

Runs `cache_activations` (tokenise, forward to the hook, write shards and tokens.parquet) on
N tokens of the default corpus, then the bare truncated forward pass over the very same
batches, with the model loaded once for both. Prints tokens/s of each and their ratio.

    python -m bench.bench_cache [--tokens 32768] [--model smollm2-135m] [--hook blocks.15.hook_resid_post]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from backend.activations.cache import CacheConfig, cache_activations
from backend.model import hooks
from backend.model.loading import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--hook", default="blocks.15.hook_resid_post")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()

    lm = load_model(a.model, a.device)
    cfg = CacheConfig(model=a.model, hook=a.hook, tokens=a.tokens, device=a.device)
    hp = hooks.parse_hook(a.hook, hooks.n_layers(lm.model))
    # warm-up so neither measurement pays for first-call allocation
    hooks.capture(lm.model, hp, torch.full((cfg.batch_size, cfg.ctx_len), 100, device=lm.device))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        run = cache_activations(cfg, Path(tmp) / "run", lm=lm)
        t_cache = time.perf_counter() - t
        ids = pq.read_table(run / "tokens.parquet", columns=["token_id"]).column(0).to_numpy()
        ids = torch.from_numpy(ids.astype(np.int64).reshape(-1, cfg.ctx_len))
    n = ids.numel()
    t = time.perf_counter()
    with torch.no_grad():
        for b in range(0, len(ids), cfg.batch_size):
            hooks.capture(lm.model, hp, ids[b:b + cfg.batch_size].to(lm.device))
            if lm.device.type == "cuda":
                torch.cuda.synchronize()
    t_fwd = time.perf_counter() - t
    print(f"device {lm.device}, {n} tokens, {a.hook}, batch {cfg.batch_size} x {cfg.ctx_len}")
    print(f"truncated forward alone: {n / t_fwd:,.0f} tokens/s")
    print(f"cache (tokenise + forward + write): {n / t_cache:,.0f} tokens/s")
    print(f"ratio cache / forward: {t_fwd / t_cache:.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
