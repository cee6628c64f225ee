"""Task names, the default suite and which items of a task are evaluated.

Names: `arithmetic.<subtask>` (BIG-bench arithmetic, 19 subtasks), `boolean_expressions`,
`web_of_lies`, `dynamic_counting` (BIG-bench programmatic, recorded), `math_qa`, `math_symbols`
(the default corpus's problems), `math_operators` (project-made symbol arithmetic, math_tasks.py).
A task's items are shuffled once with a fixed seed; the first `n` are the evaluation items and the
last `DEV_ITEMS` the held-out slice on which the prompt format was chosen (bench/bench_task_formats.py),
so the choice never saw evaluated items.
"""

from __future__ import annotations

import numpy as np

from backend.common.errors import UserError
from backend.tasks.bigbench_source import KNOWN_TASKS, bigbench_tasks
from backend.tasks.math_tasks import make_math_task
from backend.tasks.schema import Task, load_task_file

MATH_TASKS = ("math_qa", "math_symbols", "math_operators")
SPLIT_SEED = 1234
DEV_ITEMS = 40

DEFAULT_ITEMS = 50
DEFAULT_SUITE: dict[str, int] = {name: DEFAULT_ITEMS for name in (
    "arithmetic.1_digit_subtraction", "arithmetic.1_digit_multiplication", "arithmetic.1_digit_division",
    "arithmetic.2_digit_division", "arithmetic.3_digit_addition", "arithmetic.3_digit_multiplication",
    "arithmetic.3_digit_division", "arithmetic.4_digit_addition", "arithmetic.4_digit_multiplication",
    "arithmetic.5_digit_addition", "arithmetic.5_digit_multiplication", "dynamic_counting", "math_qa",
)}
"""Task -> evaluated items: the 13 tasks whose bootstrap 95% interval lies above chance on their held-out (dev)
items with SmolLM2-135M-Instruct in the bigbench format (bench/bench_task_formats.py; README: task suite). 50 items
each (1_digit_division has 18 left after its dev slice), 618 in all: at the measured 0.24 CPU-seconds per item and
condition (~360 tokens per CPU-second), clean + spliced + control cost ~7.5 CPU-minutes and clean alone ~2.5, minutes
on 2 cores. A task's interval is then about ±0.13 at accuracy 0.3; `--n 100` halves the variance (README: n = 100)."""


def task_names(fetch: bool = True) -> list[str]:
    """Every task `load_task` knows (the BIG-bench ones once generated, or generated now if `fetch`)."""
    return list(bigbench_tasks(fetch=fetch)) + list(MATH_TASKS)


def load_task(name: str) -> Task:
    """A task by name (BIG-bench tasks are generated on first use), or a UserError naming the known ones."""
    if name in MATH_TASKS:
        return make_math_task(name)
    if name not in KNOWN_TASKS:
        raise UserError(f"unknown task {name!r}; known: {', '.join(sorted(KNOWN_TASKS) + list(MATH_TASKS))} "
                        "(or --task-file path/to/task.json)")
    known = bigbench_tasks()
    if name not in known:
        raise UserError(f"task {name!r} is not among the generated BIG-bench tasks; "
                        "regenerate them with `python -m backend tasks fetch --force`")
    task = load_task_file(known[name], name=name)
    task.source = f"bigbench==0.0.1, generated: {known[name].parent.relative_to(known[name].parents[2])}"
    return task


def split_items(task: Task, n: int | None = None, split: str = "eval") -> Task:
    """The task restricted to its first n shuffled items ("eval"), its held-out slice ("dev"), or the first n
    shuffled items of all ("all": a user's own task file, which has no format choice to keep apart from)."""
    order = np.random.default_rng(SPLIT_SEED).permutation(len(task.items))
    dev = min(DEV_ITEMS, len(task.items) // 4)
    if split == "dev":
        chosen = order[len(order) - dev:]
    elif split == "all":
        chosen = order if n is None else order[:n]
    elif split == "eval":
        pool = order[:len(order) - dev]
        chosen = pool if n is None else pool[:n]
    else:
        raise ValueError(split)
    return Task(task.name, [task.items[i] for i in sorted(chosen)], task.description, task.source, task.fmt)
