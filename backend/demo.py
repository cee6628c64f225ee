"""`python -m backend demo`: the default store, end to end, on the embedded model and corpus.

cache (SmolLM2-135M, blocks.15.hook_resid_post, 200k tokens) -> train relu-l1 (d_sae 4608)
-> metrics -> analyze, into `data/demo`. Each step is skipped when its output already exists,
so an interrupted demo continues where it stopped; the model is loaded once and shared.
"""

from __future__ import annotations

import time
from pathlib import Path

from backend.runs import RUN_JSON, dict_dir

DEMO_DICT = "relu-l1"


def demo_complete(out: str | Path) -> bool:
    return (dict_dir(out, DEMO_DICT) / "features.parquet").is_file()


def run_demo(out: str | Path, tokens: int = 200_000, d_sae: int = 4608, device: str = "auto", force: bool = False) -> Path:
    out = Path(out)
    if demo_complete(out) and not force:
        print(f"demo store is ready: {out} (pass --force to rebuild)")
        return out
    from backend.analyze import analyze
    from backend.cache import CacheConfig, cache_activations
    from backend.models import DEFAULT_MODEL, load_model
    from backend.train import TrainConfig, train_dictionary

    t0 = time.time()
    timings = {}
    print("demo: loading the embedded SmolLM2-135M-Instruct (de-quantising the GGUF takes ~30 s on CPU)")
    lm = load_model(DEFAULT_MODEL, device)
    timings["load_model"] = time.time() - t0
    if force or not (out / RUN_JSON).is_file():
        t = time.time()
        cache_activations(CacheConfig(tokens=tokens, device=device), out, force=force, lm=lm)
        timings["cache"] = time.time() - t
    if force or not (dict_dir(out, DEMO_DICT) / "metrics.json").is_file():
        t = time.time()
        train_dictionary(out, TrainConfig(kind="relu-l1", d_sae=d_sae), name=DEMO_DICT, device=device, lm=lm, force=True)
        timings["train"] = time.time() - t
    t = time.time()
    analyze(out, DEMO_DICT, lm=lm, device=device)
    timings["analyze"] = time.time() - t
    timings["total"] = time.time() - t0
    print("demo: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    print(f"demo store is ready: {out}")
    return out
