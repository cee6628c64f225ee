"""Record a BIG-bench programmatic task's multiple-choice queries as a JSON task file.

Run in a child process by bigbench_source.py, with the extracted sdist on PYTHONPATH:

    python -m backend.tasks.bigbench_record <task> <out.json>

A programmatic task (`bigbench/benchmark_tasks/<task>/task.py`) has no data file: it draws its
questions from a seeded generator inside `evaluate_model(model)` and asks the model
`cond_log_prob(inputs, targets)`. We run it against a model that records every query, work out each
query's answer with a small checker of our own (below), then run the task again against an oracle
that answers with the checker and require BIG-bench's own score to be 1.0 on every subtask, so a
wrong checker cannot go unnoticed. The items are exactly the queries BIG-bench poses (seed 42).
"""

from __future__ import annotations

import importlib
import json
import re
import sys


def _boolean_expressions(text: str, targets: list[str]) -> str:
    """'... not ( True ) and False is ' -> 'False': the last expression, evaluated (constants, and/or/not, parentheses)."""
    expr = text.removesuffix(" is ").split(" . ")[-1]
    if not set(expr.split()) <= {"True", "False", "and", "or", "not", "(", ")"}:
        raise ValueError(f"unexpected boolean expression {expr!r}")
    return str(bool(eval(expr, {"__builtins__": {}}, {})))  # noqa: S307 - only the tokens checked above


def _web_of_lies(text: str, targets: list[str]) -> str:
    """The last person tells the truth iff an even number of statements say 'lies'."""
    question = text.rsplit("Question: ", 1)[-1]
    return "Yes" if len(re.findall(r"\blies\.", question)) % 2 == 0 else "No"


def _dynamic_counting(text: str, targets: list[str]) -> str:
    """The closing bracket of the one pair left open (the input is a shuffle of balanced sequences minus its last symbol)."""
    opens = {")": "(", "]": "[", ">": "<", "}": "{"}
    left = [c for c in targets if text.split().count(opens[c]) - text.split().count(c) > 0]
    if len(left) != 1:
        raise ValueError(f"no unique open bracket in {text!r}")
    return left[0]


CHECKERS = {"boolean_expressions": _boolean_expressions, "web_of_lies": _web_of_lies, "dynamic_counting": _dynamic_counting}
DESCRIPTIONS = {
    "boolean_expressions": "evaluate a random Boolean expression (3-shot, lengths 1-8)",
    "web_of_lies": "a chain of 'X says Y lies' statements: does the last person tell the truth? (1, 2, 4, 8 sentences)",
    "dynamic_counting": "predict the last closing bracket of a shuffle of 4 balanced bracket languages",
}


class RecordingModel:
    """Answers every query with the first target and remembers (input, targets)."""

    def __init__(self):
        self.queries: list[tuple[str, list[str]]] = []

    def cond_log_prob(self, inputs, targets, absolute_normalization=False):
        single = isinstance(inputs, str)
        ins, tgts = ([inputs], [targets]) if single else (inputs, targets)
        self.queries += [(i, list(t)) for i, t in zip(ins, tgts)]
        out = [[0.0] + [-1.0] * (len(t) - 1) for t in tgts]
        return out[0] if single else out


class OracleModel(RecordingModel):
    """Gives the checker's answer the highest log-probability."""

    def __init__(self, checker):
        super().__init__()
        self.checker = checker

    def cond_log_prob(self, inputs, targets, absolute_normalization=False):
        single = isinstance(inputs, str)
        ins, tgts = ([inputs], [targets]) if single else (inputs, targets)
        out = [[0.0 if t == self.checker(i, ts) else -10.0 for t in ts] for i, ts in zip(ins, tgts)]
        return out[0] if single else out


def _task_class(name: str):
    api = importlib.import_module("bigbench.api.task")
    module = importlib.import_module(f"bigbench.benchmark_tasks.{name}.task")
    classes = [c for c in vars(module).values()
               if isinstance(c, type) and issubclass(c, api.Task) and c is not api.Task and c.__module__ == module.__name__]
    if len(classes) != 1:
        raise RuntimeError(f"{name}: expected one Task class, found {len(classes)}")
    return classes[0]


def record(name: str) -> dict:
    """The BIG-bench JSON task of programmatic task `name`, checked by an oracle run."""
    cls, checker = _task_class(name), CHECKERS[name]
    recorder = RecordingModel()
    cls().evaluate_model(recorder)
    for result in cls().evaluate_model(OracleModel(checker)):
        score = result.score_dict[result.preferred_score]
        if score != result.high_score:
            raise RuntimeError(f"{name}: the answer checker scores {score} on '{result.subtask_description}', not {result.high_score}")
    wrapped = all(re.fullmatch(r"Question: .*\nAnswer: ", q, re.S) for q, _ in recorder.queries)
    examples = []
    for text, targets in recorder.queries:
        answer = checker(text, targets)
        if wrapped:  # web_of_lies: keep the question bare, the task's wrap becomes the input/output prefixes
            text = text.removeprefix("Question: ").removesuffix("\nAnswer: ")
        examples.append({"input": text, "target_scores": {t: float(t == answer) for t in targets}})
    return {
        "name": name, "description": DESCRIPTIONS[name],
        "source": f"bigbench==0.0.1 benchmark_tasks/{name}/task.py (programmatic, default seed 42), queries recorded",
        "task_prefix": "", "example_input_prefix": "Question: " if wrapped else "",
        "example_output_prefix": "\nAnswer: " if wrapped else "", "append_choices_to_input": False,
        "examples": examples,
    }


def main(argv: list[str]) -> int:
    name, out = argv
    with open(out, "w", encoding="utf-8") as f:
        json.dump(record(name), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
