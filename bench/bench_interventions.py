"""Speed of the interventions engine on the real embedded model (SmolLM2-135M, hook blocks.15.hook_resid_post).

    python -m bench.bench_interventions [--run data/demo --dict relu-l1] [--features 5] [--new-tokens 40]

Without --run it builds (once) a small real run in bench/results/interventions_run: the default corpus,
--tokens positions in contexts of 128, a relu-l1 dictionary of 4,608 features (the demo's size), analysed.
It prints, each beside its target:
  * the Effects panel of one feature: top_context_effects (20 contexts, zero-ablation, from cached
    activations, the layers after the hook only) + its HTML, cold (first feature) and p50 over --features
    more (target < 2 s on 2 CPU cores);
  * steering generation with the KV cache: new tokens per second of each of the clean and steered texts
    (made together, one batch of 2 per step; target >= 15 tokens/s each), greedy and sampled;
  * effects.parquet throughput (contexts/s on --chunk-features densest features) and the whole demo
    dictionary (4,608 features x 20 contexts) extrapolated from it.
torch threads follow the app's choice unless --threads says otherwise: half the cores (at most 4) for small
passes, and for each timed panel or generation the cores idle at its start (backend.common.threads.burst_threads,
as explorer/data.py wraps them); the thread count and the machine's load average are printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
DEFAULT_RUN = HERE / "results" / "interventions_run"


def build_run(out: Path, tokens: int, lm) -> None:
    from backend.activations.cache import CacheConfig, cache_activations
    from backend.analysis.analyze import analyze
    from backend.pipeline import build_dictionary
    from backend.training.trainer import TrainConfig

    if not (out / "run.json").is_file():
        print(f"building a real run in {out}: {tokens:,} tokens of the default corpus")
        cache_activations(CacheConfig(tokens=tokens, device="cpu"), out, lm=lm)
    if not (out / "dictionaries" / "relu-l1" / "features.parquet").is_file():
        build_dictionary(out, TrainConfig(kind="relu-l1", d_sae=4608, epochs=8, batch_size=1024), "relu-l1",
                         device="cpu", lm=lm, ce_seqs=8, force=True)
        analyze(out, "relu-l1", lm=lm, device="cpu")


def _threads(fixed: bool):
    """The app's burst_threads, or the threads --threads set (fixed); yields the thread count."""
    import torch

    from backend.common.threads import burst_threads

    return nullcontext(torch.get_num_threads()) if fixed else burst_threads()


def bench_panel(lm, d, run: str, dict_name: str, feats: list[int], fixed: bool = False) -> list[float]:
    from backend.interventions import top_context_effects
    from explorer.effects_view import effect_contexts, effect_scale

    times = []
    for i, f in enumerate(feats):
        t0, c0 = time.perf_counter(), time.process_time()
        with _threads(fixed) as n_threads:
            fe = top_context_effects(lm, d, run, dict_name, f)
        html = effect_contexts(fe.contexts, effect_scale([c.table for c in fe.contexts]))
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        times.append((dt, cpu))
        print(f"  feature {f:5d}: {len(fe.contexts)} contexts ({'cached acts' if fe.from_cache else 'full pass'}), "
              f"{dt:.2f} s wall on {n_threads} thread(s), {cpu:.2f} s CPU, incl. {len(html) / 1024:.0f} KiB of HTML; "
              f"loss change at peak "
              f"{fe.at_peak:+.4f}, after {fe.after_peak:+.4f}" + ("  (cold)" if i == 0 else ""))
    return times


def bench_generation(lm, d, hook: str, feature: int, n_new: int, stats, fixed: bool = False) -> None:
    from backend.interventions import Edit
    from backend.interventions.steer import Sampling, steer

    prompt = "I think the most important thing is"
    steer(lm, d, hook, prompt, Edit((feature,), "steer", 4.0), n_new=2)  # warm-up
    for name, s in (("greedy", Sampling()), ("sampled T=0.8 top-p 0.9", Sampling(temperature=0.8, top_p=0.9, seed=1))):
        c0 = time.process_time()
        with _threads(fixed) as n_threads:
            r = steer(lm, d, hook, prompt, Edit((feature,), "steer", 8.0, relative=True), n_new=n_new, sampling=s,
                      stats=stats)
        cpu = time.process_time() - c0
        print(f"  {name:24s}: {r.n_new} new tokens per text in {r.seconds:.2f} s on {n_threads} thread(s) = "
              f"{r.tokens_per_second:.1f} tokens/s each (clean + steered; {r.n_new / cpu:.1f} per CPU second), "
              f"target >= 15; KL first token {r.kl_first:.3f}")
        print(f"    clean:   {r.clean[:100]!r}\n    steered: {r.steered[:100]!r}")


def bench_effects_store(lm, d, run: str, dict_name: str, n_feats: int) -> None:
    from backend.interventions.effects_store import EffectsConfig, chosen_features, chunk_effects
    from backend.interventions.inputs import check_dictionary
    from backend.interventions.run_data import RunData

    data = RunData(run, dict_name)
    cfg = EffectsConfig()
    feats = chosen_features(data, None)
    sample = feats[:: max(1, len(feats) // n_feats)][:n_feats]  # spread over densities: dense features cost more
    hp = check_dictionary(d, lm.model, data.hook)
    t0, c0 = time.perf_counter(), time.process_time()
    df = chunk_effects(lm, d, hp, data, sample, cfg, data.stats())
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    n_ctx = int(df["n_contexts"].sum())
    rate = n_ctx / dt
    full = 4608 * 20 / rate
    print(f"  {len(sample)} features spread over the density order, {n_ctx} contexts in {dt:.1f} s = {rate:.1f} contexts/s "
          f"({n_ctx / cpu:.1f} per CPU second)")
    print(f"  whole demo dictionary (4,608 x 20 contexts): ~{full / 60:.0f} min at this rate, ~{4608 * 20 / (n_ctx / cpu) / 60:.0f} "
          f"min of CPU ({'within' if full <= 900 else 'over'} the ~15 min budget; --top N restricts it to the N densest)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=None, help="a run with an analysed dictionary (default: build one)")
    ap.add_argument("--dict", default="relu-l1")
    ap.add_argument("--tokens", type=int, default=32_768, help="tokens of the run built without --run")
    ap.add_argument("--features", type=int, default=5, help="features timed for the Effects panel after the cold one")
    ap.add_argument("--new-tokens", type=int, default=40)
    ap.add_argument("--chunk-features", type=int, default=16, help="features timed for effects.parquet throughput")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--parts", default="panel,steer,store", help="which measurements to run (comma-separated)")
    a = ap.parse_args(argv)

    import torch

    from backend.dictionaries import load_dictionary
    from backend.model.loading import load_model
    from backend.store import query as store

    torch.set_num_threads(a.threads or max(1, min(4, (os.cpu_count() or 2) // 2)))
    print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f} (the cores may be shared with other jobs)")
    lm = load_model("smollm2-135m", device="cpu")
    run = a.run or DEFAULT_RUN
    if a.run is None:
        build_run(run, a.tokens, lm)
    run = str(run)
    d = load_dictionary(Path(run) / "dictionaries" / a.dict)
    info = store.run_info(run)
    # typical features: alive, between 1 in 10,000 and 1 in 100 tokens (the densest fire on every token)
    cand = store.list_features(run, a.dict, density_min=1e-4, density_max=1e-2, sort="density", descending=True, limit=2000)
    feats = cand["feature"].tolist()[:: max(1, len(cand) // (a.features + 1))][: a.features + 1]
    print(f"run {run}: {info['n_tokens']:,} tokens at {info['hook']}, dictionary {a.dict} ({d.d_sae} features)")

    parts = set(a.parts.split(","))
    if "panel" in parts:
        print("Effects panel (20 top contexts, zero-ablation, computed + rendered):")
        times = bench_panel(lm, d, run, a.dict, [int(f) for f in feats], bool(a.threads))
        warm = np.asarray(times[1:] or times)
        print(f"  => warm p50 {np.percentile(warm[:, 0], 50):.2f} s wall ({np.percentile(warm[:, 1], 50):.2f} s CPU of all "
              f"threads), max {warm[:, 0].max():.2f} s; "
              f"cold {times[0][0]:.2f} s (target < 2 s)")
    if "steer" in parts:
        from backend.interventions.run_data import RunData

        print("Steering generation (KV cache):")
        bench_generation(lm, d, info["hook"], int(feats[0]), a.new_tokens, RunData(run, a.dict).stats(), bool(a.threads))
    if "store" in parts:
        print("effects.parquet:")
        bench_effects_store(lm, d, run, a.dict, a.chunk_features)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
