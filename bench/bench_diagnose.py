"""Speed of the prompt diagnosis on the real embedded model (SmolLM2-135M) and a run's dictionary.

    python -m bench.bench_diagnose --run data/demo --dict topk [--repeats 20] [--threads 1]

Prints, each beside its target:
  * the time to diagnose one 64-token prompt after the model is loaded: tokenise, the forward pass to the
    hook, encode, the out-of-domain mass and the per-token top features with labels (p50 and p90 over
    --repeats runs of the same prompt, after one warm-up; target < 1 s on 2 CPU cores), and the rules'
    reformulation with its equivalence check (the embedding model loaded once before);
  * the experiment's wall time: read from the last `diagnose-eval` of the run (<run>/diagnosis/eval/summary.json,
    with its split into diagnosis, scoring and ablation), or measured here on --eval-n items of math_operators.
The run needs labels and domains (`python -m backend explain`, `python -m backend domains`). torch threads:
--threads (default: the app's choice, half the cores, at most 4); the load average is printed, since the cores
may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPT = ("Q: A shop sells 3 pens at $2.50 each and 4 notebooks at $3 each. Maria pays with a $20 bill. "
          "What is 20 - (3 x 2.5 + 4 x 3)? Is it |20 - 19.5| or 2 ^ 3 / 4? Answer with the number only, please:")


def prompt_of(tokenizer, n: int) -> str:
    """PROMPT cut or repeated to exactly n tokens (BOS excluded)."""
    ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    while len(ids) < n:
        ids = ids + ids
    return tokenizer.decode(ids[:n])


def main(argv: list[str] | None = None) -> int:
    import torch

    from backend.diagnosis import reformulate
    from backend.diagnosis.commands import ensure_domains, eval_dir, load_labels
    from backend.diagnosis.detect import diagnose_text
    from backend.diagnosis.rules import load_rules
    from backend.dictionaries import load_dictionary
    from backend.labels.embeddings import load_embedder
    from backend.model.loading import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--dict", dest="dict_name", required=True)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--eval-n", type=int, default=0, help="measure the experiment on this many items (0: read the last run's)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads or max(1, min(4, (os.cpu_count() or 2) // 2)))
    meta = json.loads((Path(a.run) / "run.json").read_text())
    t0 = time.perf_counter()
    lm = load_model(meta["model"], device="cpu")
    d = load_dictionary(Path(a.run) / "dictionaries" / a.dict_name, device="cpu")
    fd, labels, rules = ensure_domains(a.run, a.dict_name), load_labels(a.run, a.dict_name), load_rules()
    emb = load_embedder("cpu")
    print(f"loaded model, dictionary {a.dict_name} ({d.d_sae} features), domains, {len(labels)} labels, embedder: "
          f"{time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}")
    text = prompt_of(lm.tokenizer, a.tokens)
    diag = diagnose_text(lm, d, meta["hook"], text, fd, "math", labels)  # warm-up
    times, ref_times = [], []
    for _ in range(a.repeats):
        t1 = time.perf_counter()
        diag = diagnose_text(lm, d, meta["hook"], text, fd, "math", labels)
        times.append(time.perf_counter() - t1)
        t1 = time.perf_counter()
        reformulate.by_rules(text, rules, "math", diag.flagged_spans, embedder=emb)
        ref_times.append(time.perf_counter() - t1)
    n_tok = len(diag.table)
    p50, p90 = np.percentile(times, [50, 90])
    print(f"diagnose one {n_tok}-token prompt: p50 {p50:.3f} s, p90 {p90:.3f} s over {a.repeats} runs (target < 1 s); "
          f"{int(diag.table['flagged'].sum())} tokens flagged")
    print(f"rules reformulation + equivalence check: p50 {np.percentile(ref_times, 50):.3f} s")
    if a.eval_n:
        from backend.diagnosis.experiment import DictionaryDetector, run_experiment
        from backend.tasks.evaluate import select_tasks

        det = DictionaryDetector(a.dict_name, d, fd, labels, fd.threshold("math"))
        t1 = time.perf_counter()
        res = run_experiment(lm, meta["hook"], [det], select_tasks("math_operators", None, a.eval_n), "math", rules,
                             n_resamples=1000, embedder=emb, progress=False)
        c = res.config
        print(f"experiment on {a.eval_n} math_operators items, 1 dictionary: {time.perf_counter() - t1:.1f} s wall "
              f"(diagnosis {c['seconds_diagnose']} s, scoring {c['seconds_score']} s of {c['n_prompts_scored']} prompts, "
              f"ablation {c['seconds_ablate']} s)")
    summary = eval_dir(a.run) / "summary.json"
    if summary.is_file():
        c = json.loads(summary.read_text())["config"]
        n_items = sum(c["tasks"].values())
        print(f"last diagnose-eval of the run: {c.get('wall_seconds', c['seconds'])} s wall for {n_items} items x "
              f"{len(c['dictionaries'])} dictionaries (diagnosis {c['seconds_diagnose']} s, scoring {c['seconds_score']} s "
              f"of {c['n_prompts_scored']} distinct prompts, ablation {c['seconds_ablate']} s in {c['n_ablation_passes']} passes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
