"""BIG-bench's JSON task schema, read into multiple-choice items.

A task file (BIG-bench `benchmark_tasks/<task>/task.json`, or a subtask's) holds

    {"name": ..., "description": ..., "examples": [{"input": "What is 2 plus 3?",
                                                    "target_scores": {"5": 1, "6": 0, "banana": 0}}, ...],
     "task_prefix": "", "example_input_prefix": "\\nQ: ", "example_output_prefix": "\\nA: ",
     "choice_prefix": "\\n  choice: ", "append_choices_to_input": true}

Only examples with `target_scores` can be scored as multiple choice; a generative-only task (only
`target`) is refused. As in BIG-bench (`bigbench/api/json_task.py`), the correct choices are those
with the highest score, an example whose scores are all equal has no correct choice (an error), and
duplicate examples are dropped. Chance is the mean over items of (#correct choices / #choices),
BIG-bench's `low_score` for 0/1 scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from backend.common.errors import UserError

# BIG-bench's defaults (json_task.py) for the fields a task file may leave out
DEFAULT_FORMAT = {
    "task_prefix": "",
    "example_input_prefix": "\nQ: ",
    "example_output_prefix": "\nA: ",
    "choice_prefix": "\n  choice: ",
    "append_choices_to_input": True,
}


@dataclass(frozen=True)
class Item:
    """One multiple-choice question."""

    id: int  # index of the example in the task file (after duplicates are dropped)
    input: str  # the question text, without any prompt framing
    choices: tuple[str, ...]  # in the file's order
    scores: tuple[float, ...]  # target score of each choice (1 = right, 0 = wrong in most tasks)

    @property
    def correct(self) -> tuple[int, ...]:
        """Indices of the choices with the highest score (usually one)."""
        top = max(self.scores)
        return tuple(i for i, s in enumerate(self.scores) if s == top)

    @property
    def target(self) -> int:
        """The first correct choice (what BIG-bench calls `target` when a file gives none)."""
        return self.correct[0]


@dataclass
class Task:
    """A named list of items and the BIG-bench formatting fields that frame them (see prompts.py)."""

    name: str
    items: list[Item]
    description: str = ""
    source: str = ""  # where the items came from (file path, package and seed)
    fmt: dict = field(default_factory=lambda: dict(DEFAULT_FORMAT))

    @property
    def chance(self) -> float:
        """Expected accuracy of a uniform random guess."""
        if not self.items:
            return float("nan")
        return sum(len(it.correct) / len(it.choices) for it in self.items) / len(self.items)


def parse_task(data, name: str | None = None, source: str = "") -> Task:
    """A Task from the parsed JSON of a BIG-bench task file; any schema problem is a one-line UserError."""
    where = source or name or "task"
    if not isinstance(data, dict):
        raise UserError(f"{where}: a BIG-bench task file is a JSON object, not {type(data).__name__}")
    examples = data.get("examples")
    if not isinstance(examples, list) or not examples:
        raise UserError(f"{where}: no 'examples' list (BIG-bench task schema: examples with input and target_scores)")
    if not any(isinstance(ex, dict) and "target_scores" in ex for ex in examples):
        raise UserError(f"{where}: no example has 'target_scores': a generative task, not multiple choice")
    fmt = dict(DEFAULT_FORMAT)
    for key, default in DEFAULT_FORMAT.items():
        if key in data:
            if not isinstance(data[key], type(default)):
                raise UserError(f"{where}: {key!r} must be a {type(default).__name__}")
            fmt[key] = data[key]
    items, seen = [], set()
    for i, ex in enumerate(examples):
        item = _parse_example(ex, i, where)
        key = (item.input, item.choices, item.scores)
        if key not in seen:  # BIG-bench drops duplicate examples too
            seen.add(key)
            items.append(Item(len(items), item.input, item.choices, item.scores))
    task_name = name or data.get("name")
    if not isinstance(task_name, str) or not task_name:
        raise UserError(f"{where}: the task has no 'name'")
    return Task(task_name, items, str(data.get("description", "")), source, fmt)


def _parse_example(ex, i: int, where: str) -> Item:
    if not isinstance(ex, dict):
        raise UserError(f"{where}: example {i} is not a JSON object")
    text, ts = ex.get("input"), ex.get("target_scores")
    if not isinstance(text, str):
        raise UserError(f"{where}: example {i} has no string 'input'")
    if not isinstance(ts, dict) or len(ts) < 2:
        raise UserError(f"{where}: example {i} needs 'target_scores' with at least two choices")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ts.values()):
        raise UserError(f"{where}: example {i} has a non-numeric target score")
    if any(not c.strip() for c in ts):
        raise UserError(f"{where}: example {i} has an empty choice")
    if max(ts.values()) == min(ts.values()):
        raise UserError(f"{where}: example {i} has no correct choice (all target scores equal)")
    return Item(i, text, tuple(ts), tuple(float(v) for v in ts.values()))


def load_task_file(path: str | Path, name: str | None = None) -> Task:
    """Read a BIG-bench task.json (the real repository's files work as they are)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"task file not found: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{p} is not valid JSON: {str(e).splitlines()[0]}") from None
    default_name = p.parent.name if p.name == "task.json" else p.stem
    return parse_task(data, name or (data.get("name") if isinstance(data, dict) else None) or default_name, source=str(p))


def task_to_json(task: Task) -> dict:
    """The BIG-bench JSON of a Task (what `parse_task` reads back)."""
    return {
        "name": task.name, "description": task.description, "source": task.source, **task.fmt,
        "examples": [{"input": it.input, "target_scores": dict(zip(it.choices, it.scores))} for it in task.items],
    }
