"""`python -m backend faithfulness`: every item of the chosen tasks, both sides, into Parquet, then the summary.

Cost (2 CPU cores): the token side (IG: `ig_steps` forward + backward passes of the full model, then 2Q(1 + draws)
token-removal rows) is most of it and depends only on the model, so it is computed once per task and settings and
reused by every dictionary (store.py); so is the occlusion side (one forward row per prompt token, then 2Q
token-removal rows; no backward), cached apart so that it can be added to a run whose IG side is already cached;
the feature side is one backward and 2Q(1 + draws) rows of the layers after
the hook. Hence the default of 30 items per task and 3 random draws (README: faithfulness, measured cost).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from backend.common.errors import UserError
from backend.faithfulness import store
from backend.faithfulness.measure import SideResult, feature_side, occlusion_side, token_side
from backend.faithfulness.selection import QS, item_rng
from backend.tasks import prompts
from backend.tasks.schema import Task

DEFAULT_ITEMS = 30
SUITE = ("arithmetic.1_digit_multiplication", "arithmetic.2_digit_division", "dynamic_counting")
"""The default tasks: three of the task suite's (README: task suite) where SmolLM2-135M is well above chance on
held-out items (0.48, 0.42, 0.72 against chance 0.16, 0.16, 0.25), two kinds of arithmetic and one symbolic task, so
that there is a correct prediction to explain, and short (64, 66, 84 tokens with the choices: the cost is per token)."""


@dataclass
class FaithfulnessOptions:
    """What `python -m backend faithfulness` measures (beside --run/--dict/--device)."""

    task: str = "default"
    """Comma-separated task names, or default (arithmetic.1_digit_multiplication, arithmetic.2_digit_division,
    dynamic_counting)."""
    task_files: list[str] = field(default_factory=list, metadata={"flag": "task-file"})
    """BIG-bench task.json files (comma-separated); they replace --task."""
    n: int = DEFAULT_ITEMS
    """Items per task (the first n evaluation items, as `tasks eval`): 30 keep one task under ~15 CPU-minutes."""
    qs: list[float] = field(default_factory=lambda: list(QS))
    """Percentages of the ranked units removed or kept (ERASER's 1, 5, 10, 20, 50); 5 gives the ablated accuracy."""
    ig_steps: int = 20
    """Gauss-Legendre nodes of integrated gradients (20: ~1e-3 completeness error on the tiny test model, not
    converged on SmolLM2: backend/attribution/integrated_gradients.py)."""
    random_draws: int = 3
    """Random rankings per item for each random baseline (features and tokens), averaged."""
    seed: int = 0
    """Seed of the random baselines (the same draws for every dictionary)."""
    prompt_format: Literal["bigbench", "qa", "chat"] = field(default="bigbench", metadata={"flag": "format"})
    """bigbench (the task suite's default, chosen on held-out items), qa or chat."""
    batch_rows: int = 16
    """Edited rows per forward pass."""
    resamples: int = 2000
    """Bootstrap resamples of the summary's intervals."""

    def __post_init__(self):
        if self.n < 1:
            raise UserError(f"--n must be at least 1, got {self.n}")
        if not self.qs or any(not 0 < q <= 100 for q in self.qs):
            raise UserError(f"--qs must be percentages in (0, 100], got {self.qs}")
        self.qs = sorted({float(q) for q in self.qs})
        if not 1 <= self.ig_steps <= 1000:
            raise UserError(f"--ig-steps must be in 1..1000, got {self.ig_steps}")
        if not 0 <= self.random_draws <= 100:
            raise UserError(f"--random-draws must be in 0..100, got {self.random_draws}")
        if self.batch_rows < 1:
            raise UserError(f"--batch-rows must be at least 1, got {self.batch_rows}")
        if self.resamples < 1000:
            raise UserError(f"--resamples must be at least 1000, got {self.resamples}")
        if self.prompt_format not in prompts.FORMATS:
            raise UserError(f"unknown prompt format {self.prompt_format!r}: expected one of {', '.join(prompts.FORMATS)}")


def select_tasks(opts: FaithfulnessOptions) -> list[Task]:
    from backend.tasks.evaluate import select_tasks as tasks_for

    names = ",".join(SUITE) if opts.task == "default" else opts.task
    return tasks_for(names, opts.task_files, opts.n)


def encode_tasks(lm, tasks: list[Task], fmt: str) -> dict[str, list]:
    """{task: [(item, packed row)]}: every item encoded and checked (vocabulary, context length) before any pass."""
    from backend.attribution.targets import pack_item
    from backend.tasks.scoring import context_limit, encode_item

    vocab, limit = int(lm.model.get_output_embeddings().weight.shape[0]), context_limit(lm.model)
    out = {}
    for t in tasks:
        rows = []
        for it in t.items:
            prompt, conts = prompts.render(t, it, fmt, lm.tokenizer)
            enc = encode_item(lm.tokenizer, prompt, conts, where=f"task {t.name} item {it.id}", vocab_size=vocab, max_len=limit)
            rows.append((it, pack_item(enc)))
        out[t.name] = rows
    return out


def _side_columns(prefix: str, res: SideResult) -> dict:
    """Columns of one side: arrays over q, scalars repeated."""
    return {f"comp_{prefix}": res.comp, f"suff_{prefix}": res.suff, f"correct_{prefix}": res.correct.astype(np.float64),
            f"comp_random_{prefix}": res.comp_random, f"suff_random_{prefix}": res.suff_random,
            f"correct_random_{prefix}": res.correct_random}


def token_rows(lm, task: str, items: list, opts: FaithfulnessOptions, special: set[int], progress=None) -> pd.DataFrame:
    """The token side of every item: one row per (item, q)."""
    frames = []
    for it, packed in items:
        res = token_side(lm, packed, it.target, it.correct, special, opts.qs, opts.random_draws,
                         item_rng(opts.seed, task, it.id, 1), opts.ig_steps, min(opts.batch_rows, 10))
        cols = _side_columns("tokens", res)
        frames.append(pd.DataFrame({
            "task": task, "item": it.id, "q": opts.qs, "n_tokens": res.n_units, "k_tokens": res.k,
            "p_clean_tokens": res.p_clean, "correct_clean_tokens": float(res.correct_clean),
            "comp_ig": cols["comp_tokens"], "suff_ig": cols["suff_tokens"], "correct_ig": cols["correct_tokens"],
            "comp_random_tokens": cols["comp_random_tokens"], "suff_random_tokens": cols["suff_random_tokens"],
            "correct_random_tokens": cols["correct_random_tokens"], "ig_error": res.extra["ig_error"],
            "ig_gap": res.extra["ig_gap"]}))
        if progress:
            progress(1)
    return pd.concat(frames, ignore_index=True)


def occlusion_rows(lm, task: str, items: list, opts: FaithfulnessOptions, special: set[int], progress=None) -> pd.DataFrame:
    """The occlusion side of every item: one row per (item, q), with the item's seconds."""
    frames = []
    for it, packed in items:
        t0 = time.perf_counter()
        res = occlusion_side(lm, packed, it.target, it.correct, special, opts.qs, min(opts.batch_rows, 10))
        frames.append(pd.DataFrame({
            "task": task, "item": it.id, "q": opts.qs, "comp_occlusion": res.comp, "suff_occlusion": res.suff,
            "correct_occlusion": res.correct.astype(np.float64), "occlusion_seconds": time.perf_counter() - t0}))
        if progress:
            progress(1)
    return pd.concat(frames, ignore_index=True)


def feature_rows(lm, dictionary, hp, task: str, items: list, opts: FaithfulnessOptions, special: set[int],
                 progress=None) -> pd.DataFrame:
    """The feature side of every item: one row per (item, q)."""
    frames = []
    for it, packed in items:
        res = feature_side(lm, dictionary, hp, packed, it.target, it.correct, special, opts.qs, opts.random_draws,
                           item_rng(opts.seed, task, it.id, 0), opts.batch_rows)
        frames.append(pd.DataFrame({
            "task": task, "item": it.id, "q": opts.qs, "n_choices": len(it.choices), "target": it.target,
            "n_pairs": res.n_units, "k_pairs": res.k, "p_clean": res.p_clean, "correct_clean": float(res.correct_clean),
            **_side_columns("features", res)}))
        if progress:
            progress(1)
    return pd.concat(frames, ignore_index=True)


def token_key(model: str, opts: FaithfulnessOptions) -> dict:
    """The settings the cached token side must share to be reused."""
    return {"model": model, "prompt_format": opts.prompt_format, "qs": opts.qs, "ig_steps": opts.ig_steps,
            "random_draws": opts.random_draws, "seed": opts.seed}


def occlusion_key(model: str, opts: FaithfulnessOptions) -> dict:
    """The settings the cached occlusion side must share to be reused (no IG nodes, no random draws)."""
    return {"model": model, "prompt_format": opts.prompt_format, "qs": opts.qs, "baseline": "zero"}


def _cached_rows(run, folder: str, task: str, key: dict, items: list, compute, progress=None) -> pd.DataFrame:
    """compute(todo) for the items the run's cache `folder` lacks (with the same settings `key`), cached with the rest."""
    cached = store.cached_token_side(run, task, key, folder) if run is not None else None
    have = set() if cached is None else set(cached["item"].tolist())
    todo = [(it, p) for it, p in items if it.id not in have]
    new = compute(todo) if todo else None
    if progress and len(items) > len(todo):
        progress(len(items) - len(todo))
    rows = pd.concat([f for f in (cached, new) if f is not None], ignore_index=True)
    if run is not None and new is not None:
        store.save_token_side(run, task, key, rows, folder)
    return rows[rows["item"].isin([it.id for it, _ in items])]


def token_side_for(lm, run, task: str, items: list, opts: FaithfulnessOptions, special: set[int], model: str,
                   progress=None) -> pd.DataFrame:
    """The token side of `items`, from the run's cache where it has them; the missing ones computed and cached."""
    return _cached_rows(run, store.TOKENS_DIR, task, token_key(model, opts), items,
                        lambda todo: token_rows(lm, task, todo, opts, special, progress), progress)


def occlusion_side_for(lm, run, task: str, items: list, opts: FaithfulnessOptions, special: set[int], model: str,
                       progress=None) -> pd.DataFrame:
    """The occlusion side of `items`, cached in the run as the token side is (store.OCCLUSION_DIR)."""
    return _cached_rows(run, store.OCCLUSION_DIR, task, occlusion_key(model, opts), items,
                        lambda todo: occlusion_rows(lm, task, todo, opts, special, progress), progress)


def model_rows(lm, run, task: str, items: list, opts: FaithfulnessOptions, special: set[int], model: str,
               progress=None) -> pd.DataFrame:
    """Both token sides of `items` (IG with random tokens, and occlusion): one row per (item, q)."""
    toks = token_side_for(lm, run, task, items, opts, special, model, progress)
    occl = occlusion_side_for(lm, run, task, items, opts, special, model, progress)
    return toks.merge(occl, on=["task", "item", "q"], how="left", validate="one_to_one")


def evaluate_faithfulness(lm, dictionary, hook: str, tasks: list[Task], opts: FaithfulnessOptions, *,
                          run: str | Path | None = None, dict_name: str = "", model_name: str = "",
                          progress: bool = False) -> pd.DataFrame:
    """Rows per (task, item, q) of every side; the token sides are cached in `run` when one is given."""
    from tqdm import tqdm

    from backend.interventions.inputs import check_dictionary, special_ids

    hp = check_dictionary(dictionary, lm.model, hook)
    encoded = encode_tasks(lm, tasks, opts.prompt_format)
    special = special_ids(lm.tokenizer)
    kind = str(dictionary.cfg.get("kind") or dictionary.cfg.get("architecture") or "")
    frames = []
    n = sum(len(v) for v in encoded.values())
    with tqdm(total=3 * n, desc="faithfulness", unit="item-side", disable=not progress) as bar:
        for task, items in encoded.items():
            toks = model_rows(lm, run, task, items, opts, special, model_name or lm.name, bar.update)
            feats = feature_rows(lm, dictionary, hp, task, items, opts, special, bar.update)
            frames.append(feats.merge(toks, on=["task", "item", "q"], how="left", validate="one_to_one")
                          .assign(dictionary=dict_name, kind=kind))
    return pd.concat(frames, ignore_index=True)


def format_summary(summary: pd.DataFrame) -> str:
    """The table the CLI prints: AOPC comprehensiveness and sufficiency [95%], accuracy clean -> top 5% removed."""
    w = max([32, *(len(str(t)) + 2 for t in summary["task"])])  # arithmetic.1_digit_multiplication is 33 long
    lines = [f"{'task':<{w}}{'method':<17}{'n':>4}{'comprehensiveness [95%]':>27}{'sufficiency [95%]':>27}"
             f"{'acc clean -> top 5% removed (drop, points)':>46}"]
    for _, r in summary.iterrows():
        acc = (f"{r['acc_clean']:.3f} -> {r['acc_top5']:.3f} ({r['drop_top5']:+.1f})"
               if "acc_top5" in r and pd.notna(r.get("acc_top5")) else "")
        lines.append(f"{r['task']:<{w}}{r['method']:<17}{int(r['n_items']):>4}"
                     f"{r['aopc_comp']:>9.3f} [{r['aopc_comp_low']:.3f}, {r['aopc_comp_high']:.3f}]"
                     f"{r['aopc_suff']:>9.3f} [{r['aopc_suff_low']:.3f}, {r['aopc_suff_high']:.3f}]{acc:>46}")
    return "\n".join(lines)


def run_faithfulness(run: str | Path, dict_name: str, opts: FaithfulnessOptions | None = None,
                     device: str = "auto") -> pd.DataFrame:
    """The CLI: check the inputs, measure, write <run>/faithfulness/<dict>/, print the summary."""
    from backend.faithfulness.plots import write_chart
    from backend.tasks.evaluate import load_for_eval

    opts = opts or FaithfulnessOptions()
    if run is None:
        raise UserError("faithfulness needs --run (the run whose model and dictionaries are measured)")
    tasks = select_tasks(opts)  # an unknown task fails before the model loads
    lm, dictionary, hook = load_for_eval(None, run, dict_name, device)
    from backend.common.layout import load_run

    if dictionary is None:
        return run_model_side(lm, run, tasks, opts, load_run(run)["model"])

    t0 = time.perf_counter()
    items = evaluate_faithfulness(lm, dictionary.to(lm.device).eval(), hook, tasks, opts, run=run, dict_name=dict_name,
                                  model_name=load_run(run)["model"], progress=True)
    seconds = time.perf_counter() - t0
    config = {t.name: {**asdict(opts), "kind": items["kind"].iloc[0], "hook": hook, "model": lm.name,
                       "n_items": len(t.items), "seconds": round(seconds, 1)} for t in tasks}
    folder = store.write_results(run, dict_name, items, config, opts.resamples)
    summary = store.summarize(items, opts.resamples)
    chart = write_chart(run)
    print(format_summary(summary))
    print(f"{len(items['item'].unique())} items per task, {seconds:.0f} s; per-item results: {folder}/; chart: {chart}")
    return summary


def run_model_side(lm, run: str | Path, tasks: list[Task], opts: FaithfulnessOptions, model: str) -> pd.DataFrame:
    """`faithfulness` without --dict: the token sides (IG with random tokens, occlusion) into the run's caches,
    reusing what is cached; print their summary and, for every dictionary measured on these items, its features
    against occlusion and IG tokens item by item (store.paired). No dictionary's files are written."""
    from tqdm import tqdm

    from backend.faithfulness.plots import write_chart
    from backend.interventions.inputs import special_ids

    encoded = encode_tasks(lm, tasks, opts.prompt_format)
    special = special_ids(lm.tokenizer)
    t0 = time.perf_counter()
    with tqdm(total=2 * sum(len(v) for v in encoded.values()), desc="token sides", unit="item-side") as bar:
        rows = pd.concat([model_rows(lm, run, task, items, opts, special, model, bar.update)
                          for task, items in encoded.items()], ignore_index=True)
    seconds = time.perf_counter() - t0
    summary = store.summarize(rows, opts.resamples, methods=store.TOKEN_METHODS)
    print(format_summary(summary))
    occl = rows.groupby(["task", "item"])["occlusion_seconds"].first()
    print(f"{len(occl)} items, {seconds:.0f} s (cached sides are read, not recomputed); occlusion {occl.mean():.1f} s "
          f"per item when it was computed")
    print(format_paired(paired_with_dictionaries(run, rows, opts.resamples)))
    chart = write_chart(run)
    print(f"token sides: {store.faith_dir(run)}/{store.TOKENS_DIR}/, {store.OCCLUSION_DIR}/; chart: {chart}")
    return summary


def paired_with_dictionaries(run: str | Path, rows: pd.DataFrame, n_resamples: int) -> list[dict]:
    """store.paired of every measured dictionary's features against occlusion and IG tokens, on the items of `rows`
    (a dictionary measured on other items is left out)."""
    out = []
    keys = set(zip(rows["task"], rows["item"]))
    for d in store.measured_dictionaries(run):
        items = store.read_items(run, d)
        items = items[[k in keys for k in zip(items["task"], items["item"])]]
        if set(zip(items["task"], items["item"])) != keys or not store.has_method(items, "occlusion"):
            continue
        for tokens in ("occlusion", "ig"):
            out.append({"dictionary": d, **store.paired(items, tokens, "features", n_resamples)})
    return out


def format_paired(pairs: list[dict]) -> str:
    """Features minus tokens per item: AOPC comprehensiveness, sufficiency, still correct at the top 5% removed."""
    if not pairs:
        return "no dictionary measured on these items yet: `python -m backend faithfulness --run R --dict D ...`"
    lines = ["features minus tokens, per item (mean [paired bootstrap 95%], p: Wilcoxon signed-rank for the AOPCs, "
             "McNemar exact for still correct):"]
    for p in pairs:
        cells = [f"{name} {p[f'{c}_diff']:+.3f} [{p[f'{c}_diff_low']:+.3f}, {p[f'{c}_diff_high']:+.3f}] "
                 f"p={p[f'{c}_p']:.3g}" for name, c in (("comp", "comp"), ("suff", "suff"),
                                                               ("correct@5%", "correct_top5"))]
        lines.append(f"  {p['dictionary']:<16} vs {p['a']:<10} n={p['n_items']:<4}" + "; ".join(cells))
    return "\n".join(lines)
