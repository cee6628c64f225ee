"""Cost of attribution and of `faithfulness` on the real embedded model (SmolLM2-135M), per dictionary kind.

    python -m bench.bench_faithfulness --run /tmp/faith_run [--dicts topk,relu-l1] [--task arithmetic.2_digit_division]
                                       [--n 3] [--threads 2]

Prints, on the run's dictionaries:
  * attribution of a 64-token prompt (BOS + 63 tokens of the default corpus's kind of text) to a target: attribution
    patching (one upstream pass to the hook, one downstream pass + backward), the exact zero-ablation of the top 20
    pairs, and integrated gradients (20 Gauss-Legendre nodes, full model forward + backward): seconds each, cold
    (first call) and warm (the second);
  * `faithfulness` on --n items of one task: the token side (IG + token removals, the model's: once per task), the
    occlusion side (one forward row per prompt token + token removals, no backward; also once per task) and the
    feature side per dictionary kind, seconds per item, and the default run (30 items x 3 tasks) extrapolated.
No results are written to the run (the token-side caches are bypassed). The load average is printed: the cores may
be shared, and every figure is wall time.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TEXT = ("The train left the station at nine in the morning and reached the coast before noon. Along the way the "
        "passengers watched fields of wheat, small villages with red roofs, and a river that followed the tracks for "
        "miles. When they arrived, the town was quiet and the sea was calm, so most of them walked to the harbour to "
        "eat fish and watch the boats come in.")


def prompt_of(tokenizer, n_tokens: int) -> str:
    """A prompt of exactly n_tokens with the BOS (cut from TEXT at a token boundary)."""
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"][: n_tokens - 1]
    return tokenizer.decode(ids)


def bench_attribution(lm, d, hook: str) -> dict:
    from backend.attribution import attribute_prompt
    from backend.interventions.inputs import tokenize_text

    text = prompt_of(lm.tokenizer, 64)
    assert len(tokenize_text(lm.tokenizer, text)) == 64, "the prompt must be 64 tokens"
    out = {}
    for when in ("cold", "warm"):
        t0 = time.perf_counter()
        a = attribute_prompt(lm, d, hook, text, target="the", top_n=20, ig_steps=20)
        out[when] = {**a.seconds, "total": time.perf_counter() - t0, "pairs": len(a.pairs),
                     "ig_error": a.ig_check["completeness_error"], "ig_steps": a.ig_check["steps"]}
    return out


def bench_faithfulness(lm, dicts: dict, hook: str, task: str, n: int) -> tuple[float, float, dict, np.ndarray]:
    from backend.faithfulness.evaluate import FaithfulnessOptions, encode_tasks, feature_rows, occlusion_rows, token_rows
    from backend.interventions.inputs import check_dictionary, special_ids
    from backend.tasks.evaluate import select_tasks

    opts = FaithfulnessOptions(task=task, n=n)
    tasks = select_tasks(task, None, n)
    items = encode_tasks(lm, tasks, opts.prompt_format)[task]
    special = special_ids(lm.tokenizer)
    t0 = time.perf_counter()
    rows = token_rows(lm, task, items, opts, special)
    tokens = (time.perf_counter() - t0) / len(items)
    ig_errors = rows.drop_duplicates("item")["ig_error"].to_numpy()  # [n] one completeness error per item
    t0 = time.perf_counter()
    occlusion_rows(lm, task, items, opts, special)
    occlusion = (time.perf_counter() - t0) / len(items)
    feats = {}
    for name, d in dicts.items():
        hp = check_dictionary(d, lm.model, hook)
        t0 = time.perf_counter()
        feature_rows(lm, d, hp, task, items, opts, special)
        feats[name] = (time.perf_counter() - t0) / len(items)
    return tokens, occlusion, feats, ig_errors


def main() -> None:
    import torch

    from backend.common.layout import dict_dir, dictionary_names, load_run
    from backend.dictionaries import load_dictionary
    from backend.faithfulness.evaluate import FaithfulnessOptions
    from backend.model.loading import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--dicts", default=None, help="comma-separated (default: every dictionary of the run)")
    ap.add_argument("--task", default="arithmetic.2_digit_division")
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    meta = load_run(a.run)
    names = a.dicts.split(",") if a.dicts else dictionary_names(a.run)
    lm, hook = load_model(meta["model"], device="cpu"), meta["hook"]
    loaded = {name: load_dictionary(dict_dir(a.run, name), device="cpu").eval() for name in names}
    kinds = {n: d.cfg.get("kind") for n, d in loaded.items()}
    print(f"model {meta['model']} at {hook}; torch threads {torch.get_num_threads()}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("\nattribution of a 64-token prompt (target ' the'): features = attribution patching; exact = 20 single-pair "
          "ablations; IG = 20 Gauss-Legendre nodes")
    for name, d in loaded.items():
        r = bench_attribution(lm, d, hook)
        for when, s in r.items():
            print(f"  {name:<14}{kinds[name]:<14}{when:<6} features {s['features']:.2f} s, exact {s['exact']:.2f} s, "
                  f"IG {s['ig']:.2f} s, total {s['total']:.2f} s ({s['pairs']} active pairs, IG completeness error "
                  f"{s['ig_error']:.2%} with {s['ig_steps']} nodes)")
    print(f"\nfaithfulness on {a.n} items of {a.task} (5 q's, 3 random draws, 20 IG nodes), seconds per item:")
    tokens, occlusion, feats, ig_errors = bench_faithfulness(lm, loaded, hook, a.task, a.n)
    print(f"  token side (IG + 40 token-removal rows, full model; once per task for every dictionary): {tokens:.1f} s; "
          f"IG completeness error with {FaithfulnessOptions().ig_steps} nodes: median {np.median(ig_errors):.2%}, max {ig_errors.max():.2%} "
          f"over {len(ig_errors)} items")
    print(f"  occlusion side (one forward row per prompt token + 10 token-removal rows, no backward; once per task): "
          f"{occlusion:.1f} s beside IG's {tokens:.1f} s ({tokens / occlusion:.0f}x)")
    for name, s in feats.items():
        total = 90 * (s + tokens + occlusion)  # the default run: 30 items x 3 tasks, the first dictionary pays both token sides
        print(f"  feature side {name:<14}{kinds[name]:<14}{s:.1f} s/item -> default run (90 items) ~{total / 60:.0f} min "
              f"for the first dictionary, ~{90 * s / 60:.0f} min for each other")


if __name__ == "__main__":
    main()
