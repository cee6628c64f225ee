"""Task items as the diagnosis sees them: the rendered prompt, the question's span in it, and the scoring.

The prompt is exactly what `backend.tasks` scores (BIG-bench framing, choices listed, the trailing space
moved onto the choices), so a flagged token's position is the same position in the scorer's row, and an
ablation at that position changes what the scorer reads. The region that may be flagged is the item's
`input` (the question), not the framing ("\\nQ: ", the listed choices, "\\nA:") that every item shares.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backend.tasks import prompts, scoring
from backend.tasks.schema import Item, Task

FORMAT = "bigbench"  # the suite's default, chosen on held-out items (backend/tasks/prompts.py)


@dataclass
class PromptItem:
    task: Task
    item: Item
    prompt: str  # rendered, as scored
    continuations: list[str]
    region: tuple[int, int]  # [start, end) of item.input in prompt

    @property
    def key(self) -> tuple[str, int]:
        return self.task.name, self.item.id


def family(task_name: str) -> str:
    """The task family a task is reported in: BIG-bench arithmetic subtasks together, others by name."""
    return "arithmetic" if task_name.startswith("arithmetic.") else task_name


def with_input(item: Item, text: str) -> Item:
    return Item(item.id, text, item.choices, item.scores)


def prompt_item(task: Task, item: Item, fmt: str = FORMAT) -> PromptItem:
    """The rendered prompt of an item and where its question is in it."""
    prompt, conts = prompts.render(task, item, fmt)
    start = prompt.find(item.input)
    if start < 0:  # a format that rewrites the input (none of ours): the whole prompt is the region
        return PromptItem(task, item, prompt, conts, (0, len(prompt)))
    return PromptItem(task, item, prompt, conts, (start, start + len(item.input)))


def encode(tokenizer, p: PromptItem, vocab_size: int, max_len: int) -> scoring.EncodedItem:
    return scoring.encode_item(tokenizer, p.prompt, p.continuations, where=f"task {p.task.name} item {p.item.id}",
                               vocab_size=vocab_size, max_len=max_len)


def choice_probs(logprob: np.ndarray) -> np.ndarray:
    """Probability of each choice among the choices: softmax of the summed log-probabilities."""
    z = np.asarray(logprob, np.float64) - np.max(logprob)
    e = np.exp(z)
    return e / e.sum()
