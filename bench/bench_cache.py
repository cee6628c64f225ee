"""Caching throughput relative to the truncated forward pass alone (target ratio >= 0.9), and where the rest goes.

Runs `cache_activations` (tokenise, forward to the hook, write shards and tokens.parquet, find the massive
tokens) on N tokens of the default corpus, and the bare truncated forward pass over the very same batches,
with the model loaded once for both, in ABBA order (cache, forward, forward, cache, ... `--repeats` pairs)
so that a change of machine load hits both alike. Prints tokens/s of each, the ratio of the summed times
(wall and process CPU), then each part of caching timed alone on the same data: tokenise, tokens.parquet,
forward, the copy to float16 shards, the finiteness check, np.save, and the massive-token pass.

    python -m bench.bench_cache [--tokens 32768] [--repeats 2] [--model smollm2-135m] [--hook blocks.15.hook_resid_post]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from backend.activations.cache import CacheConfig, cache_activations, heldout_from, plan_shards, tokenize, write_tokens
from backend.activations.massive import find_massive
from backend.model import hooks
from backend.model.loading import load_model


class Clock:
    """Wall and process-CPU seconds of a block, added into `totals[name]`."""

    def __init__(self, totals: dict, name: str):
        self.totals, self.name = totals, name

    def __enter__(self):
        self.t, self.c = time.perf_counter(), time.process_time()

    def __exit__(self, *exc):
        w, c = self.totals.get(self.name, (0.0, 0.0))
        self.totals[self.name] = (w + time.perf_counter() - self.t, c + time.process_time() - self.c)


def forward_only(lm, hp, ids: torch.Tensor, batch_size: int, keep: bool = False) -> list:
    out = []
    for b in range(0, len(ids), batch_size):
        act = hooks.capture(lm.model, hp, ids[b:b + batch_size].to(lm.device))
        if lm.device.type == "cuda":
            torch.cuda.synchronize()
        if keep:
            out.append(act)
    return out


def parts(cfg: CacheConfig, lm, hp, tmp: Path, totals: dict) -> None:
    """Each step of caching alone, in the order `cache_activations` runs them."""
    with Clock(totals, "tokenise"):
        ids, sources = tokenize(cfg, lm.tokenizer)
    with Clock(totals, "tokens.parquet"):
        write_tokens(tmp / "tokens.parquet", ids, sources, lm.tokenizer)
    input_ids = torch.from_numpy(ids.astype(np.int64))
    with torch.no_grad(), Clock(totals, "forward"):
        acts = forward_only(lm, hp, input_ids, cfg.batch_size, keep=True)
    shards = plan_shards(len(ids), cfg.shard_seqs)
    (tmp / "activations").mkdir(exist_ok=True)
    per_shard = cfg.shard_seqs // cfg.batch_size
    for i, s in enumerate(shards):
        with Clock(totals, "to float16 buffer"):
            buf = np.concatenate([a.float().cpu().numpy() for a in acts[i * per_shard:(i + 1) * per_shard]]).astype(np.float16)
        with Clock(totals, "isfinite check"):
            np.isfinite(buf).all()
        with Clock(totals, "np.save"), open(tmp / s["file"], "wb") as fh:
            np.save(fh, buf)
    with Clock(totals, "massive tokens"):
        find_massive(tmp, shards, ids.shape[1], heldout_from(len(ids), cfg.heldout_frac))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--repeats", type=int, default=2, help="ABBA pairs of (cache, forward)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--hook", default="blocks.15.hook_resid_post")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()

    lm = load_model(a.model, a.device)
    cfg = CacheConfig(model=a.model, hook=a.hook, tokens=a.tokens, device=a.device)
    hp = hooks.parse_hook(a.hook, hooks.n_layers(lm.model))
    # warm-up so neither measurement pays for first-call allocation
    hooks.capture(lm.model, hp, torch.full((cfg.batch_size, cfg.ctx_len), 100, device=lm.device))
    totals: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ids, _ = tokenize(cfg, lm.tokenizer)
        ids = torch.from_numpy(ids.astype(np.int64))
        n = ids.numel()
        for r in range(a.repeats):
            for what in (("cache", "forward") if r % 2 == 0 else ("forward", "cache")):
                with Clock(totals, what):
                    if what == "cache":
                        cache_activations(cfg, Path(tmp) / f"run{r}", lm=lm)
                    else:
                        with torch.no_grad():
                            forward_only(lm, hp, ids, cfg.batch_size)
        parts(cfg, lm, hp, Path(tmp), part_totals := {})
    (fw, fc), (cw, cc) = totals["forward"], totals["cache"]
    print(f"device {lm.device}, {n} tokens x {a.repeats} repeats, {a.hook}, batch {cfg.batch_size} x {cfg.ctx_len}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    print(f"truncated forward alone: {n * a.repeats / fw:,.0f} tokens/s")
    print(f"cache (tokenise + forward + write): {n * a.repeats / cw:,.0f} tokens/s")
    print(f"ratio cache / forward: {fw / cw:.3f} wall, {fc / cc:.3f} CPU  (target >= 0.9)")
    total = sum(w for w, _ in part_totals.values())
    print("one cache, part by part (wall s, CPU s, share of the parts' wall time):")
    for k, (w, c) in part_totals.items():
        print(f"  {k:18s} {w:7.2f} {c:7.2f}  {100 * w / total:5.1f}%")


if __name__ == "__main__":
    main()
