"""Evaluate tasks clean and with a dictionary spliced in; per-item results as DataFrames and Parquet.

Conditions (the splice as backend/evaluation/metrics.py does it: every position but 0, BOS):

    clean          the model as it is
    spliced        x' = decode(encode(x))                  no error term: what the dictionary keeps
    spliced_error  x' = decode(f) + (x - decode(f))        the error term kept: equals clean up to
                                                           float rounding, the control of the splice

"Performance retained" = accuracy spliced / accuracy clean (as AnchorX reports it), with a paired
bootstrap interval and McNemar's test on the same items (bootstrap.py). Per item we keep the
summed log-probability of every choice, its token count and the predictions (summed and
length-normalised), so any other statistic can be computed from the Parquet files later.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from backend.common.atomic import atomic_path, write_json
from backend.common.errors import UserError
from backend.common.layout import DATA_DIR, check_dict_name, dict_dir, load_run
from backend.model.hooks import HookPoint, parse_hook
from backend.tasks import bootstrap, prompts, scoring
from backend.tasks.schema import Task

CONDITIONS = ("clean", "spliced", "spliced_error")
RESULTS_DIR = DATA_DIR / "tasks" / "results"  # clean-only results when no run is given
TASKS_SUBDIR = "tasks"  # <run>/tasks/<dictionary or model>/<task>.parquet


@dataclass
class TaskEval:
    items: pd.DataFrame  # one row per (task, item): see docs/CONTRACTS.md "task results"
    summary: pd.DataFrame  # one row per (task, condition): accuracy and its interval, chance, retained
    config: dict = field(default_factory=dict)  # model, dictionary, hook, prompt format, seeds, timings


def splice_fns(dictionary) -> dict[str, callable]:
    """{condition: act_fn} for the spliced conditions; act [B, T, d] -> [B, T, d], position 0 untouched."""
    def no_error(act):
        out = act.clone()
        flat = act[:, 1:].reshape(-1, act.shape[-1]).float()  # [B*(T-1), d]
        out[:, 1:] = dictionary(flat).to(act.dtype).reshape(act.shape[0], -1, act.shape[-1])
        return out

    def with_error(act):
        out = act.clone()
        x = act[:, 1:].reshape(-1, act.shape[-1]).float()
        x_hat = dictionary(x)
        out[:, 1:] = (x_hat + (x - x_hat)).to(act.dtype).reshape(act.shape[0], -1, act.shape[-1])
        return out

    return {"spliced": no_error, "spliced_error": with_error}


def _encode_task(task: Task, tokenizer, fmt: str, vocab_size: int, max_len: int) -> list[scoring.EncodedItem]:
    out = []
    for it in task.items:
        prompt, conts = prompts.render(task, it, fmt, tokenizer)
        out.append(scoring.encode_item(tokenizer, prompt, conts, where=f"task {task.name} item {it.id}",
                                       vocab_size=vocab_size, max_len=max_len))
    return out


def _item_rows(task: Task, fmt: str, scores: dict[str, list[scoring.ChoiceScores]]) -> pd.DataFrame:
    rows = []
    for k, it in enumerate(task.items):
        row = {"task": task.name, "item": it.id, "input": it.input, "prompt_format": fmt, "choices": list(it.choices),
               "target": it.target, "correct_choices": list(it.correct), "n_choices": len(it.choices),
               "chance": len(it.correct) / len(it.choices), "n_tokens": scores["clean"][k].n_tokens.tolist()}
        for cond, sc in scores.items():
            s = sc[k]
            row[f"logprob_{cond}"] = s.logprob.tolist()
            row[f"pred_{cond}"] = s.pred
            row[f"pred_norm_{cond}"] = s.pred_norm
            row[f"correct_{cond}"] = s.pred in it.correct
            row[f"correct_norm_{cond}"] = s.pred_norm in it.correct
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(items: pd.DataFrame, n_resamples: int = bootstrap.N_RESAMPLES, seed: int = bootstrap.SEED) -> pd.DataFrame:
    """One row per (task, condition) plus the macro average over tasks ("all tasks")."""
    conds = [c for c in CONDITIONS if f"correct_{c}" in items]
    rows = []
    for task, g in items.groupby("task", sort=False):
        clean = g["correct_clean"].to_numpy()
        for cond in conds:
            c = g[f"correct_{cond}"].to_numpy()
            acc, lo, hi = bootstrap.bootstrap_ci(c, n_resamples, seed)
            accn, lon, hin = bootstrap.bootstrap_ci(g[f"correct_norm_{cond}"].to_numpy(), n_resamples, seed)
            row = {"task": task, "condition": cond, "n_items": len(g), "chance": float(g["chance"].mean()),
                   "accuracy": acc, "acc_low": lo, "acc_high": hi, "acc_norm": accn, "acc_norm_low": lon, "acc_norm_high": hin}
            if cond != "clean":
                p = bootstrap.paired_bootstrap(clean, c, n_resamples, seed)
                row.update(diff=p["diff"], diff_low=p["diff_low"], diff_high=p["diff_high"], retained=p["ratio"],
                           retained_low=p["ratio_low"], retained_high=p["ratio_high"], mcnemar_p=p["mcnemar_p"])
            rows.append(row)
    tasks = list(dict.fromkeys(items["task"]))
    if len(tasks) > 1:
        groups = {t: g for t, g in items.groupby("task", sort=False)}
        for cond in conds:
            m = bootstrap.macro_bootstrap([(groups[t]["correct_clean"].to_numpy(), groups[t][f"correct_{cond}"].to_numpy())
                                           for t in tasks], n_resamples, seed)
            row = {"task": "all tasks", "condition": cond, "n_items": len(items),
                   "chance": float(np.mean([groups[t]["chance"].mean() for t in tasks])),
                   "accuracy": m["b"], "acc_low": m["b_low"], "acc_high": m["b_high"]}
            if cond != "clean":
                row.update(retained=m["ratio"], retained_low=m["ratio_low"], retained_high=m["ratio_high"])
            rows.append(row)
    return pd.DataFrame(rows)


def evaluate_tasks(lm, tasks: list[Task], *, dictionary=None, hook: str | HookPoint | None = None,
                   prompt_format: str = prompts.DEFAULT_FORMAT, control: bool = True, batch_tokens: int = 2048,
                   n_resamples: int = bootstrap.N_RESAMPLES, seed: int = bootstrap.SEED, progress: bool = False) -> TaskEval:
    """Score every item of `tasks` with the LoadedModel `lm`, clean and (with `dictionary` at `hook`) spliced
    without and, if `control`, with the error term. Every task is encoded (and checked) before any forward pass."""
    from tqdm import tqdm

    model, tok = lm.model, lm.tokenizer
    vocab, max_len = model.get_output_embeddings().weight.shape[0], scoring.context_limit(model)
    hp = parse_hook(hook) if isinstance(hook, str) else hook
    if dictionary is not None and hp is None:
        raise UserError("a spliced evaluation needs the dictionary's hook point")
    conds = {"clean": None}
    if dictionary is not None:
        dictionary = dictionary.to(lm.device).eval()
        fns = splice_fns(dictionary)
        conds["spliced"] = fns["spliced"]
        if control:
            conds["spliced_error"] = fns["spliced_error"]
    encoded = {t.name: _encode_task(t, tok, prompt_format, vocab, max_len) for t in tasks}
    n_rows = sum(len(e.choices) for enc in encoded.values() for e in enc) * len(conds)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    t0, frames, seconds = time.perf_counter(), [], {}
    with tqdm(total=n_rows, desc="tasks", unit="choice", disable=not progress) as bar:
        for task in tasks:
            t1 = time.perf_counter()
            scores = {cond: scoring.score_items(model, encoded[task.name], hook=hp, act_fn=fn, batch_tokens=batch_tokens,
                                                pad_id=pad, progress=bar.update) for cond, fn in conds.items()}
            frames.append(_item_rows(task, prompt_format, scores))
            seconds[task.name] = round(time.perf_counter() - t1, 1)
    items = pd.concat(frames, ignore_index=True)
    config = {"model": lm.name, "model_source": lm.source, "prompt_format": prompt_format, "conditions": list(conds),
              "hook": hp.name if hp else None, "n_resamples": n_resamples, "bootstrap_seed": seed,
              "seconds": round(time.perf_counter() - t0, 1), "seconds_per_task": seconds, "torch_threads": torch.get_num_threads()}
    return TaskEval(items, summarize(items, n_resamples, seed), config)


def results_dir(model: str, run: str | Path | None = None, dict_name: str | None = None) -> Path:
    """<run>/tasks/<dictionary or model>/ when a run is given, else data/tasks/results/<model>/."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name if Path(model).suffix == ".gguf" or "/" in model else model).strip("._")
    if run is None:
        return RESULTS_DIR / (slug or "model")
    return Path(run) / TASKS_SUBDIR / (check_dict_name(dict_name) if dict_name else slug or "model")


def write_results(result: TaskEval, folder: Path) -> list[Path]:
    """One Parquet per task (atomically) + summary.json (config and summary rows) in `folder`."""
    paths = []
    for task, g in result.items.groupby("task", sort=False):
        dest = folder / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', task)}.parquet"
        with atomic_path(dest) as tmp:
            g.reset_index(drop=True).to_parquet(tmp, index=False)
        paths.append(dest)
    summary = result.summary.astype(object).where(result.summary.notna(), None).to_dict("records")
    write_json(folder / "summary.json", {"config": result.config, "summary": summary})
    return paths


def read_results(folder: str | Path) -> TaskEval:
    """The results `write_results` left in `folder` (per-task Parquet + summary.json), for the app and later issues."""
    import json

    folder = Path(folder)
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise UserError(f"no task results in {folder}; run `python -m backend tasks eval` first")
    items = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    meta = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else {}
    return TaskEval(items, pd.DataFrame(meta.get("summary") or []), meta.get("config", {}))


def load_for_eval(model: str | None, run: str | Path | None, dict_name: str | None, device: str = "auto"):
    """(LoadedModel, dictionary or None, hook or None) for `tasks eval`, refusing a dictionary of another model or hook."""
    from backend.dictionaries import load_dictionary
    from backend.dictionaries.saelens_io import hook_name, model_name
    from backend.model.loading import DEFAULT_MODEL, load_model, resolve_model

    if dict_name and run is None:
        raise UserError("--dict needs --run (the run that holds the dictionary)")
    meta = load_run(run) if run is not None else None
    if meta and model and resolve_model(model) != resolve_model(meta["model"]):
        raise UserError(f"--model {model} is not the run's model {meta['model']}: its dictionaries read another model's activations")
    name = model or (meta["model"] if meta else DEFAULT_MODEL)
    dictionary, hook = None, None
    if dict_name:
        folder = dict_dir(run, check_dict_name(dict_name))
        if not (folder / "cfg.json").is_file():
            raise UserError(f"no dictionary {dict_name!r} in {run}")
        dictionary = load_dictionary(folder, device="cpu")
        hook = hook_name(dictionary.cfg) or meta["hook"]
        if hook != meta["hook"]:
            raise UserError(f"dictionary {dict_name!r} was trained at {hook}, the run caches {meta['hook']}")
        trained_on = model_name(dictionary.cfg)
        if trained_on and resolve_model(trained_on) != resolve_model(name):
            raise UserError(f"dictionary {dict_name!r} was trained on model {trained_on}, not {name}")
    lm = load_model(name, device=device)
    if dictionary is not None:
        d_model = lm.model.get_output_embeddings().weight.shape[1]
        if dictionary.d_in != d_model:
            raise UserError(f"dictionary {dict_name!r} has d_in {dictionary.d_in}, model {name} has d_model {d_model}")
    return lm, dictionary, hook


def format_summary(summary: pd.DataFrame) -> str:
    """The table `tasks eval` prints: accuracy [95% interval] per condition, chance, the clean length-normalised
    accuracy (clean/token; NaN for the "all tasks" row), retained."""
    conds = [c for c in CONDITIONS if c in set(summary["condition"])]
    head = (f"{'task':<34}{'n':>5}{'chance':>8}{'clean/token':>12}" + "".join(f"{c:>24}" for c in conds)
            + ("   retained [95%]" if "spliced" in conds else ""))
    lines = [head]
    for task, g in summary.groupby("task", sort=False):
        by = {r["condition"]: r for _, r in g.iterrows()}
        norm = by["clean"].get("acc_norm", float("nan"))
        line = f"{task:<34}{int(by['clean']['n_items']):>5}{by['clean']['chance']:>8.3f}{norm:>12.3f}"
        for c in conds:
            r = by[c]
            line += f"{r['accuracy']:>10.3f} [{r['acc_low']:.3f}, {r['acc_high']:.3f}]"
        if "spliced" in by:
            r = by["spliced"]
            line += f"   {r['retained']:.1%} [{r['retained_low']:.1%}, {r['retained_high']:.1%}]"
        lines.append(line)
    return "\n".join(lines)


def select_tasks(task: str = "default", task_files: list[str] | None = None, n: int | None = None) -> list[Task]:
    """The tasks `tasks eval` runs: --task-file files (all items, or n), else named tasks (their eval items)."""
    from backend.tasks.schema import load_task_file
    from backend.tasks.suite import DEFAULT_ITEMS, DEFAULT_SUITE, load_task, split_items

    if n is not None and n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    if task_files:
        return [split_items(load_task_file(f), n, split="all") for f in task_files]
    names = list(DEFAULT_SUITE) if task == "default" else [t.strip() for t in task.split(",") if t.strip()]
    if not names:
        raise UserError("--task is empty")
    return [split_items(load_task(name), n or DEFAULT_SUITE.get(name, DEFAULT_ITEMS)) for name in names]


@dataclass
class TaskEvalOptions:
    """What `python -m backend tasks eval` evaluates and how (beside --run/--dict/--device)."""

    model: str | None = None
    """Model (default: the run's, else smollm2-135m)."""
    task: str = "default"
    """Comma-separated task names, or default (the default suite: the tasks SmolLM2-135M is above chance on)."""
    task_files: list[str] = field(default_factory=list, metadata={"flag": "task-file"})
    """BIG-bench task.json files (comma-separated); they replace --task."""
    n: int | None = None
    """Items per task (default: the suite's count; all for --task-file)."""
    prompt_format: Literal["bigbench", "qa", "chat"] = field(default="bigbench", metadata={"flag": "format"})
    """bigbench (the choices listed in the prompt, as BIG-bench does: best on held-out items), qa or chat."""
    control: bool = True
    """Also run the spliced-with-error-term control (equals clean by construction: it checks the splice)."""
    batch_tokens: int = 2048
    """Padded tokens per forward pass: fills a CPU's caches without padding waste."""
    resamples: int = 2000
    """Bootstrap resamples (at least 1000, for stable 95% percentile intervals)."""


def run_task_eval(model: str | None = None, run: str | Path | None = None, dict_name: str | None = None,
                  task: str = "default", task_files: list[str] | None = None, n: int | None = None,
                  prompt_format: str | None = None, control: bool = True, batch_tokens: int = 2048,
                  resamples: int = bootstrap.N_RESAMPLES, device: str = "auto", out: Path | None = None) -> TaskEval:
    """`python -m backend tasks eval`: check the inputs, evaluate, print the table, write the Parquet files."""
    fmt = prompt_format or prompts.DEFAULT_FORMAT
    if fmt not in prompts.FORMATS:
        raise UserError(f"unknown prompt format {fmt!r}: expected one of {', '.join(prompts.FORMATS)}")
    if resamples < 1000:
        raise UserError(f"--resamples must be at least 1000, got {resamples}")
    if batch_tokens < 16:
        raise UserError(f"--batch-tokens must be at least 16, got {batch_tokens}")
    tasks = select_tasks(task, task_files, n)
    lm, dictionary, hook = load_for_eval(model, run, dict_name, device)
    result = evaluate_tasks(lm, tasks, dictionary=dictionary, hook=hook, prompt_format=fmt, control=control,
                            batch_tokens=batch_tokens, n_resamples=resamples, progress=True)
    result.config.update(run=str(run) if run else None, dictionary=dict_name)
    folder = out or results_dir(lm.name, run, dict_name)
    write_results(result, folder)
    print(format_summary(result.summary))
    print(f"prompt format {fmt}; {result.config['seconds']:.0f} s; per-item results: {folder}/")
    return result
