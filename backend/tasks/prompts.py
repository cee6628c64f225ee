"""How an item becomes a prompt and one continuation per choice.

Formats (the choice is scored as the continuation; see scoring.py):

    bigbench  BIG-bench's own JSON framing: task_prefix + input_prefix + input
              [+ choice_prefix + choice ... when append_choices_to_input] + output_prefix
              (defaults "\\nQ: ", "\\nA: ", "\\n  choice: "; a task file may override them, and the
              generated programmatic tasks set them so the prompt is exactly BIG-bench's query)
    qa        "Question: {input}\\nAnswer:" - no choices listed
    chat      the tokenizer's chat template, the input as the user turn, the choice as the
              start of the assistant turn (instruct models); falls back to an error without one

Whitespace goes with the continuation, as in lm-evaluation-harness: a prompt's trailing spaces are
moved to the front of each choice ("A: " + "12" is scored as "A:" + " 12"), since BPE tokenizers
attach a leading space to the following word; after a newline the choice follows directly.
`DEFAULT_FORMAT` was chosen on held-out items (bench/bench_task_formats.py; README).
"""

from __future__ import annotations

import numpy as np

from backend.common.errors import UserError
from backend.tasks.schema import Item, Task

FORMATS = ("bigbench", "qa", "chat")
DEFAULT_FORMAT = "bigbench"
"""Chosen on held-out (dev) items of 16 tasks with SmolLM2-135M-Instruct: mean accuracy 0.379 against qa 0.292 and
chat 0.245 (chance 0.214). Listing the choices lets a small model copy one; without the list, summed log-probability
favours the shortest number, so qa and chat fall below chance on 2- and 3-digit arithmetic (README: task suite)."""

BIGBENCH_SEED = 42  # json_task.py shuffles the listed choices with np.random.RandomState(42) per example


def bigbench_prompt(task: Task, item: Item) -> str:
    f = task.fmt
    text = item.input
    if f["append_choices_to_input"]:
        order = np.random.RandomState(seed=BIGBENCH_SEED).permutation(sorted(item.choices))
        text = text + f["choice_prefix"] + f["choice_prefix"].join(str(c) for c in order)
    return f["task_prefix"] + f["example_input_prefix"] + text + f["example_output_prefix"]


def qa_prompt(task: Task, item: Item) -> str:
    return f"{task.fmt['task_prefix']}Question: {item.input.strip()}\nAnswer:"


def chat_prompt(task: Task, item: Item, tokenizer) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("prompt format 'chat' needs a tokenizer with a chat template (an instruct model)")
    user = (task.fmt["task_prefix"] + item.input).strip()
    return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)


def render(task: Task, item: Item, fmt: str, tokenizer=None) -> tuple[str, list[str]]:
    """(prompt, continuations): the text before the answer and each choice as it is scored after it."""
    if fmt == "bigbench":
        prompt = bigbench_prompt(task, item)
    elif fmt == "qa":
        prompt = qa_prompt(task, item)
    elif fmt == "chat":
        prompt = chat_prompt(task, item, tokenizer)
    else:
        raise UserError(f"unknown prompt format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return split_whitespace(prompt, item.choices)


def split_whitespace(prompt: str, choices: tuple[str, ...] | list[str]) -> tuple[str, list[str]]:
    """Move the prompt's trailing spaces onto the choices (a space before each, unless after a newline)."""
    if prompt.endswith("\n") or not prompt:
        return prompt, [c.lstrip(" ") for c in choices]
    return prompt.rstrip(" "), [" " + c.lstrip(" ") for c in choices]
