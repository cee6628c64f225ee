"""Task-suite items for anchored training's task term (backend/training/anchored.py, `TaskItems`).

The term must never see an item that an evaluation scores: of each task of the default suite, the
items used are those after the first `EVAL_RESERVED` of the evaluation pool (`suite.split_items`: the dev
slice and the first 100 evaluation items, what the README's `--n 100` table and the evaluation suite read,
are left out). Tasks with nothing left (the 100-item 1- and 2-digit arithmetic subtasks) give none.
Prompts are rendered in the suite's default format, as `tasks eval` scores them.
"""

from __future__ import annotations

import numpy as np

from backend.tasks import prompts, scoring
from backend.tasks.suite import DEFAULT_SUITE, DEV_ITEMS, SPLIT_SEED, load_task
from backend.training.anchored import TaskItems

EVAL_RESERVED = 100  # evaluation items per task that training never touches (README task table: --n 100)


def training_item_indices(n_items: int) -> np.ndarray:
    """Indices of a task's items that no evaluation reads: the evaluation pool after its first EVAL_RESERVED."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n_items)
    dev = min(DEV_ITEMS, n_items // 4)
    return np.sort(order[:n_items - dev][EVAL_RESERVED:])


def task_items(tokenizer, tasks: list[str] | None = None, per_task: int = 200, max_len: int = 256) -> TaskItems:
    """Up to `per_task` training items of each task (default: the default suite), tokenised for the task term."""
    out = TaskItems([], [], [], description=f"default-suite items after the first {EVAL_RESERVED} evaluation items "
                                            f"of each task, {prompts.DEFAULT_FORMAT} format, up to {per_task} per task")
    for name in tasks or list(DEFAULT_SUITE):
        task = load_task(name)
        idx = training_item_indices(len(task.items))[:per_task]
        for i in idx:
            it = task.items[int(i)]
            prompt, conts = prompts.render(task, it, prompts.DEFAULT_FORMAT, tokenizer)
            enc = scoring.encode_item(tokenizer, prompt, conts, where=f"task {name} item {it.id}",
                                      vocab_size=len(tokenizer), max_len=max_len)
            out.prompts.append(enc.prompt)
            out.choices.append(enc.choices)
            out.correct.append(int(it.target))
        if len(idx):
            out.tasks[name] = int(len(idx))
    return out
